"""Every constraint family against an independent dual solver (tests/reference.py), float64."""


import numpy as np
import pytest

import otalign as ota
from conftest import random_problem, t64
from otalign import constraints as C
from reference import Con, dual_reference

EPS = 0.2


def _groups(a, b):
    gr = np.array([0, 0, 0, 1, 1, 1])
    gc = np.array([0, 1, 1, 0, 1])
    ga = np.array([a[gr == r].sum() for r in range(2)])
    gb = np.array([b[gc == c].sum() for c in range(2)])
    exact = np.array([[0.1, ga[0] - 0.1], [gb[0] - 0.1, ga[1] - gb[0] + 0.1]])
    return gr, gc, exact


def _cases(a, b):
    gr, gc, blocks = _groups(a, b)
    caps = blocks * np.array([[0.5, 3.0], [3.0, 3.0]])
    ungrouped_rows = gr.copy()
    ungrouped_rows[0] = -1
    return {
        "balanced": ([Con("row", a), Con("col", b)], C.balanced(a, b)),
        "kl": ([Con("row", a, penalty=("KL", 0.3)), Con("col", b, penalty=("KL", 0.7))], C.unbalanced((0.3, 0.7), a, b)),
        "tv": (
            [Con("row", a, penalty=("TV", 0.3)), Con("col", b, penalty=("TV", 0.2))],
            [C.Marginal(axis=0, weights=a, penalty=C.TV(rho=0.3)), C.Marginal(axis=1, weights=b, penalty=C.TV(rho=0.2))],
        ),
        "partial": ([Con("row", a, "<="), Con("col", b, "<="), Con("mass", 0.6)], C.partial(0.6, a, b)),
        "blocks": (
            [Con("row", a), Con("col", b), Con("block", blocks, row_groups=gr, col_groups=gc)],
            C.balanced(a, b) + [C.BlockMass(row_groups=gr, col_groups=gc, mass=blocks)],
        ),
        "block caps": (
            [Con("row", a), Con("col", b), Con("block", caps, "<=", row_groups=gr, col_groups=gc)],
            C.balanced(a, b) + [C.BlockMass(row_groups=gr, col_groups=gc, mass=caps, relation="<=")],
        ),
        "blocks, ungrouped row, relaxed": (
            [Con("row", a, penalty=("KL", 1.0)), Con("col", b, penalty=("KL", 1.0)),
             Con("block", blocks * 0.5, row_groups=ungrouped_rows, col_groups=gc)],
            C.unbalanced(1.0, a, b) + [C.BlockMass(row_groups=ungrouped_rows, col_groups=gc, mass=blocks * 0.5)],
        ),
        "KL cap": (
            [Con("row", a, "<=", penalty=("KL", 0.3)), Con("col", b, penalty=("KL", 0.5))],
            [C.Marginal(axis=0, weights=a, relation="<=", penalty=C.KL(rho=0.3)), C.Marginal(axis=1, weights=b, penalty=C.KL(rho=0.5))],
        ),
        "TV cap": (
            [Con("row", a, "<=", penalty=("TV", 0.1)), Con("col", b, penalty=("KL", 0.5))],
            [C.Marginal(axis=0, weights=a, relation="<=", penalty=C.TV(rho=0.1)), C.Marginal(axis=1, weights=b, penalty=C.KL(rho=0.5))],
        ),
        "TV rows, capped cols, mass": (
            [Con("row", a, penalty=("TV", 0.05)), Con("col", b, "<="), Con("mass", 0.5)],
            [C.Marginal(axis=0, weights=a, penalty=C.TV(rho=0.05)), C.Marginal(axis=1, weights=b, relation="<="), C.TotalMass(mass=0.5)],
        ),
    }


CASES = list(_cases(np.ones(6) / 6, np.ones(5) / 5))


@pytest.mark.parametrize("entropy", ["kl", "shannon"])
@pytest.mark.parametrize("name", CASES)
def test_plan_matches_dual_reference(name, entropy):
    M, a, b = random_problem(np.random.default_rng(11), 6, 5)
    ref_cons, cons = _cases(a, b)[name]
    ref = dual_reference(M, ref_cons, EPS, entropy=entropy, ref_a=a, ref_b=b)
    res = ota.solve(t64(M), cons, epsilon=EPS, entropy=entropy, tol=1e-13, max_iter=100_000)
    assert bool(res.converged)
    np.testing.assert_allclose(res.plan.numpy(), ref.plan, atol=1e-8, rtol=0)


def test_value_equals_dual_objective_at_optimum():
    """Strong duality: the primal value reported equals the dual objective at the duals."""
    M, a, b = random_problem(np.random.default_rng(2), 6, 5)
    for name, (_, cons) in _cases(a, b).items():
        res = ota.solve(t64(M), cons, epsilon=EPS, tol=1e-13, max_iter=100_000, entropy="kl")
        P = res.plan
        dual = -EPS * P.sum() + EPS * float(np.outer(a, b).sum())
        for proj, d in zip(res._projectors, res.duals):
            if d is not None:
                dual = dual + proj.dual_objective(d[None])[0]
        assert float(res.value) == pytest.approx(float(dual), abs=1e-9), name
