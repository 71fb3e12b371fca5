"""A point cloud flowing to a shape by gradient descent on the Sinkhorn divergence.

200 points start as a Gaussian blob and follow Adam steps (300, learning rate 0.01) on
``S_eps(x, target)`` with ``epsilon = 0.01`` (squared Euclidean cost) towards 200 points on a
ring. The figure shows snapshots. ``--compare`` also runs the same loop with other losses, side
by side: the loops advance in lockstep (one step of each in turn, each timed on its own), so that
a changing load on a shared machine weighs on all of them alike:

* ``ota.SinkhornDivergence(epsilon=0.01)`` (default settings: warm-started across steps; the loop
  of the figure), the same with ``tol=1e-3``, and with ``warm_start=False``;
* a hand-written loop of three ``ota.solve(..., grad="envelope")`` calls (no warm start);
* GeomLoss ``SamplesLoss("sinkhorn", p=2, blur=sqrt(eps / 2), debias=True)`` with ``scaling``
  0.5, 0.9 and 0.95 (its cost is ``|x - y|^2 / 2`` and its epsilon ``blur^2``: twice its loss is
  otalign's; ``scaling`` sets its accuracy).

It reports each loop's time, the final divergence (measured by otalign in float64), the sweeps of
``OT(x, y)`` per step, and the accuracy of each loss's gradient: its relative error against a
float64 gradient solved to ``tol=1e-13``, at the points of the first loop's steps 0, 30, 100,
200 and 300 (median and largest of the five).

    python examples/point_cloud_flow.py --out results/examples/point_cloud_flow.png [--compare]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import otalign as ota  # noqa: E402
from otalign import constraints as C  # noqa: E402
from otalign import geometry as G  # noqa: E402

EPS, STEPS, N, LR = 0.01, 300, 200, 0.01


def data(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x0 = 0.15 * torch.randn(N, 2, generator=gen)
    t = torch.rand(N, generator=gen) * 2 * math.pi
    r = 0.6 + 0.03 * torch.randn(N, generator=gen)
    y = torch.stack([r * torch.cos(t), r * torch.sin(t)], 1)
    return x0, y


def flow(loss_fn, x0, y, steps=STEPS, snapshots=()):
    x = x0.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=LR)
    shots = {}
    for step in range(steps + 1):
        if step in snapshots:
            shots[step] = x.detach().clone()
        if step == steps:
            break
        opt.zero_grad()
        loss_fn(x, y).backward()
        opt.step()
    return x.detach(), shots


def hand_envelope(x, y):
    """The divergence written by hand from three solves with grad="envelope"."""
    def ot(p, q):
        return ota.solve(G.PointCloud(p, q), C.balanced(), epsilon=EPS, grad="envelope", warn=False).value
    return ot(x, y) - 0.5 * ot(x, x) - 0.5 * ot(y, y)


def final_divergence(x, y):
    return float(ota.sinkhorn_divergence(x.double(), y.double(), epsilon=EPS))


def race(losses, x0, y, steps):
    """Run one flow per loss in lockstep; per loss: (final points, seconds, OT(x, y) sweeps/step)."""
    xs = {name: x0.clone().requires_grad_(True) for name in losses}
    opts = {name: torch.optim.Adam([xs[name]], lr=LR) for name in losses}
    secs = dict.fromkeys(losses, 0.0)
    sweeps = dict.fromkeys(losses, 0)
    for _ in range(steps):
        for name, loss_fn in losses.items():
            start = time.perf_counter()
            opts[name].zero_grad()
            loss_fn(xs[name], y).backward()
            opts[name].step()
            secs[name] += time.perf_counter() - start
            if isinstance(loss_fn, ota.SinkhornDivergence):
                sweeps[name] += int(loss_fn.results[0].n_iters)
    return {name: (xs[name].detach(), secs[name], sweeps[name] / steps) for name in losses}


def gradient_errors(grad_fns, points, y):
    """Per loss, the relative L2 error of its gradient at each of ``points`` against float64."""
    def grad(fn, x, target):
        x = x.clone().requires_grad_(True)
        fn(x, target).backward()
        return x.grad.double()

    def exact(p, q):
        return ota.sinkhorn_divergence(p, q, epsilon=EPS, tol=1e-13, max_iter=100_000)

    refs = [grad(exact, x.double(), y.double()) for x in points]
    return {name: [float((grad(fn, x, y) - ref).norm() / ref.norm()) for x, ref in zip(points, refs)]
            for name, fn in grad_fns.items()}


def doubled(geomloss_loss):
    """GeomLoss's loss in otalign's units (its cost is halved)."""
    return lambda p, q: 2.0 * geomloss_loss(p, q)


def compare(x0, y, steps, shots):
    default = "otalign SinkhornDivergence() (default)"
    losses = {default: ota.SinkhornDivergence(epsilon=EPS),
              "  same, tol=1e-3": ota.SinkhornDivergence(epsilon=EPS, tol=1e-3),
              "  same, warm_start=False": ota.SinkhornDivergence(epsilon=EPS, warm_start=False),
              'otalign 3 x solve(grad="envelope")': hand_envelope}
    grad_fns = {default: lambda p, q: ota.sinkhorn_divergence(p, q, epsilon=EPS),
                "  same, tol=1e-3": lambda p, q: ota.sinkhorn_divergence(p, q, epsilon=EPS, tol=1e-3)}
    try:
        from geomloss import SamplesLoss
    except ImportError:
        print("geomloss is not installed: skipped")
    else:
        for scaling in (0.5, 0.9, 0.95):
            gl = SamplesLoss("sinkhorn", p=2, blur=math.sqrt(EPS / 2), debias=True, scaling=scaling,
                             backend="tensorized")
            losses[f"GeomLoss scaling={scaling}"] = grad_fns[f"GeomLoss scaling={scaling}"] = doubled(gl)
    ran = race(losses, x0, y, steps)
    errors = gradient_errors(grad_fns, [shots[k] for k in sorted(shots)], y)
    ref_name = "GeomLoss scaling=0.9" if "GeomLoss scaling=0.9" in ran else default
    reference = ran[ref_name][1]
    print(f"time ratios are to {ref_name}; sweeps: of OT(x, y) per step; "
          f"grad err: relative, at steps {sorted(shots)}")
    print(f"{'method':<46} {'time (s)':>9} {'ratio':>9} {'final S_eps':>12} {'sweeps':>7} "
          f"{'grad err median':>16} {'max':>9}")
    for name, (x, secs, sweeps) in ran.items():
        err = errors.get(name)
        errs = f"{statistics.median(err):16.1e} {max(err):9.1e}" if err else f"{'(as the first)':>16} {'':>9}"
        sw = f"{sweeps:7.1f}" if isinstance(losses[name], ota.SinkhornDivergence) else f"{'-':>7}"
        print(f"{name:<46} {secs:9.2f} {secs / reference:9.2f} {final_divergence(x, y):12.3e} {sw} {errs}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/examples/point_cloud_flow.png")
    parser.add_argument("--compare", action="store_true",
                        help="time the loop with other losses, side by side")
    parser.add_argument("--steps", type=int, default=STEPS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", ota.NonConvergenceWarning)
    x0, y = data()
    snaps = (0, args.steps // 10, args.steps // 3, 2 * args.steps // 3, args.steps)
    loss = ota.SinkhornDivergence(epsilon=EPS)  # warm-started across steps (the default)
    start = time.perf_counter()
    x, shots = flow(loss, x0, y, args.steps, snaps)
    secs = time.perf_counter() - start
    print(f"{args.steps} steps in {secs:.2f} s, final S_eps {final_divergence(x, y):.3e}")
    if args.compare:
        compare(x0, y, args.steps, shots)
    shots = {k: v for k, v in shots.items() if k != 2 * args.steps // 3}
    fig, axes = plt.subplots(1, len(shots), figsize=(4 * len(shots), 4), sharex=True, sharey=True)
    for ax, (step, pts) in zip(axes, sorted(shots.items())):
        ax.scatter(*y.T, s=6, c="lightgray", label="target")
        ax.scatter(*pts.T, s=6, c="tab:blue", label="points")
        ax.set_title(f"step {step}")
        ax.set_aspect("equal")
    axes[0].legend(loc="upper right")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=90)
    print(f"figure: {args.out}")


if __name__ == "__main__":
    main()
