"""Classifier-free guidance, shared by the pixel sampler and the latent sampler: one model call on
the doubled batch ``[x; x]`` (conditioning stacked the same way by the caller) whose two halves
are combined as ``ε̃ = ε_u + s (ε_c − ε_u)``. Without the unconditional half (``s = 1`` and no
negative conditioning: it would cancel) the model runs once on ``x`` and its output is returned.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def guided_output(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    scale: float,
    use_uncond: bool,
    uncond_first: bool,
) -> torch.Tensor:
    """``model`` on ``[x; x]`` (or ``x`` alone without ``use_uncond``), halves combined with
    guidance scale ``scale``; ``uncond_first`` says which half of the batch is unconditional."""
    out = model(torch.cat([x, x]) if use_uncond else x)
    if not use_uncond:
        return out
    first, second = out.chunk(2)
    cond, unc = (second, first) if uncond_first else (first, second)
    return unc + scale * (cond - unc)
