import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import settings

# The default run (CI) draws the same examples every time, so a red run is reproducible and a green
# one is not luck; HYPOTHESIS_PROFILE=explore draws fresh examples to hunt for new failures.
settings.register_profile("default", derandomize=True, print_blob=True)
settings.register_profile("explore", derandomize=False, max_examples=200, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

sys.path.insert(0, str(Path(__file__).parent))  # tests/reference.py


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def random_problem(rng, n=6, m=5, d=2, scale=1.0):
    """Squared-distance cost between two random clouds (max cost 1) and random weights."""
    x, y = rng.normal(size=(n, d)), rng.normal(size=(m, d)) + 0.5
    C = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    C = scale * C / C.max()
    a = rng.uniform(0.2, 1.0, n)
    b = rng.uniform(0.2, 1.0, m)
    return C, a / a.sum(), b / b.sum()


def t64(x):
    return torch.as_tensor(np.asarray(x), dtype=torch.float64)
