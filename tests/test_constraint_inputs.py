"""Hostile input to the constraint layer (issue 10, items 4, 16, 17).

* numbers: strings, bytes and booleans are never numbers; NumPy scalars and 0-dim tensors are;
* ``C.parse`` raises only ``ValueError``, with a bounded message, whatever it is given;
* every constraint round-trips through JSON: ``C.parse(C.dumps(cs)) == cs``.
"""

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from otalign import constraints as C
from otalign import contrastive as cl
from otalign.constraints.serialization import MAX_ERROR_LENGTH

# ------------------------------------------------------------------ item 4: rho and other numbers


@pytest.mark.parametrize("rho", ["12", b"12", "0.5", True, None, ("1", "2"), (True, 1.0), [0.1, 0.2, 0.3], [],
                                 {"rho": 1.0}, {0.5}, [[0.5]], 10**400, torch.tensor([[0.5]]), np.array([True])])
def test_unbalanced_rejects_what_is_not_a_number_or_a_pair(rho):
    with pytest.raises(ValueError, match=r"rho"):
        C.unbalanced(rho)


def test_unbalanced_string_is_not_split_into_characters():
    """The reported fault: ``C.unbalanced("12")`` gave rho = (1.0, 2.0)."""
    with pytest.raises(ValueError, match=r"rho='12' \(type str\); expected a real number"):
        C.unbalanced("12")


@pytest.mark.parametrize(
    "rho, expected",
    [
        (0.5, (0.5, 0.5)),
        (2, (2.0, 2.0)),
        (np.float32(0.5), (0.5, 0.5)),
        (np.float64(0.25), (0.25, 0.25)),
        (np.int64(3), (3.0, 3.0)),
        ([0.5], (0.5, 0.5)),
        ((0.5,), (0.5, 0.5)),
        (torch.tensor(0.5), (0.5, 0.5)),
        (torch.tensor([0.5]), (0.5, 0.5)),
        (np.array(0.5), (0.5, 0.5)),
        ((0.5, math.inf), (0.5, math.inf)),
        ([np.float32(0.5), torch.tensor(2.0)], (0.5, 2.0)),
        (np.array([0.5, 0.25]), (0.5, 0.25)),
        (torch.tensor([0.5, 0.25], dtype=torch.float64), (0.5, 0.25)),
    ],
)
def test_unbalanced_accepts_numbers_one_element_containers_and_pairs(rho, expected):
    cs = C.unbalanced(rho)
    got = tuple(math.inf if c.penalty is None else c.penalty.rho for c in cs)
    assert got == expected
    assert all(c.penalty is None or type(c.penalty.rho) is float for c in cs)


@pytest.mark.parametrize("rho", [math.nan, 0.0, -1.0, -math.inf, (0.5, math.nan), (0.5, 0.0)])
def test_unbalanced_rejects_nan_and_non_positive_values(rho):
    with pytest.raises(ValueError, match=r"rho(\[\d\])?=.*expected a number > 0"):
        C.unbalanced(rho)


def test_gca_uot_with_a_string_rho_fails_naming_rho():
    """``GCAUOT(rho="25")`` used to solve with rho = (2, 5); it must raise, naming rho (at
    construction: the loss validates its hyper-parameters when it is built)."""
    z = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="rho='25'"):
        cl.GCAUOT(epsilon=0.5, n_iter=2, rho="25")
    assert torch.isfinite(cl.GCAUOT(epsilon=0.5, n_iter=2, rho=np.float32(25.0))(z, z.flip(0)))


