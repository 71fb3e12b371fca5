"""The declarative constraint layer: validation, composition, immutability, JSON round trip."""

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from otalign import constraints as C


def test_marginal_defaults_and_hardness():
    m = C.Marginal(axis=0)
    assert m.weights is None and m.relation == "==" and m.penalty is None and m.is_hard
    assert not C.Marginal(axis=1, penalty=C.KL(rho=0.5)).is_hard
    assert C.Marginal(axis=1, penalty=C.KL(rho=math.inf)).is_hard


def test_sequences_become_float64_tensors():
    m = C.Marginal(axis=0, weights=[0.25, 0.75])
    assert isinstance(m.weights, torch.Tensor) and m.weights.dtype == torch.float64
    assert torch.equal(m.weights, torch.tensor([0.25, 0.75], dtype=torch.float64))


def test_tensor_weights_keep_their_graph():
    w = torch.tensor([0.5, 0.5], requires_grad=True)
    m = C.Marginal(axis=0, weights=w)
    assert m.weights is w


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(axis=0, weights=[0.5, -0.1]), "weights"),
        (dict(axis=0, weights=[0.5, float("nan")]), "weights"),
        (dict(axis=0, weights=[[[1.0]]]), "weights"),
        (dict(axis=2), "axis"),
        (dict(axis=0, relation=">="), "relation"),
    ],
)
def test_marginal_rejects_bad_fields(kwargs, field):
    with pytest.raises(ValueError) as info:
        C.Marginal(**kwargs)
    assert field in str(info.value)


@pytest.mark.parametrize("rho", [0.0, -1.0, float("nan")])
@pytest.mark.parametrize("cls", [C.KL, C.TV])
def test_penalties_reject_nonpositive_rho(cls, rho):
    with pytest.raises(ValueError, match="rho"):
        cls(rho=rho)


@pytest.mark.parametrize("mass", [0.0, -0.5, float("inf")])
def test_total_mass_rejects_bad_mass(mass):
    with pytest.raises(ValueError, match="mass"):
        C.TotalMass(mass=mass)


