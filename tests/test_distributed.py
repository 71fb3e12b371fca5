"""DDP correctness with 2 real gloo processes on CPU (no mocks): with gather_distributed=True and
DDP's gradient averaging, the loss and the gradients equal one process on the whole batch."""

import pytest
import torch
import torch.multiprocessing as mp

import ddp_worker

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")


@pytest.mark.parametrize("loss_name", ["infonce", "gca-uot", "domain"])
def test_two_gloo_ranks_match_one_process(tmp_path, loss_name):
    g = torch.Generator().manual_seed(1)
    world, B, D = 2, 6, 5
    encoder = torch.nn.Linear(D, 4, dtype=torch.float64)
    data = {
        "x_a": torch.randn(world * B, D, dtype=torch.float64, generator=g),
        "x_b": torch.randn(world * B, D, dtype=torch.float64, generator=g),
        "domains": torch.randint(0, 3, (world * B,), generator=g),
        "state": encoder.state_dict(),
    }
    torch.save(data, tmp_path / "data.pt")
    mp.spawn(ddp_worker.run, args=(world, str(tmp_path), loss_name), nprocs=world, join=True)

    # one process, whole batch, no gathering
    x_a = data["x_a"].clone().requires_grad_(True)
    loss_fn = ddp_worker.build_loss(loss_name, gather=False)
    kw = {"domains": data["domains"]} if loss_name == "domain" else {}
    loss = loss_fn(encoder(x_a), encoder(data["x_b"]), **kw)
    loss.backward()

    for r in range(world):
        out = torch.load(tmp_path / f"rank{r}.pt")
        torch.testing.assert_close(out["loss"], loss.detach(), atol=1e-10, rtol=0)
        torch.testing.assert_close(out["weight_grad"], encoder.weight.grad, atol=1e-10, rtol=0)
        torch.testing.assert_close(out["bias_grad"], encoder.bias.grad, atol=1e-10, rtol=0)
        # inputs are not averaged by DDP: the summing gather hands each rank W times its share,
        # which DDP's 1/W on parameter gradients turns into the single-process gradient
        torch.testing.assert_close(out["x_a_grad"] / world, x_a.grad[r * B:(r + 1) * B], atol=1e-10, rtol=0)