BAD_FIELDS = [
    (C.KL, dict(rho="2"), "rho"),
    (C.KL, dict(rho=b"2"), "rho"),
    (C.KL, dict(rho=True), "rho"),
    (C.KL, dict(rho=math.nan), "rho"),
    (C.KL, dict(rho=10**400), "rho"),
    (C.KL, dict(rho=torch.tensor([0.5, 0.5])), "rho"),
    (C.TV, dict(rho="Infinity"), "rho"),  # strings are numbers only in JSON
    (C.TV, dict(rho=np.bool_(True)), "rho"),
    (C.TotalMass, dict(mass="0.5"), "mass"),
    (C.TotalMass, dict(mass=True), "mass"),
    (C.TotalMass, dict(mass=math.nan), "mass"),
    (C.TotalMass, dict(mass=np.float64(math.inf)), "mass"),
    (C.TotalMass, dict(mass=torch.tensor(math.nan)), "mass"),
    (C.TotalMass, dict(mass=torch.tensor([True])), "mass"),
    (C.TotalMass, dict(mass=["0.5"]), "mass"),
    (C.TotalMass, dict(mass=10**400), "mass"),
    (C.Marginal, dict(axis=True), "axis"),
    (C.Marginal, dict(axis="0"), "axis"),
    (C.Marginal, dict(axis=0.0), "axis"),
    (C.Marginal, dict(axis=np.bool_(False)), "axis"),
    (C.Marginal, dict(axis=0, weights="12"), "weights"),
    (C.Marginal, dict(axis=0, weights=["1", "2"]), "weights"),
    (C.Marginal, dict(axis=0, weights=[True, False]), "weights"),
    (C.Marginal, dict(axis=0, weights=np.array([True, False])), "weights"),
    (C.Marginal, dict(axis=0, weights=torch.tensor([True, False])), "weights"),
    (C.Marginal, dict(axis=0, weights=[0.5, None]), "weights"),
    (C.Marginal, dict(axis=0, weights=[[0.5], [0.5, 0.5]]), "weights"),
    (C.Marginal, dict(axis=0, weights=[10**400]), "weights"),
    (C.Marginal, dict(axis=0, weights=[[[[0.5]]]]), "weights"),
    (C.Forbid, dict(mask=b"diagonal"), "mask"),
    (C.Forbid, dict(mask=[[1, 0], [0, 1]]), "mask"),
    (C.Forbid, dict(mask=np.eye(2)), "mask"),
    (C.BlockMass, dict(row_groups=["0"], col_groups=[0], mass=[[1.0]]), "row_groups"),
    (C.BlockMass, dict(row_groups="0", col_groups=[0], mass=[[1.0]]), "row_groups"),
    (C.BlockMass, dict(row_groups=[True], col_groups=[0], mass=[[1.0]]), "row_groups"),
    (C.BlockMass, dict(row_groups=[2**70], col_groups=[0], mass=[[1.0]]), "row_groups"),
    (C.BlockMass, dict(row_groups=[0], col_groups=[0.0], mass=[[1.0]]), "col_groups"),
    (C.BlockMass, dict(row_groups=[0], col_groups=[0], mass="1"), "mass"),
    (C.BlockMass, dict(row_groups=[0], col_groups=[0], mass=[[True]]), "mass"),
    (C.BlockMass, dict(row_groups=[0], col_groups=[0], mass=[[math.nan]]), "mass"),
]


@pytest.mark.parametrize("cls, kwargs, field", BAD_FIELDS, ids=[f"{c.__name__}-{f}-{i}" for i, (c, _, f) in enumerate(BAD_FIELDS)])
def test_every_numeric_field_rejects_strings_bools_nan_and_junk(cls, kwargs, field):
    with pytest.raises(ValueError) as info:
        cls(**kwargs)
    assert field in str(info.value)


def test_numpy_scalars_and_0dim_tensors_are_numbers_in_every_scalar_field():
    assert C.KL(rho=np.float32(0.5)).rho == 0.5 and C.TV(rho=torch.tensor(2.0)).rho == 2.0
    assert C.KL(rho=np.int64(3)).rho == 3.0 and type(C.KL(rho=np.int64(3)).rho) is float
    assert C.TotalMass(mass=np.float32(0.5)).mass == 0.5
    assert C.TotalMass(mass=np.int64(1)) == C.TotalMass(mass=1.0)
    assert C.Marginal(axis=np.int64(1)).axis == 1 and C.Marginal(axis=torch.tensor(0)).axis == 0
    m = torch.tensor(0.5, requires_grad=True)
    assert C.TotalMass(mass=m).mass is m  # a tensor is kept, with its graph
    w = C.Marginal(axis=0, weights=[np.float32(0.5), torch.tensor(0.5)]).weights
    assert w.dtype == torch.float64 and w.tolist() == [0.5, 0.5]
    groups = C.BlockMass(row_groups=np.array([0, 1], dtype=np.uint8), col_groups=[np.int32(0)], mass=[[0.5], [0.5]])
    assert groups.row_groups.dtype == torch.int64 and groups.row_groups.tolist() == [0, 1]


