"""Label-preserving augmentations, batched on the tensor's device and seeded by a Generator.

Two views of a batch are two independent draws. ``small`` suits ≤ 32-px images (digits: small
rotations, scale and shifts, no flips — a flipped digit is another digit); ``photo`` is the SupCon
recipe for photos (random resized crop, horizontal flip, colour jitter, random grey).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

KINDS = ("small", "photo", "none")


def resolve_kind(kind: str, image_size: int) -> str:
    if kind != "auto":
        return kind
    return "small" if image_size <= 32 else "photo"


def _affine(
    x: torch.Tensor, angle: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, flip: torch.Tensor
) -> torch.Tensor:
    """Apply per-sample rotation (rad), zoom (>1 zooms in), shift (fraction) and x-flip (±1)."""
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [
            torch.stack([cos * flip, -sin, shift[:, 0]], dim=1),
            torch.stack([sin * flip, cos, shift[:, 1]], dim=1),
        ],
        dim=1,
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def augment(x: torch.Tensor, kind: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """One random view of ``x: [B, C, H, W]`` in [0, 1]; returns the same shape."""
    if kind == "none":
        return x
    b, dev = x.shape[0], x.device

    def uniform(lo: float, hi: float, *shape: int) -> torch.Tensor:
        u = torch.rand(b, *shape, generator=generator, device="cpu").to(dev)
        return lo + (hi - lo) * u

    if kind == "small":
        angle = uniform(-math.radians(12), math.radians(12))
        scale = uniform(0.9, 1.1)
        shift = uniform(-0.12, 0.12, 2)
        return _affine(x, angle, scale, shift, torch.ones(b, device=dev)).clamp(0, 1)
    if kind == "photo":
        # Random resized crop (area 0.2–1 of the image) and horizontal flip as one affine map.
        zoom = 1.0 / torch.sqrt(uniform(0.2, 1.0))
        room = 1.0 - 1.0 / zoom
        shift = (uniform(-1.0, 1.0, 2) * room[:, None]).to(dev)
        flip = torch.where(uniform(0, 1) < 0.5, -1.0, 1.0)
        out = _affine(x, torch.zeros(b, device=dev), zoom, shift, flip)
        # Colour jitter (brightness, contrast) with p = 0.8, random grey with p = 0.2.
        jitter = (uniform(0, 1) < 0.8).float()[:, None, None, None]
        bright = 1 + jitter * uniform(-0.4, 0.4)[:, None, None, None]
        contrast = 1 + jitter * uniform(-0.4, 0.4)[:, None, None, None]
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        out = ((out * bright - mean) * contrast + mean).clamp(0, 1)
        if out.shape[1] == 3:
            grey = (uniform(0, 1) < 0.2).float()[:, None, None, None]
            lum = (out * torch.tensor([0.299, 0.587, 0.114], device=dev)[None, :, None, None]).sum(
                1, keepdim=True
            )
            out = grey * lum.expand_as(out) + (1 - grey) * out
        return out
    raise ValueError(f"unknown augmentation {kind!r}; choose one of {', '.join(KINDS)}")


def two_views(x: torch.Tensor, kind: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """``[B, C, H, W]`` → ``[B, 2, C, H, W]``: two independent views per image."""
    return torch.stack([augment(x, kind, generator), augment(x, kind, generator)], dim=1)
