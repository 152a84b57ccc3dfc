"""Classifier-free guidance, shared by the pixel sampler and the latent sampler: one model call on
the doubled batch ``[x; x]`` (conditioning stacked the same way by the caller) whose two halves
are combined as ``ε̃ = ε_u + s (ε_c − ε_u)``. Without the unconditional half (``s = 1`` and no
negative conditioning: it would cancel) the model runs once on ``x`` and its output is returned.
:func:`conditional_half` takes the conditional half of such stacked conditioning, for feedback
guidance through the conditional branch alone (``synthesis.feedback.gradient=conditional_branch``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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


def conditional_half(value: Any, use_uncond: bool, uncond_first: bool) -> Any:
    """The conditional half of conditioning stacked for :func:`guided_output` (a tensor, or a
    dict of them, nested; anything else as it is); everything as it is without ``use_uncond``."""
    if not use_uncond:
        return value
    if isinstance(value, dict):
        return {k: conditional_half(v, use_uncond, uncond_first) for k, v in value.items()}
    if isinstance(value, torch.Tensor):
        first, second = value.chunk(2)
        return second if uncond_first else first
    return value