# ------------------------------------------------------------------ item 16: C.parse never raises anything but a short ValueError


@pytest.mark.parametrize(
    "text",
    [
        '[{"type":["Marginal"]}]',
        '[{"type":{"a":1}}]',
        "[" * 20_000 + "]" * 20_000,
        '{"a":' * 20_000 + "1" + "}" * 20_000,
        '[{"type":"Marginal","axis":0,"weights":' + "[" * 900 + "]" * 900 + "}]",
        '[{"type":"BlockMass","row_groups":["a"],"col_groups":[0],"mass":[[1]]}]',
        '[{"type":"BlockMass","row_groups":[100000000000000000000000],"col_groups":[0],"mass":[[1]]}]',
        '[{"type":"BlockMass","row_groups":[1e400],"col_groups":[0],"mass":[[1]]}]',
        '[{"type":"Marginal","axis":0,"penalty":{"type":["KL"]}}]',
        '[{"type":"Marginal","axis":0,"penalty":{"type":"KL","rho":"12"}}]',
        '[{"type":"TotalMass","mass":"0.5"}]',
        '[{"type":"TotalMass","mass":' + "9" * 5000 + "}]",
        "[{",
        b"\xff\xfe\x00",
    ],
)
def test_parse_reproductions_raise_short_value_errors(text):
    with pytest.raises(ValueError) as info:
        C.parse(text)
    assert type(info.value) is ValueError and len(str(info.value)) <= MAX_ERROR_LENGTH


def test_parse_truncates_huge_echoed_values():
    """A 10 MB unknown type name gave a 10 MB message."""
    huge = "x" * 10_000_000
    for text in (json.dumps([{"type": huge}]), json.dumps([{"type": "Marginal", "axis": 0, "penalty": {"type": huge}}]),
                 json.dumps([{"type": "Forbid", "mask": huge}]), json.dumps([{"type": "Marginal", "axis": 0, "weights": [huge]}]),
                 json.dumps([{"type": "Marginal", "axis": 0, **{f"extra{i}": i for i in range(10_000)}}])):
        with pytest.raises(ValueError) as info:
            C.parse(text)
        assert len(str(info.value)) <= MAX_ERROR_LENGTH
    with pytest.raises(ValueError, match=r"type='xxx.*\.\.\..*expected one of: .*Marginal"):
        C.parse(json.dumps([{"type": huge}]))


def test_parse_names_the_entry_and_the_field():
    with pytest.raises(ValueError, match=r"constraints\[1\] \(BlockMass\): row_groups: .*'a'.*integers"):
        C.parse('[{"type":"Marginal","axis":0},{"type":"BlockMass","row_groups":["a"],"col_groups":[0],"mass":[[1]]}]')
    with pytest.raises(ValueError, match=r"constraints\[0\] has type=\['Marginal'\]; expected one of"):
        C.parse('[{"type":["Marginal"]}]')
    with pytest.raises(ValueError, match="nested too deeply"):
        C.parse("[" * 20_000 + "]" * 20_000)
    with pytest.raises(ValueError, match="not valid JSON"):
        C.parse("[{")


def test_parse_reads_the_special_floats_dumps_writes_and_no_other_strings():
    cs = C.parse('[{"type":"Marginal","axis":0,"penalty":{"type":"KL","rho":"Infinity"}}]')
    assert cs[0].penalty.rho == math.inf
    with pytest.raises(ValueError, match="rho=-inf"):
        C.parse('[{"type":"Marginal","axis":0,"penalty":{"type":"TV","rho":"-Infinity"}}]')
    with pytest.raises(ValueError, match="rho='inf'"):
        C.parse('[{"type":"Marginal","axis":0,"penalty":{"type":"TV","rho":"inf"}}]')


# JSON-ish values: what json.loads can return, nested a few levels
json_leaves = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=2**63 - 2, max_value=2**80),
                        st.floats(), st.text(max_size=12))
