"""DiffCoRe-Mix (paper 003, METHODS §3) as a training-time transform.

For each real image I mixed with an accepted synthetic image G of its class, η ~ Bernoulli(0.5):
η = 1 gives the pixel mix ``λI + (1-λ)G`` with λ ~ U(0, 1); η = 0 the patch mix
``M⊙I + (1-M)⊙G`` with M a random rectangle (random size and place) set to 1 outside the patch.
The label stays I's. ``fraction`` of each batch is mixed (DiffCoRe-Mix-50 / -100).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class MixInfo:
    """What was done to each row of a batch: ``mixed`` [B] bool, ``pixel`` [B] bool (else patch),
    ``real_share`` [B] — the fraction of the result that comes from the real image."""

    mixed: torch.Tensor
    pixel: torch.Tensor
    real_share: torch.Tensor


def random_boxes(b: int, h: int, w: int, gen: torch.Generator) -> torch.Tensor:
    """``[B, 1, H, W]`` masks, 0 inside one random rectangle per image (side 10–90 % of the
    image side), 1 elsewhere."""
    bh = (torch.rand(b, generator=gen) * 0.8 + 0.1).mul(h).round().clamp(1, h).long()
    bw = (torch.rand(b, generator=gen) * 0.8 + 0.1).mul(w).round().clamp(1, w).long()
    top = (torch.rand(b, generator=gen) * (h - bh + 1).float()).long()
    left = (torch.rand(b, generator=gen) * (w - bw + 1).float()).long()
    rows = torch.arange(h)[None, :]
    cols = torch.arange(w)[None, :]
    in_r = (rows >= top[:, None]) & (rows < (top + bh)[:, None])
    in_c = (cols >= left[:, None]) & (cols < (left + bw)[:, None])
    inside = in_r[:, :, None] & in_c[:, None, :]
    return (~inside).float()[:, None]


def mix_batch(
    real: torch.Tensor,
    labels: torch.Tensor,
    synthetic: torch.Tensor,
    synthetic_labels: torch.Tensor,
    fraction: float,
    gen: torch.Generator,
) -> tuple[torch.Tensor, MixInfo]:
    """Mix ``fraction`` of ``real: [B, C, H, W]`` with synthetic images of the same class.

    Rows whose class has no synthetic image stay unmixed. Returns the new batch (labels are
    unchanged: each row keeps its real image's label) and what was done.
    """
    b = real.shape[0]
    pick = torch.full((b,), -1, dtype=torch.long)
    for c in labels.unique().tolist():
        pool = torch.nonzero(synthetic_labels.cpu() == c).flatten()
        rows = torch.nonzero(labels.cpu() == c).flatten()
        if len(pool):
            pick[rows] = pool[torch.randint(len(pool), (len(rows),), generator=gen)]
    return mix_pairs(real, synthetic[pick.clamp_min(0).to(synthetic.device)], pick >= 0,
                     fraction, gen)


def mix_pairs(
    real: torch.Tensor, partner: torch.Tensor, has: torch.Tensor, fraction: float,
    gen: torch.Generator,
) -> tuple[torch.Tensor, MixInfo]:
    """Mix ``fraction`` of ``real: [B, C, H, W]`` row by row with ``partner`` (same shape) where
    ``has`` [B] is true (eq. 6–8: pixel or patch, η ~ Bernoulli(0.5)); other rows stay real.
    :func:`mix_batch` draws a same-class partner; the ``own`` pairing passes each real image's
    own generated counterpart (``train.streams.PairedDecode``)."""
    b, _, h, w = real.shape
    dev = real.device
    mixed = (torch.rand(b, generator=gen) < fraction) & has.cpu()
    pixel = torch.rand(b, generator=gen) < 0.5
    lam = torch.rand(b, generator=gen)
    masks = random_boxes(b, h, w, gen)
    g = partner.to(dev)
    pix = lam[:, None, None, None].to(dev) * real + (1 - lam[:, None, None, None].to(dev)) * g
    m = masks.to(dev)
    patch = m * real + (1 - m) * g
    out = torch.where(pixel[:, None, None, None].to(dev), pix, patch)
    out = torch.where(mixed[:, None, None, None].to(dev), out, real)
    share = torch.where(pixel, lam, masks.mean(dim=(1, 2, 3)))
    share = torch.where(mixed, share, torch.ones(b))
    return out, MixInfo(mixed, pixel & mixed, share)
