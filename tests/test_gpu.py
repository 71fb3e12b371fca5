"""The same checks on a CUDA device (marked `gpu`: run with `pytest -m gpu` on a machine with one).

Each test compares the GPU result with the CPU result of the same call, so everything the CPU
suite verifies carries over.
"""

import pytest
import torch

import otalign as ota
from otalign import constraints as C
from otalign import contrastive as cl

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

FAMILIES = [
    C.balanced(),
    C.unbalanced(0.5),
    C.partial(0.7),
    C.balanced() + [C.Forbid(mask="diagonal")],
    C.balanced() + [C.BlockMass(row_groups=torch.arange(40) % 2, col_groups=torch.arange(40) % 2,
                                mass=torch.tensor([[0.4, 0.1], [0.1, 0.4]], dtype=torch.float64))],
]


@pytest.mark.parametrize("cons", FAMILIES, ids=["balanced", "unbalanced", "partial", "forbid", "blocks"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_solve_on_cuda_matches_cpu(cons, dtype):
    g = torch.Generator().manual_seed(0)
    cost = torch.rand(3, 40, 40, generator=g, dtype=dtype)
    cpu = ota.solve(cost, cons, epsilon=0.05, tol=1e-5 if dtype == torch.float32 else 1e-10, max_iter=20_000)
    gpu = ota.solve(cost.cuda(), cons, epsilon=0.05, tol=1e-5 if dtype == torch.float32 else 1e-10, max_iter=20_000)
    assert gpu.plan.device.type == "cuda" and gpu.plan.dtype == dtype
    assert bool(gpu.converged.all())
    atol = 1e-4 if dtype == torch.float32 else 1e-9
    assert float((gpu.plan.cpu() - cpu.plan).abs().sum((1, 2)).max()) < atol


@pytest.mark.parametrize("grad", ["implicit", "unroll", "envelope"])
def test_gradients_on_cuda_match_cpu(grad):
    g = torch.Generator().manual_seed(1)
    base = torch.rand(30, 20, generator=g, dtype=torch.float64)
    grads = []
    for device in ("cpu", "cuda"):
        cost = base.to(device).requires_grad_()
        res = ota.solve(cost, C.unbalanced(0.5), epsilon=0.1, tol=1e-12, max_iter=10_000, grad=grad)
        grads.append(torch.autograd.grad(res.value, cost)[0].cpu())
    torch.testing.assert_close(grads[0], grads[1], atol=1e-9, rtol=0)


def test_contrastive_losses_on_cuda_match_cpu():
    g = torch.Generator().manual_seed(2)
    z_a, z_b = torch.randn(64, 32, generator=g), torch.randn(64, 32, generator=g)
    for loss in (cl.InfoNCE(0.1), cl.GCAInfoNCE(0.1, 10), cl.GCAUOT(0.1, 10)):
        cpu = loss(z_a, z_b)
        gpu = loss(z_a.cuda(), z_b.cuda())
        assert gpu.device.type == "cuda"
        assert float(gpu) == pytest.approx(float(cpu), rel=1e-4)