json_values = st.recursive(
    json_leaves,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=16,
)
FIELDS = sorted({f for cls in C.Constraint.registry.values() for f in cls.model_fields} | {"penalty", "rho", "type", "shape", "values"})
TYPE_NAMES = sorted(C.Constraint.registry) + ["KL", "TV", ""]
penalties = st.fixed_dictionaries({"type": st.one_of(st.sampled_from(["KL", "TV"]), json_values)}, optional={"rho": json_values})
constraint_like = st.fixed_dictionaries(
    {"type": st.one_of(st.sampled_from(TYPE_NAMES), json_values)},
    optional={f: st.one_of(json_values, penalties, st.lists(st.lists(st.one_of(st.integers(-2, 3), st.floats()), max_size=3), max_size=3))
              for f in FIELDS if f != "type"},
)
documents = st.one_of(json_values, st.lists(constraint_like, max_size=3), st.builds(lambda xs: {"constraints": xs}, st.lists(constraint_like, max_size=2)))


def _parse_outcome(source):
    try:
        return C.parse(source)
    except ValueError as exc:
        assert len(str(exc)) <= MAX_ERROR_LENGTH, str(exc)[:200]
        return exc


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=documents)
def test_parse_of_random_json_only_raises_short_value_errors(doc):
    """Property (item 16's class): whatever JSON-ish value ``C.parse`` gets, as text or as Python
    objects, it returns a ConstraintSet or raises ValueError with a message of bounded length."""
    text = json.dumps(doc)
    from_text = _parse_outcome(text)
    from_objects = _parse_outcome(doc)
    assert type(from_text) is type(from_objects) or isinstance(from_text, ValueError)
    if isinstance(from_text, C.ConstraintSet):
        assert C.parse(C.dumps(from_text)) == from_text


scalars = st.one_of(json_leaves, st.sampled_from([b"1", np.float32(0.5), np.bool_(True), np.int64(-1), 1j,
                                                  torch.tensor(0.5), torch.tensor([1.0, 2.0]), torch.tensor(True)]))
field_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3), max_leaves=8)


@settings(max_examples=150, deadline=None)
@given(cls=st.sampled_from([C.Marginal, C.TotalMass, C.Forbid, C.BlockMass, C.KL, C.TV]),
       values=st.dictionaries(st.sampled_from(FIELDS), field_values, max_size=4))
def test_constructors_only_raise_value_errors(cls, values):
    """Property (item 4's class): any field values given to a constraint's constructor either
    build it or raise ValueError (never TypeError, OverflowError or RuntimeError)."""
    try:
        c = cls(**values)
    except ValueError:
        return
    if isinstance(c, C.Constraint):
        assert C.parse(C.dumps(c)) == C.ConstraintSet([c])


# ------------------------------------------------------------------ item 17: every constraint round-trips


def round_trips(cs) -> bool:
    text = C.dumps(cs)
    json.loads(text, parse_constant=lambda name: pytest.fail(f"non-strict JSON constant {name}"))
    back = C.parse(text)
    return back == cs and C.dumps(back) == text


@pytest.mark.parametrize(
    "mass",
    [0.5, 2, np.float32(0.5), torch.tensor(0.5), torch.tensor(0.1), torch.tensor(0.1, dtype=torch.float64),
     torch.tensor([0.5, 0.7]), torch.tensor([0.3], dtype=torch.float64), [0.5], torch.zeros(0)],
)
def test_total_mass_round_trips(mass):
    """The reported fault: ``TotalMass(mass=tensor(0.5))`` came back unequal."""
    assert round_trips(C.ConstraintSet([C.TotalMass(mass=mass)]))


def test_empty_batches_round_trip():
    cs = C.ConstraintSet([
        C.Marginal(axis=0, weights=torch.zeros(0, 3)),
        C.Forbid(mask=torch.zeros(0, 2, 2, dtype=torch.bool)),
        C.BlockMass(row_groups=torch.zeros(0, 2, dtype=torch.long), col_groups=[0, 0], mass=torch.zeros(0, 1, 1)),
    ])
    assert round_trips(cs)
    assert C.parse(C.dumps(cs))[0].weights.shape == (0, 3)


def test_a_0dim_tensor_equals_its_number_but_not_a_batch_of_one():
    assert C.TotalMass(mass=torch.tensor(0.5)) == C.TotalMass(mass=0.5)
    assert C.TotalMass(mass=torch.tensor([0.5])) != C.TotalMass(mass=0.5)
    assert C.TotalMass(mass=torch.tensor(0.5)) != C.TotalMass(mass=0.25)


