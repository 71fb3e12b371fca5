"""Worker for tests/test_shard.py: one rank of a gloo group solving row-sharded problems (float64).

The parent saves a global problem set to ``out_dir/data.pt`` (costs, weights, groups, the row
split); each rank takes its rows, runs every case with ``shard="rows"`` and writes its outputs
and gradients to ``out_dir/rank{r}.pt``. The parent compares them with one process on the
global problems. Also records the ``ValueError`` message each rank gets for bad inputs (or None
when a rank did not raise: the parent fails on it).
"""

import os
import sys
import time

import torch
import torch.distributed as dist

import otalign as ota
from otalign import constraints as C
from test_registry import MarginalBand  # the registry's worked example: declared only through the registry


EPS = 0.3
SOLVE = dict(epsilon=EPS, tol=1e-13, max_iter=300, adjoint_tol=1e-13, adjoint_max_iter=300)


def constraints(case: str, a, b, data, rows: slice):
    """The constraint set of ``case`` with the row-side tensors ``a`` (and groups) of ``rows``."""
    if case == "balanced":
        return C.balanced(a, b)
    if case == "unbalanced":
        return C.unbalanced(0.5, a, b)
    if case == "partial":
        return C.partial(0.6, a, b)
    if case == "block":
        return C.balanced(a, b) + [C.BlockMass(row_groups=data["row_groups"][rows], col_groups=data["col_groups"],
                                               mass=data["block_mass"])]
    if case == "band":
        return [MarginalBand(axis=0, lower=0.5 * a, upper=1.5 * a), C.Marginal(axis=1, weights=b)]
    if case == "uniform":
        return C.unbalanced(0.5)
    raise KeyError(case)


CASES = ("balanced", "unbalanced", "partial", "block", "band", "uniform")


def solve_case(case: str, grad: str, cost, a, b, data, rows: slice, **kw):
    """Solve one case; returns the outputs and the loss that the tests differentiate:
    ``value + <plan, W> + <g, v>`` (``W``: rows ``rows`` of a fixed matrix, ``v`` fixed)."""
    res = ota.solve(cost, constraints(case, a, b, data, rows), grad=grad, **SOLVE, **kw)
    loss = res.value + (res.plan * data["W"][rows]).sum()
    if case != "block":  # with block duals the potentials keep a gauge that centring does not fix:
        loss = loss + (res.g * data["v"]).sum()  # <g, v> is not a function of the problem there
    return res, loss


OPTIONS = {
    "envelope": dict(grad="envelope"),
    "overrelax": dict(overrelax="adaptive", grad="unroll"),
    "anneal": dict(anneal=0.5, grad="unroll"),
}

def grads(world: int, case: str) -> tuple:
    """Gradient modes checked per case: both on 2 ranks; on 3 (slower to run on a small
    machine) implicit everywhere and unroll on the balanced case."""
    return ("implicit", "unroll") if world == 2 or case == "balanced" else ("implicit",)


def options(world: int) -> dict:
    return OPTIONS if world == 2 else {"envelope": OPTIONS["envelope"]}


GCA_LOSSES = ("gca-uot", "gca-infonce", "gca-rince")


def build_gca(name: str, **kw):
    from otalign import contrastive as cl

    if name == "gca-uot":
        return cl.GCAUOT(epsilon=0.5, n_iter=5, rho=0.3, **kw)
    if name == "gca-infonce":
        return cl.GCAInfoNCE(epsilon=0.5, n_iter=5, **kw)
    return cl.GCARINCE(epsilon=0.5, n_iter=5, **kw)


def run(rank: int, world: int, out_dir: str) -> None:
    _run(rank, world, out_dir)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # see ddp_worker.run: skip the interpreter teardown racing gloo's threads


def _error(fn):
    try:
        fn()
    except ValueError as exc:
        return str(exc)
    return None


