"""Cost of the backward pass relative to the forward solve (issue 12's gradient criterion).

    python benchmarks/gradients.py                       # clustered n = 1024, eps 0.05, float32, 1 thread
    python benchmarks/gradients.py --n 256 --epsilon 0.01 --repeats 5

For each gradient mode, the median over ``--repeats`` runs of: the forward solve (with the cost
requiring grad), the backward of a value-only loss (``res.value``), and the backward of a
plan-dependent loss (``(res.plan * W).sum()``), on the bench's clustered problem
(``otalign/bench/datasets.py``: two samples of a 2-D Gaussian mixture, cost scaled to [0, 1]).
A backward's time includes reading the output it differentiates (``res.value``, ``res.plan``).
Prints one JSON line per mode with the times and the ratios backward / forward, and for
``implicit`` the adjoint's products (``res.adjoint.n_iters``) next to the forward's sweeps.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import otalign as ota
from otalign import constraints as C
from otalign.bench.problems import build_problem, real_use_problems, select_problems


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1024, choices=[256, 1024])
    p.add_argument("--epsilon", type=float, default=0.05)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--modes", default="implicit,unroll,envelope")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    spec = select_problems([f"balanced-clusters-n{args.n}-eps{args.epsilon:g}"], real_use_problems())[0]
    prob = build_problem(spec)
    cost, a, b = prob.cost[0], prob.a[0], prob.b[0]
    W = torch.randn(cost.shape, generator=torch.Generator().manual_seed(0))
    for mode in args.modes.split(","):
        fwd, bwd_value, bwd_plan, info = [], [], [], {}
        for _ in range(args.repeats):
            for target in ("value", "plan"):
                M = cost.clone().requires_grad_(True)
                t0 = time.perf_counter()
                res = ota.solve(M, C.balanced(a, b), epsilon=spec.epsilon, grad=mode, max_iter=20_000)
                t1 = time.perf_counter()
                if target == "value":
                    loss = res.value
                elif mode == "envelope":
                    continue
                else:
                    loss = (res.plan * W).sum()
                t2 = time.perf_counter()
                loss.backward()
                t3 = time.perf_counter()
                if target == "value":
                    fwd.append(t1 - t0)
                    bwd_value.append(t3 - t1)
                else:
                    bwd_plan.append(t3 - t1)
                    if mode == "implicit":
                        info = {"adjoint_products": res.adjoint.n_iters, "adjoint_residual": float(res.adjoint.residual.max())}
                info["sweeps"] = int(res.n_iters)
        f = statistics.median(fwd)
        out = {"mode": mode, "n": args.n, "epsilon": spec.epsilon, "forward_s": round(f, 4),
               "value_backward_s": round(statistics.median(bwd_value), 4),
               "value_ratio": round(statistics.median(bwd_value) / f, 3)}
        if bwd_plan:
            out.update(plan_backward_s=round(statistics.median(bwd_plan), 4),
                       plan_ratio=round(statistics.median(bwd_plan) / f, 3))
        out.update(info)
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
