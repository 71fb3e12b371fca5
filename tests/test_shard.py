"""Row-sharded solves (``shard="rows"``) on 2 and 3 real gloo processes (CPU, float64, uneven
shards): outputs equal one process on the global problem to 1e-10 and gradients (implicit and
unroll) equal the slices of the single-process gradients to 1e-9; bad inputs raise ValueError on
every rank. One spawned group per world size runs every case (see tests/shard_worker.py)."""

import pytest
import torch
import torch.multiprocessing as mp

import shard_worker

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")

N, M = 7, 5
SPLITS = {2: [3, 4], 3: [2, 1, 4]}


def _data():
    g = torch.Generator().manual_seed(3)
    d = torch.float64
    a = torch.rand(N, dtype=d, generator=g) + 0.5
    b = torch.rand(M, dtype=d, generator=g) + 0.5
    a, b = a / a.sum(), b / b.sum()
    row_groups = torch.tensor([0, 1, 0, 1, 1, 0, 1])
    col_groups = torch.tensor([0, 0, 1, 1, 0])
    A = torch.stack([a[row_groups == k].sum() for k in range(2)])
    B = torch.stack([b[col_groups == k].sum() for k in range(2)])
    block = torch.outer(A, B) + 0.02 * torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=d)
    return {
        "cost": torch.rand(N, M, dtype=d, generator=g), "a": a, "b": b,
        "row_groups": row_groups, "col_groups": col_groups, "block_mass": block,
        "W": torch.randn(N, M, dtype=d, generator=g), "v": torch.randn(M, dtype=d, generator=g),
        "x": 0.3 * torch.randn(N, 3, dtype=d, generator=g), "y": 0.3 * torch.randn(M, 3, dtype=d, generator=g),
        "split": SPLITS,
        "za": torch.randn(8, 5, dtype=d, generator=g), "zb": torch.randn(8, 5, dtype=d, generator=g),
    }


def _reference(data, case, grad):
    rows = slice(0, N)
    cost = data["cost"].clone().requires_grad_(True)
    a = data["a"].clone().requires_grad_(True)
    b = data["b"].clone().requires_grad_(True)
    if case == "uniform":
        res, loss = shard_worker.solve_case(case, grad, cost, None, None, data, rows)
    else:
        res, loss = shard_worker.solve_case(case, grad, cost, a, b, data, rows)
    loss.backward()
    return res, loss, cost.grad, a.grad, b.grad


def _close(x, y, tol):
    torch.testing.assert_close(x, y, atol=tol, rtol=0)


