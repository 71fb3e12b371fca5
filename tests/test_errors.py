"""Bad input raises ValueError naming the field, the value and what was expected."""

import math

import numpy as np
import pytest
import torch

import otalign as ota
from otalign import constraints as C

M = torch.rand(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def solve(cost=M, cons=None, **kw):
    kw.setdefault("epsilon", 0.1)
    return ota.solve(cost, cons, **kw)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(epsilon=-1.0), "epsilon"),
        (dict(epsilon=math.nan), "epsilon"),
        (dict(tol=-1e-3), "tol"),
        (dict(tol="1e-3"), "tol"),
        (dict(max_iter=-1), "max_iter"),
        (dict(max_iter=2.5), "max_iter"),
        (dict(check_every=0), "check_every"),
        (dict(entropy="renyi"), "entropy='renyi'"),
        (dict(grad="magic"), "grad='magic'"),
    ],
)
def test_bad_scalar_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        solve(**kwargs)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_costs_are_rejected(bad):
    C2 = M.clone()
    C2[1, 2] = bad
    with pytest.raises(ValueError, match="cost has 1 non-finite entries.*Forbid"):
        solve(C2)


@pytest.mark.parametrize(
    "cost, match",
    [
        (np.ones((3, 3)), "torch.Tensor"),
        (torch.ones(3, dtype=torch.long), "dtype"),
        (torch.ones(3), "shape"),
        (torch.ones(2, 2, 2, 2), "shape"),
        (torch.ones(0, 3), "shape"),
    ],
)
def test_bad_cost(cost, match):
    with pytest.raises(ValueError, match=match):
        solve(cost)


def test_shape_mismatches_name_the_field():
    with pytest.raises(ValueError, match=r"Marginal\(axis=0\).weights has shape \(5,\); expected \(4,\)"):
        solve(cons=C.balanced(torch.ones(5) / 5))
    with pytest.raises(ValueError, match=r"Marginal\(axis=1\).weights has shape \(4,\); expected \(3,\)"):
        solve(cons=C.balanced(None, torch.ones(4) / 4))
    with pytest.raises(ValueError, match="Forbid.mask has shape"):
        solve(cons=C.balanced() + [C.Forbid(mask=torch.zeros(3, 3, dtype=torch.bool))])
    with pytest.raises(ValueError, match="BlockMass.col_groups has shape"):
        solve(cons=[C.BlockMass(row_groups=[0, 0, 1, 1], col_groups=[0, 1], mass=[[0.1, 0.1], [0.1, 0.1]])])


def test_batch_mismatches():
    with pytest.raises(ValueError, match="batch sizes disagree"):
        solve(torch.rand(2, 4, 3), C.balanced(torch.ones(3, 4) / 4))
    with pytest.raises(ValueError, match="batch sizes disagree"):
        solve(M, C.balanced(torch.ones(2, 4) / 4, torch.ones(3, 3) / 3))
    with pytest.raises(ValueError, match="constraints\\[1\\] \\(TotalMass\\): batch 3"):
        solve(torch.rand(2, 4, 3), [C.Marginal(axis=0, weights=torch.ones(2, 4) / 4, relation="<="), C.TotalMass(mass=torch.tensor([0.5, 0.5, 0.5]))])


def test_negative_or_non_finite_weights():
    with pytest.raises(ValueError, match="negative"):
        solve(cons=C.balanced(torch.tensor([0.5, 0.5, 0.2, -0.2])))
    with pytest.raises(ValueError, match="non-finite"):
        solve(cons=C.balanced(torch.tensor([0.5, 0.5, math.inf, 0.0])))


def test_rho_and_mass_validation():
    with pytest.raises(ValueError, match="rho"):
        solve(cons=C.unbalanced(0.0))
    with pytest.raises(ValueError, match="mass"):
        solve(cons=C.partial(-0.1))
    with pytest.raises(ValueError, match="min\\(sum a, sum b\\)"):
        solve(cons=[C.Marginal(axis=0, relation="<="), C.Marginal(axis=1, weights=[0.1, 0.1, 0.1], relation="<="), C.TotalMass(mass=0.5)])


def test_unequal_hard_masses():
    with pytest.raises(ValueError, match="hard marginals need equal masses"):
        solve(cons=C.balanced(None, torch.tensor([0.5, 0.5, 0.5])))


def test_total_mass_inconsistent_with_hard_marginals():
    with pytest.raises(ValueError, match="TotalMass.*expected equal masses"):
        solve(cons=C.balanced() + [C.TotalMass(mass=0.5)])


def test_block_masses_inconsistent_with_hard_marginals():
    gr, gc = [0, 0, 1, 1], [0, 1, 1]
    with pytest.raises(ValueError, match="BlockMass.*exactly"):
        solve(cons=C.balanced() + [C.BlockMass(row_groups=gr, col_groups=gc, mass=[[0.1, 0.1], [0.3, 0.5]])])
    with pytest.raises(ValueError, match="BlockMass.*at most"):
        solve(cons=C.balanced() + [C.BlockMass(row_groups=gr, col_groups=[0, 1, -1], mass=[[0.9, 0.0], [0.0, 0.1]])])
    with pytest.raises(ValueError, match="BlockMass.*at least"):
        solve(cons=C.balanced() + [C.BlockMass(row_groups=gr, col_groups=gc, mass=[[0.1, 0.1], [0.1, 0.1]], relation="<=")])


def test_mask_leaving_a_row_without_allowed_entry():
    mask = torch.zeros(4, 3, dtype=torch.bool)
    mask[2] = True
    with pytest.raises(ValueError, match="row 2 .*forbidden"):
        solve(cons=C.balanced() + [C.Forbid(mask=mask)])
    # a row of zero weight may be fully forbidden
    a = torch.tensor([0.4, 0.3, 0.0, 0.3], dtype=torch.float64)
    res = solve(cons=C.balanced(a) + [C.Forbid(mask=mask)], tol=1e-9)
    assert torch.all(res.plan[2] == 0) and bool(res.converged)
    # a column whose only allowed rows have zero weight
    mask = torch.ones(4, 3, dtype=torch.bool)
    mask[:, :2] = False
    mask[2, 2] = False
    with pytest.raises(ValueError, match="column 2"):
        solve(cons=C.balanced(a) + [C.Forbid(mask=mask)])


def test_unknown_constraint_type():
    class Lonely(C.Constraint):
        pass

    with pytest.raises(ValueError, match="no solver update is registered for constraint type 'Lonely'"):
        solve(cons=[Lonely()])
    with pytest.raises(ValueError, match="constraints"):
        solve(cons="balanced")


def test_init_shape_is_checked():
    with pytest.raises(ValueError, match="init for constraints\\[0\\] has shape"):
        solve(init=(torch.zeros(7), torch.zeros(3)))
    res = solve(cons=C.unbalanced(1.0))
    with pytest.raises(ValueError, match="OTResult with 2 constraints; expected 3"):
        solve(cons=C.partial(0.5), init=res)