def _number(draw, value: float, kinds=("float", "np64", "np32", "t64", "t32")):
    """``value`` as one of the accepted number types (float32 ones only where it fits)."""
    kind = draw(st.sampled_from(kinds))
    if kind in ("np32", "t32") and not (1e-30 < abs(value) < 1e30 or value == math.inf):
        kind = "float"
    make = {"float": float, "np64": np.float64, "np32": np.float32,
            "t64": lambda v: torch.tensor(v, dtype=torch.float64), "t32": lambda v: torch.tensor(v, dtype=torch.float32)}
    return make[kind](value)


def _array(draw, shape, elements, kind=("list", "t64", "t32", "np")):
    values = np.asarray(draw(st.lists(elements, min_size=math.prod(shape), max_size=math.prod(shape))), dtype=np.float64).reshape(shape)
    how = draw(st.sampled_from(kind))
    if how == "list" and values.size:  # nested lists cannot express an empty batch (0, n)
        return values.tolist()
    if how == "np":
        return values
    return torch.tensor(values, dtype=torch.float64 if how == "t64" else torch.float32)


positive = st.floats(1e-300, 1e300)
weights_entries = st.floats(0.0, 1e6)


@st.composite
def constraints(draw):
    kind = draw(st.sampled_from(["Marginal", "TotalMass", "Forbid", "BlockMass"]))
    batch = draw(st.sampled_from([None, 0, 1, 2]))
    lead = () if batch is None else (batch,)
    n, m = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    if kind == "Marginal":
        weights = None if draw(st.booleans()) else _array(draw, (*lead, n), weights_entries)
        rho = draw(st.one_of(positive, st.just(math.inf), st.integers(1, 10**6)))
        penalty = draw(st.sampled_from([None, C.KL, C.TV]))
        penalty = None if penalty is None else penalty(rho=_number(draw, float(rho)) if draw(st.booleans()) else rho)
        return C.Marginal(axis=draw(st.sampled_from([0, 1, np.int64(1)])), weights=weights,
                          relation=draw(st.sampled_from(["==", "<="])), penalty=penalty)
    if kind == "TotalMass":
        if batch is None:
            return C.TotalMass(mass=_number(draw, draw(st.floats(1e-30, 1e30))) if draw(st.booleans()) else draw(st.integers(1, 10**9)))
        return C.TotalMass(mass=_array(draw, (batch,), st.floats(1e-30, 1e30), ("list", "t64", "t32")))
    if kind == "Forbid":
        if draw(st.booleans()):
            return C.Forbid(mask="diagonal")
        shape = (*lead, n, m)
        bits = draw(st.lists(st.booleans(), min_size=math.prod(shape), max_size=math.prod(shape)))
        mask = np.asarray(bits, dtype=bool).reshape(shape)
        how = draw(st.sampled_from(["tensor", "array", "list"]))
        return C.Forbid(mask=torch.from_numpy(mask) if how == "tensor" else mask.tolist() if how == "list" and mask.size else mask)
    gr, gc = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    rows = _array(draw, (*lead, n), st.integers(-1, gr - 1), ("list", "np"))
    cols = draw(st.lists(st.integers(-1, gc - 1), min_size=m, max_size=m))
    mass = _array(draw, (*lead, gr, gc), st.floats(0.0, 1e6))
    rows = np.asarray(rows, dtype=np.int64)
    return C.BlockMass(row_groups=rows if draw(st.booleans()) else rows.tolist(), col_groups=cols, mass=mass,
                       relation=draw(st.sampled_from(["==", "<="])))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cs=st.lists(constraints(), max_size=4))
def test_random_constraint_sets_round_trip(cs):
    """Property (item 17's class): any valid constraint set, built from any accepted input types
    (floats, NumPy scalars, 0-dim and (B,) tensors of float32/float64, lists, arrays, empty
    batches, inf), comes back equal from JSON, and its JSON is strict and stable."""
    cs = C.ConstraintSet(cs)
    assume(all(c is not None for c in cs))
    assert round_trips(cs)