def test_forbid_mask_validation():
    assert C.Forbid(mask="diagonal").mask == "diagonal"
    with pytest.raises(ValueError, match="mask"):
        C.Forbid(mask="upper")
    with pytest.raises(ValueError, match="mask"):
        C.Forbid(mask=torch.zeros(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="boolean"):
        C.Forbid(mask=torch.zeros(3, 3))


def test_block_mass_validation():
    ok = C.BlockMass(row_groups=[0, 1, -1], col_groups=[1, 0], mass=[[0.2, 0.3], [0.1, 0.4]])
    assert ok.row_groups.dtype == torch.int64
    with pytest.raises(ValueError, match="row_groups"):
        C.BlockMass(row_groups=[0, 2], col_groups=[0, 1], mass=[[0.2, 0.3], [0.1, 0.4]])
    with pytest.raises(ValueError, match="mass"):
        C.BlockMass(row_groups=[0, 1], col_groups=[0, 1], mass=[[0.2, -0.3], [0.1, 0.4]])
    with pytest.raises(ValueError, match="integer"):
        C.BlockMass(row_groups=[0.5, 1], col_groups=[0, 1], mass=[[0.2, 0.3], [0.1, 0.4]])


def test_constraints_are_immutable():
    m = C.Marginal(axis=0)
    with pytest.raises(ValidationError):
        m.axis = 1


def test_factories():
    bal = C.balanced([0.5, 0.5], None)
    assert [c.axis for c in bal] == [0, 1] and all(c.is_hard for c in bal)
    unb = C.unbalanced(0.3)
    assert all(isinstance(c.penalty, C.KL) and c.penalty.rho == 0.3 for c in unb)
    semi = C.unbalanced((math.inf, 0.2))
    assert semi[0].penalty is None and semi[1].penalty.rho == 0.2
    part = C.partial(0.5, [0.5, 0.5], [0.3, 0.3, 0.4])
    assert [type(c).__name__ for c in part] == ["Marginal", "Marginal", "TotalMass"]
    assert part[0].relation == part[1].relation == "<="
    with pytest.raises(ValueError, match="rho"):
        C.unbalanced((0.1, 0.2, 0.3))


def test_partial_mass_above_the_smaller_marginal_is_rejected():
    with pytest.raises(ValueError, match="min\\(sum a, sum b\\)"):
        C.partial(0.9, [0.4, 0.4], [0.5, 0.5])
    with pytest.raises(ValueError, match="min\\(sum a, sum b\\)"):
        C.partial(1.5)


def test_composition_with_plus():
    bal = C.balanced()
    forbid = C.Forbid(mask="diagonal")
    s1 = bal + [forbid]
    s2 = [forbid] + bal
    s3 = forbid + C.TotalMass(mass=1.0)
    assert isinstance(s1, C.ConstraintSet) and len(s1) == 3 and s1[2] is forbid
    assert isinstance(s2, C.ConstraintSet) and s2[0] is forbid and len(s2) == 3
    assert len(s3) == 2 and isinstance(s1[:2], C.ConstraintSet)
    with pytest.raises(ValueError, match="constraints\\[0\\]"):
        bal + [42]


def test_equality_compares_tensor_values():
    assert C.Marginal(axis=0, weights=[0.5, 0.5]) == C.Marginal(axis=0, weights=torch.tensor([0.5, 0.5]).double())
    assert C.Marginal(axis=0, weights=[0.5, 0.5]) != C.Marginal(axis=0, weights=[0.4, 0.6])
    assert C.balanced() == C.balanced() and C.balanced() != C.unbalanced(1.0)


def test_json_round_trip_of_every_type():
    cs = (
        C.unbalanced((0.3, math.inf), a=[0.25, 0.75], b=torch.tensor([[0.5, 0.5], [0.2, 0.8]]))
        + [C.Forbid(mask="diagonal"), C.Forbid(mask=torch.tensor([[True, False], [False, False]]))]
        + [C.BlockMass(row_groups=[0, -1], col_groups=[0, 1], mass=[[0.1, 0.2]], relation="<=")]
        + [C.Marginal(axis=0, relation="<=", penalty=C.TV(rho=2.0)), C.TotalMass(mass=torch.tensor([0.5, 0.7]))]
        + [C.Marginal(axis=1, penalty=C.KL(rho=math.inf))]
    )
    text = C.dumps(cs)
    json.loads(text)  # strict JSON: inf is written as the string "Infinity"
    back = C.parse(text)
    assert back == cs
    assert C.dumps(back) == text
    assert C.parse({"constraints": json.loads(text)}) == cs
    assert C.parse(json.loads(text)[0]) == cs[:1]


def test_parse_errors_name_the_entry():
    with pytest.raises(ValueError, match="type='Nope'"):
        C.parse('[{"type": "Nope"}]')
    with pytest.raises(ValueError, match="constraints\\[0\\]"):
        C.parse("[3]")
    with pytest.raises(ValueError, match="list"):
        C.parse('"x"')
    with pytest.raises(ValueError, match="rho"):
        C.parse('[{"type": "Marginal", "axis": 0, "penalty": {"type": "KL", "rho": -1}}]')


weights = st.lists(st.floats(0.0, 10.0, allow_nan=False), min_size=1, max_size=6)


@settings(max_examples=60, deadline=None)
@given(
    w=weights,
    rho=st.one_of(st.floats(1e-6, 1e6), st.just(math.inf)),
    relation=st.sampled_from(["==", "<="]),
    pen=st.sampled_from([None, "KL", "TV"]),
    axis=st.sampled_from([0, 1]),
)
def test_json_round_trip_property(w, rho, relation, pen, axis):
    penalty = None if pen is None else getattr(C, pen)(rho=rho)
    cs = C.ConstraintSet([C.Marginal(axis=axis, weights=w, relation=relation, penalty=penalty)])
    back = C.parse(C.dumps(cs))
    assert back == cs
    np.testing.assert_array_equal(back[0].weights.numpy(), np.asarray(w, dtype=np.float64))
