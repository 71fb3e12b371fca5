"""Random augmentations of batches, in pure torch, driven by an explicit ``torch.Generator``.

Every function takes a batch ``x`` of shape ``(B, C, L)`` (signals) or ``(B, C, H, W)``
(images), float, and a generator on ``x``'s device, and returns a new tensor of the same shape,
dtype and device; each sample gets its own random parameters. The same generator state gives the
same output. Intensities (noise, brightness) are relative to each sample's standard deviation, so
the presets suit both digits (pixels in [0, 1]) and mnist1d (standardised signals).

Presets (:data:`PRESETS`), the analogue of the paper's standard and "noisy" settings:

* :func:`standard`: random resized crop (area 60-100%) with a shift of up to 1/8 of the size
  and a rotation of up to 10 degrees (images), then Gaussian noise (0.05 std).
* :func:`extreme`: strong crop (area 20-50%), large random erasing (20-40% of the sample,
  always), brightness/contrast corruption (offset up to 1 std, contrast factor 0.3-1.7), then the
  same small noise. Views share far less content, as with the paper's "Large erase",
  "Strong crop" and "Brightness" options.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

__all__ = [
    "standard",
    "extreme",
    "PRESETS",
    "random_resized_crop",
    "random_erase",
    "brightness_contrast",
    "gaussian_noise",
]

Augmentation = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def _check(x: torch.Tensor, generator: torch.Generator) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() not in (3, 4) or not x.is_floating_point():
        desc = f"shape {tuple(x.shape)}, dtype {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x has {desc}; expected a float tensor (B, C, L) or (B, C, H, W)")
    if not isinstance(generator, torch.Generator) or generator.device.type != x.device.type:
        where = generator.device if isinstance(generator, torch.Generator) else type(generator).__name__
        raise ValueError(f"generator is on {where}; expected a torch.Generator on {x.device.type}")


def _uniform(generator: torch.Generator, x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """``(B,)`` uniform draws in ``[low, high)``, one per sample of ``x``."""
    u = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=x.dtype)
    return low + (high - low) * u


def _sample_std(x: torch.Tensor) -> torch.Tensor:
    """``(B, 1, ..., 1)`` standard deviation of each sample (1 for a constant sample)."""
    s = x.flatten(1).std(dim=1)
    s = torch.where(s > 0, s, torch.ones_like(s))
    return s.view(-1, *([1] * (x.dim() - 1)))


def random_resized_crop(
    x: torch.Tensor,
    generator: torch.Generator,
    area: tuple[float, float],
    max_shift: float = 0.0,
    max_rotation_deg: float = 0.0,
) -> torch.Tensor:
    """Crop a random window and resize it back to the full size (bilinear, edges replicated).

    The window covers a fraction ``U(area)`` of the sample (same aspect ratio), lies anywhere
    inside it, is moved by up to ``max_shift`` of the size in each direction and rotated by up to
    ``max_rotation_deg`` degrees (images only; signals are not rotated).
    """
    _check(x, generator)
    lo, hi = area
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"area={area!r}; expected 0 < low <= high <= 1")
    signal = x.dim() == 3
    img = x.unsqueeze(2) if signal else x  # signals as (B, C, 1, L)
    frac = _uniform(generator, x, lo, hi)
    side = frac if signal else frac.sqrt()  # window side as a fraction of the size
    reach = (1 - side) + 2 * max_shift  # normalised coordinates span [-1, 1]
    tx = _uniform(generator, x, -1, 1) * reach
    if signal:
        zero, one = torch.zeros_like(side), torch.ones_like(side)
        theta = torch.stack([torch.stack([side, zero, tx], 1), torch.stack([zero, one, zero], 1)], 1)
    else:
        ty = _uniform(generator, x, -1, 1) * reach
        angle = _uniform(generator, x, -1, 1) * math.radians(max_rotation_deg)
        cos, sin = angle.cos() * side, angle.sin() * side
        theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)  # (B, 2, 3)
    grid = F.affine_grid(theta, list(img.shape), align_corners=False)
    out = F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.squeeze(2) if signal else out


def random_erase(
    x: torch.Tensor, generator: torch.Generator, area: tuple[float, float], max_aspect: float = 2.0
) -> torch.Tensor:
    """Replace one random rectangle (segment for signals) per sample by the sample's mean value.

    The rectangle covers a fraction ``U(area)`` of the sample with an aspect ratio drawn
    log-uniformly in ``[1 / max_aspect, max_aspect]`` (clipped to the sample).
    """
    _check(x, generator)
    lo, hi = area
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"area={area!r}; expected 0 < low <= high <= 1")
    signal = x.dim() == 3
    img = x.unsqueeze(2) if signal else x
    _, _, H, W = img.shape
    frac = _uniform(generator, x, lo, hi)
    log_r = _uniform(generator, x, -math.log(max_aspect), math.log(max_aspect))
    if signal:
        h, w = torch.ones_like(frac), frac * W
    else:
        h, w = (frac * log_r.exp()).sqrt() * H, (frac / log_r.exp()).sqrt() * W
    h = h.round().clamp(1, H)
    w = w.round().clamp(1, W)
    top = (_uniform(generator, x, 0, 1) * (H - h + 1)).floor()
    left = (_uniform(generator, x, 0, 1) * (W - w + 1)).floor()
    rows = torch.arange(H, device=x.device, dtype=x.dtype)
    cols = torch.arange(W, device=x.device, dtype=x.dtype)
    in_rows = (rows >= top[:, None]) & (rows < (top + h)[:, None])  # (B, H)
    in_cols = (cols >= left[:, None]) & (cols < (left + w)[:, None])  # (B, W)
    mask = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]  # (B, 1, H, W)
    fill = img.mean(dim=(1, 2, 3), keepdim=True).expand_as(img)
    out = torch.where(mask, fill, img)
    return out.squeeze(2) if signal else out


def brightness_contrast(
    x: torch.Tensor, generator: torch.Generator, brightness: float, contrast: tuple[float, float]
) -> torch.Tensor:
    """``(x - m) * c + m + b * s`` per sample: ``m``, ``s`` its mean and std, ``c ~ U(contrast)``,
    ``b ~ U(-brightness, brightness)``."""
    _check(x, generator)
    view = (-1,) + (1,) * (x.dim() - 1)
    c = _uniform(generator, x, *contrast).view(view)
    b = _uniform(generator, x, -brightness, brightness).view(view)
    m = x.flatten(1).mean(1).view(view)
    return (x - m) * c + m + b * _sample_std(x)


def gaussian_noise(x: torch.Tensor, generator: torch.Generator, std: float) -> torch.Tensor:
    """Add i.i.d. Gaussian noise of ``std`` times each sample's standard deviation."""
    _check(x, generator)
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x + std * _sample_std(x) * noise


def standard(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Standard preset: resized crop (area 0.6-1, shift 1/8, rotation 10 deg), noise 0.05 std.

    ``x``: ``(B, C, L)`` or ``(B, C, H, W)``; returns the same shape and dtype.
    """
    x = random_resized_crop(x, generator, area=(0.6, 1.0), max_shift=0.125, max_rotation_deg=10.0)
    return gaussian_noise(x, generator, std=0.05)


def extreme(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Extreme preset (corrupted views): strong crop (area 0.2-0.5, rotation 10 deg), large erasing
    (area 0.2-0.4), brightness/contrast corruption (offset 1 std, contrast 0.3-1.7), noise 0.05 std.

    ``x``: ``(B, C, L)`` or ``(B, C, H, W)``; returns the same shape and dtype.
    """
    x = random_resized_crop(x, generator, area=(0.2, 0.5), max_rotation_deg=10.0)
    x = random_erase(x, generator, area=(0.2, 0.4))
    x = brightness_contrast(x, generator, brightness=1.0, contrast=(0.3, 1.7))
    return gaussian_noise(x, generator, std=0.05)


#: Augmentation presets by name (the values of ``TrainConfig.augmentation``).
PRESETS: dict[str, Augmentation] = {"standard": standard, "extreme": extreme}
