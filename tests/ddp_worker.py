"""Worker for tests/test_distributed.py: one rank of a 2-process gloo group (CPU, float64).

A linear encoder wrapped in DistributedDataParallel embeds this rank's slice of a global batch;
the loss gathers the views of all ranks. Writes the loss, the encoder's gradient (after DDP's
averaging) and the gradient of the rank's input to ``out_dir/rank{r}.pt``.
"""

import os
import sys

import torch
import torch.distributed as dist


def run(rank: int, world: int, out_dir: str, loss_name: str) -> None:
    _run(rank, world, out_dir, loss_name)
    # The rank's results are on disk and the group is destroyed. Leave without the interpreter's
    # teardown: on a busy machine gloo's background threads can still be joinable when C++ static
    # destructors run, which aborts the process ("terminate called without an active exception")
    # after the work is done. An exception above still propagates to mp.spawn as a failure.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _run(rank: int, world: int, out_dir: str, loss_name: str) -> None:
    # rendezvous through a file (no port to race for) and gloo on the loopback interface
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    store = os.path.join(out_dir, "rendezvous")
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:

        torch.manual_seed(0)
        data = torch.load(os.path.join(out_dir, "data.pt"))
        B = data["x_a"].shape[0] // world
        sl = slice(rank * B, (rank + 1) * B)
        encoder = torch.nn.Linear(data["x_a"].shape[1], 4, dtype=torch.float64)
        encoder.load_state_dict(data["state"])
        model = torch.nn.parallel.DistributedDataParallel(encoder)
        x_a = data["x_a"][sl].clone().requires_grad_(True)
        x_b = data["x_b"][sl].clone()
        loss_fn = build_loss(loss_name, gather=True)
        kw = {"domains": data["domains"][sl]} if loss_name == "domain" else {}
        loss = loss_fn(model(x_a), model(x_b), **kw)
        loss.backward()
        torch.save({"loss": loss.detach(), "weight_grad": encoder.weight.grad, "bias_grad": encoder.bias.grad,
                    "x_a_grad": x_a.grad}, os.path.join(out_dir, f"rank{rank}.pt"))
        del model  # release DDP's reducer before the process group goes
        dist.barrier()  # no rank tears gloo down while the other still talks to it
    finally:
        dist.destroy_process_group()


def build_loss(name: str, gather: bool):
    from otalign import contrastive as cl

    if name == "infonce":
        return cl.InfoNCE(0.3, gather_distributed=gather)
    if name == "gca-uot":
        return cl.GCAUOT(epsilon=0.3, n_iter=5, rho=0.5, gather_distributed=gather)
    if name == "domain":
        return cl.GCAInfoNCE(epsilon=0.3, n_iter=3, target=cl.DomainTarget(0.5, 0.1), gather_distributed=gather)
    raise ValueError(name)
