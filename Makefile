# Set-up and main commands on a fresh machine. `make test` and `make demo` create the virtual
# environment, install the pinned CPU build of torch (an unpinned torch would pull a multi-GB
# CUDA build), then the package with its extras.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PIN := torch==2.13.0

.PHONY: test test-slow demo docs docs-serve gallery install clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e ".[test,bench,experiments,docs]"
	touch $@

install: $(VENV)/.installed

test: $(VENV)/.installed
	$(PY) -m pytest -q

# the tests marked slow (long doc blocks, example scripts over 20 s, large problems); .ci/run
# runs them after `make test`
test-slow: $(VENV)/.installed
	$(PY) -m pytest -q -m "slow and not gpu"

# the documentation site (mkdocs.yml): pages in docs/, API reference from the docstrings,
# gallery from examples/*.py; --strict fails on any broken link, reference or docstring
docs: $(VENV)/.installed
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

docs-serve: $(VENV)/.installed
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve

# run every example script, redrawing the gallery's figures into docs/img/examples/
gallery: $(VENV)/.installed
	mkdir -p docs/img/examples
	for script in examples/*.py; do \
		name=$$(basename $$script .py); \
		PYTHONPATH=. MPLBACKEND=Agg $(PY) $$script --out docs/img/examples/$$name.png || exit 1; \
	done

# the main job: the OT example problems (a few seconds), then InfoNCE vs GCA-UOT pretraining on
# mnist1d with extreme augmentations, seeds 0 and 1 in two parallel processes (one thread each),
# joined into one seed-paired comparison (about 2 minutes of CPU time per core); see
# docs/experiments.md ("make demo") for what it shows and the 10-seed result behind it
DEMO_TRAIN := --compare infonce,gca-uot --dataset mnist1d --augmentation extreme --no-progress
demo: $(VENV)/.installed
	$(VENV)/bin/otalign demo
	rm -rf results/demo && mkdir -p results/demo
	$(VENV)/bin/otalign train $(DEMO_TRAIN) --seeds 0 --out results/demo/seed0 > results/demo/seed0.log 2>&1 & p0=$$!; \
	$(VENV)/bin/otalign train $(DEMO_TRAIN) --seeds 1 --out results/demo/seed1 > results/demo/seed1.log 2>&1 & p1=$$!; \
	wait $$p0 && wait $$p1 || { tail -n 20 results/demo/*.log; exit 1; }
	$(PY) -c "from otalign.experiments import Comparison as C; \
	c = C.combine(C.load('results/demo/seed0'), C.load('results/demo/seed1')); c.save('results/demo'); \
	print(c.table()); print(); print(c.differences_table())"

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache site