@pytest.mark.parametrize("world", [2, 3])
def test_row_sharded_solves_equal_one_process(tmp_path, world):
    data = _data()
    torch.save(data, tmp_path / "data.pt")
    mp.spawn(shard_worker.run, args=(world, str(tmp_path)), nprocs=world, join=True)
    outs = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    starts = [sum(SPLITS[world][:r]) for r in range(world)]
    slices = [slice(s, s + k) for s, k in zip(starts, SPLITS[world])]

    for case in shard_worker.CASES:
        for grad in shard_worker.grads(world, case):
            res, loss, cost_grad, a_grad, b_grad = _reference(data, case, grad)
            assert bool(res.converged), (case, grad)
            b_total = torch.zeros_like(data["b"])
            for r, rows in enumerate(slices):
                o = outs[r][(case, grad)]
                _close(o["plan"], res.plan.detach()[rows], 1e-10)
                _close(o["f"], res.f.detach()[rows], 1e-10)
                _close(o["g"], res.g.detach(), 1e-10)
                _close(o["value"], res.value.detach(), 1e-10)
                _close(o["transport_cost"], res.transport_cost.detach(), 1e-10)
                assert int(o["n_iters"]) == int(res.n_iters) and bool(o["converged"])
                _close(o["cost_grad"], cost_grad[rows], 1e-9)
                if case != "uniform":
                    _close(o["a_grad"], a_grad[rows], 1e-9)
                    b_total += o["b_grad"]
            if case != "uniform":  # replicated column-side inputs: the ranks' shares sum to the gradient
                _close(b_total, b_grad, 1e-9)

    # point cloud, online backend, x sharded: plan rows, g, value and the gradient of x
    import otalign as ota
    from otalign import constraints as C

    x = data["x"].clone().requires_grad_(True)
    ref = ota.solve(ota.geometry.PointCloud(x, data["y"], backend="online"), C.balanced(data["a"], data["b"]), grad="unroll",
                    **shard_worker.SOLVE)
    ((ref.plan * data["W"]).sum() + ref.value).backward()
    for r, rows in enumerate(slices):
        o = outs[r]["pointcloud"]
        _close(o["plan"], ref.plan.detach()[rows], 1e-10)
        _close(o["g"], ref.g.detach(), 1e-10)
        _close(o["value"], ref.value.detach(), 1e-10)
        _close(o["x_grad"], x.grad[rows], 1e-9)

    for name, kw in shard_worker.options(world).items():
        cost = data["cost"].clone().requires_grad_(True)
        res = ota.solve(cost, C.unbalanced(0.5, data["a"], data["b"]), **kw, **shard_worker.SOLVE)
        res.value.backward()
        for r, rows in enumerate(slices):
            o = outs[r][name]
            _close(o["f"], res.f.detach()[rows], 1e-10)
            _close(o["g"], res.g.detach(), 1e-10)
            assert int(o["n_iters"]) == int(res.n_iters), name
            _close(o["cost_grad"], cost.grad[rows], 1e-9)

    if world == 2:  # GCA losses with shard_plan=True: the single process on the global batch
        B = data["za"].shape[0] // world
        for name in shard_worker.GCA_LOSSES:
            za = data["za"].clone().requires_grad_(True)
            zb = data["zb"].clone().requires_grad_(True)
            comp = shard_worker.build_gca(name).forward_components(za, zb)
            comp.loss.backward()
            per_anchor = comp.per_anchor.detach()
            for r in range(world):
                o = outs[r]["gca"][name]
                own = slice(r * B, (r + 1) * B)
                _close(o["loss"], comp.loss.detach(), 1e-10)
                _close(o["za_grad"], za.grad[own], 1e-10)
                _close(o["zb_grad"], zb.grad[own], 1e-10)
                for k, v in comp.terms.items():
                    _close(o["terms"][k], v.detach(), 1e-10)
                _close(o["marginal_error"], comp.marginal_error, 1e-10)
                # this rank's anchors: its z_a rows, then its z_b rows
                mine = torch.cat([per_anchor[own], per_anchor[data["za"].shape[0]:][own]])
                _close(o["per_anchor"], mine, 1e-10)

    # bad inputs: the same ValueError on every rank, naming what is wrong
    for r in range(world):
        errors = outs[r]["errors"]
        assert errors["no_group"] is not None and "process group" in errors["no_group"]
        assert errors["columns"] is not None and "columns" in errors["columns"], errors["columns"]
        assert errors["row_length"] is not None and "weights" in errors["row_length"], errors["row_length"]
        assert errors["columns"] == outs[0]["errors"]["columns"]
        assert errors["row_length"] == outs[0]["errors"]["row_length"]
        _close(outs[r]["after_errors_g"], outs[0]["after_errors_g"], 0.0)


def test_shard_options_are_validated_in_one_process():
    import otalign as ota
    from otalign import contrastive as cl

    cost = torch.rand(4, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="shard='cols'"):
        ota.solve(cost, epsilon=0.1, shard="cols")
    with pytest.raises(ValueError, match="process group"):
        ota.solve(cost, epsilon=0.1, shard="rows")
    with pytest.raises(ValueError, match="group is given"):
        ota.solve(cost, epsilon=0.1, group=object())
    with pytest.raises(ValueError, match="gather_distributed"):
        cl.GCAInfoNCE(shard_plan=True)
    for bad in (dict(layout="cross"), dict(readout="raw"), dict(target=cl.DomainTarget(alpha=0.5, beta=0.1))):
        with pytest.raises(ValueError, match="shard_plan=True with"):
            cl.GCALoss(gather_distributed=True, shard_plan=True, **bad)
    # outside torch.distributed a sharded-plan loss is the ordinary one
    z_a, z_b = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    plain = cl.GCAUOT(n_iter=3)(z_a, z_b)
    sharded = cl.GCAUOT(n_iter=3, gather_distributed=True, shard_plan=True)(z_a, z_b)
    torch.testing.assert_close(sharded, plain, atol=0, rtol=0)
