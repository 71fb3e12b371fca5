"""Deterministic style domains for images: the digits analogue of the paper's PACS domains.

Four styles, indexed by domain id (:data:`DOMAIN_STYLES`):

0. ``original``: the image unchanged.
1. ``inverted``: upside down (flipped vertically).
2. ``blurred``: a 3x3 Gaussian blur (sigma 0.7, edge pixels replicated).
3. ``rotated``: rotated by 30 degrees about the centre (bilinear, background 0 outside).

The styles are chosen so that the domain is visible but not trivially decodable: a colour
inversion ``1 - x`` would change every pixel's mean, and a linear probe would read the domain off
any features with 100% accuracy whatever the loss, leaving nothing to measure in a sweep.

Each sample gets exactly one domain; :func:`assign_domains` balances the domains and shuffles them
with a fixed seed, so both the assignment and the rendering are deterministic.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["DOMAIN_STYLES", "assign_domains", "apply_domain_styles", "style"]

DOMAIN_STYLES = ("original", "inverted", "blurred", "rotated")
BLUR_SIGMA = 0.7  # of the ``blurred`` style, in pixels
ROTATION_DEG = 30.0  # of the ``rotated`` style


def _gaussian_kernel3(sigma: float) -> torch.Tensor:
    t = torch.tensor([-1.0, 0.0, 1.0])
    k1 = torch.exp(-(t**2) / (2 * sigma**2))
    k1 = k1 / k1.sum()
    return (k1[:, None] * k1[None, :])[None, None]  # (1, 1, 3, 3)


def style(x: torch.Tensor, domain: int) -> torch.Tensor:
    """Render images ``x`` of shape ``(N, C, H, W)`` (values in [0, 1]) in style ``domain``.

    Returns a new tensor of the same shape and dtype.
    """
    if x.dim() != 4:
        raise ValueError(f"x has shape {tuple(x.shape)}; expected images (N, C, H, W)")
    if not 0 <= domain < len(DOMAIN_STYLES):
        raise ValueError(f"domain={domain!r}; expected an id in [0, {len(DOMAIN_STYLES)})")
    name = DOMAIN_STYLES[domain]
    if name == "original":
        return x.clone()
    if name == "inverted":
        return x.flip(-2)
    if name == "blurred":
        n, c, h, w = x.shape
        padded = F.pad(x.reshape(n * c, 1, h, w), (1, 1, 1, 1), mode="replicate")
        return F.conv2d(padded, _gaussian_kernel3(BLUR_SIGMA).to(x)).reshape(n, c, h, w)
    angle = math.radians(ROTATION_DEG)
    rot = torch.tensor(
        [[math.cos(angle), -math.sin(angle), 0.0], [math.sin(angle), math.cos(angle), 0.0]],
        dtype=x.dtype,
        device=x.device,
    )
    grid = F.affine_grid(rot.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def assign_domains(n: int, seed: int, n_domains: int = len(DOMAIN_STYLES)) -> torch.Tensor:
    """Balanced, seeded assignment of ``n`` samples to ``n_domains`` domains: ``(n,)`` int64 ids.

    Every domain gets ``floor(n / n_domains)`` or ``ceil(n / n_domains)`` samples.
    """
    if n < 1:
        raise ValueError(f"n={n!r}; expected a positive number of samples")
    if not 1 <= n_domains <= len(DOMAIN_STYLES):
        raise ValueError(f"n_domains={n_domains!r}; expected an integer in [1, {len(DOMAIN_STYLES)}]")
    ids = torch.arange(n) % n_domains
    return ids[torch.randperm(n, generator=torch.Generator().manual_seed(seed))]


def apply_domain_styles(x: torch.Tensor, domains: torch.Tensor) -> torch.Tensor:
    """Render each image ``x[i]`` (``(N, C, H, W)``) in the style of ``domains[i]`` (``(N,)`` ids)."""
    if domains.shape != x.shape[:1]:
        raise ValueError(
            f"domains has shape {tuple(domains.shape)}; expected ({x.shape[0]},), one id per image"
        )
    if not bool(((domains >= 0) & (domains < len(DOMAIN_STYLES))).all()):
        raise ValueError(f"domains has ids outside [0, {len(DOMAIN_STYLES)}); expected valid domain ids")
    out = torch.empty_like(x)
    for d in range(len(DOMAIN_STYLES)):
        rows = domains == d
        if bool(rows.any()):
            out[rows] = style(x[rows], d)
    return out
