# Set-up and main commands on a fresh machine. `make test` and `make demo` create the virtual
# environment, install the pinned CPU build of torch (an unpinned torch would pull a multi-GB
# CUDA build), then the package with its extras.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PIN := torch==2.13.0

.PHONY: test demo install clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e ".[test,bench,experiments]"
	touch $@

install: $(VENV)/.installed

test: $(VENV)/.installed
	$(PY) -m pytest -q

# the main job: the OT example problems, then InfoNCE vs GCA-UOT pretraining on digits (~2 min)
demo: $(VENV)/.installed
	$(VENV)/bin/otalign demo
	$(VENV)/bin/otalign train --compare infonce,gca-uot --seeds 0,1,2 --out results/demo

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