def _run(rank: int, world: int, out_dir: str) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    if os.environ.get("SHARD_TIMES"):
        print(rank, "started", round(time.time() - float(os.environ["SHARD_TIMES"]), 2), file=sys.stderr)
    data = torch.load(os.path.join(out_dir, "data.pt"))
    split = data["split"][world]
    start = sum(split[:rank])
    rows = slice(start, start + split[rank])
    out = {"errors": {}}
    cost_local = data["cost"][rows]
    # no process group yet: every rank must raise on its own
    out["errors"]["no_group"] = _error(lambda: ota.solve(cost_local, epsilon=EPS, shard="rows"))

    dist.init_process_group("gloo", init_method=f"file://{os.path.join(out_dir, 'rendezvous')}", rank=rank,
                            world_size=world)
    try:
        a, b = data["a"][rows], data["b"]
        for case in CASES:
            for grad in grads(world, case):
                t0 = time.time()
                cost = cost_local.clone().requires_grad_(True)
                aa = a.clone().requires_grad_(True)
                bb = b.clone().requires_grad_(True)
                kw = {}
                if case == "uniform":
                    res, loss = solve_case(case, grad, cost, None, None, data, rows, shard="rows")
                else:
                    res, loss = solve_case(case, grad, cost, aa, bb, data, rows, shard="rows", **kw)
                loss.backward()
                if os.environ.get("SHARD_TIMES"):
                    print(rank, case, grad, round(time.time() - t0, 2), file=sys.stderr)
                out[(case, grad)] = {
                    "plan": res.plan.detach(), "f": res.f.detach(), "g": res.g.detach(),
                    "value": res.value.detach(), "transport_cost": res.transport_cost.detach(),
                    "n_iters": res.n_iters, "converged": res.converged, "loss": loss.detach(),
                    "cost_grad": cost.grad, "a_grad": aa.grad, "b_grad": bb.grad,
                }
        t0 = time.time()
        # a point cloud whose x is this rank's shard, online backend (tiles of 2 x 3 entries)
        x = data["x"][rows].clone().requires_grad_(True)
        geom = ota.geometry.PointCloud(x, data["y"], backend="online", tile_bytes=6 * 8)
        res = ota.solve(geom, C.balanced(a, b), shard="rows", grad="unroll", **SOLVE)
        ((res.plan * data["W"][rows]).sum() + res.value).backward()
        out["pointcloud"] = {"plan": res.plan.detach(), "g": res.g.detach(), "value": res.value.detach(),
                             "x_grad": x.grad}
        if os.environ.get("SHARD_TIMES"):
            print(rank, "pointcloud", round(time.time() - t0, 2), file=sys.stderr)

        # other options: the envelope gradient of value, adaptive over-relaxation, annealing
        for name, kw in options(world).items():
            cost = cost_local.clone().requires_grad_(True)
            res = ota.solve(cost, C.unbalanced(0.5, a, b), shard="rows", **kw, **SOLVE)
            res.value.backward()
            out[name] = {"f": res.f.detach(), "g": res.g.detach(), "n_iters": res.n_iters, "cost_grad": cost.grad}

        if world == 2:  # GCA losses with the plan split across the ranks
            from otalign import contrastive as cl

            B = data["za"].shape[0] // world
            own = slice(rank * B, (rank + 1) * B)
            out["gca"] = {}
            for name in GCA_LOSSES:
                za = data["za"][own].clone().requires_grad_(True)
                zb = data["zb"][own].clone().requires_grad_(True)
                loss_fn = build_gca(name, gather_distributed=True, shard_plan=True)
                comp = loss_fn.forward_components(za, zb)
                comp.loss.backward()
                out["gca"][name] = {"loss": comp.loss.detach(), "za_grad": za.grad, "zb_grad": zb.grad,
                                    "terms": {k: v.detach() for k, v in comp.terms.items()},
                                    "marginal_error": comp.marginal_error, "per_anchor": comp.per_anchor.detach()}

        # bad inputs: every rank must raise ValueError (none left waiting in a collective)
        cols = data["cost"][rows] if rank else data["cost"][rows, :-1]
        out["errors"]["columns"] = _error(lambda: ota.solve(cols, C.balanced(None, None), epsilon=EPS, shard="rows"))
        wrong_a = torch.cat([a, a[:1]]) if rank == 0 else a
        out["errors"]["row_length"] = _error(
            lambda: ota.solve(cost_local, C.balanced(wrong_a, b), epsilon=EPS, shard="rows"))
        # still in step after the errors: one more collective solve
        res = ota.solve(cost_local, C.balanced(a, b), shard="rows", **SOLVE)
        out["after_errors_g"] = res.g
    finally:
        torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()
        dist.destroy_process_group()
