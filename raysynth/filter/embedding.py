"""What every embedder is (METHODS §3–4): the :class:`Embedder` protocol — PNG bytes in,
L2-normalised float32 rows out — and :func:`unit_rows`, which every embedder's output goes
through, so the filter never knows which embedder it runs.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch

from raysynth.filter.threshold import normalize


@runtime_checkable
class Embedder(Protocol):
    """``embed_images(pngs) -> [N, dim]`` and, when ``has_text``, ``embed_texts(texts) -> [T, dim]``;
    every row float32 with unit L2 norm."""

    dim: int
    has_text: bool

    def embed_images(self, pngs: list[bytes]) -> np.ndarray: ...

    def embed_texts(self, texts: list[str]) -> np.ndarray: ...


def unit_rows(x: torch.Tensor | np.ndarray, dim: int) -> np.ndarray:
    """``[N, D]`` float32 with unit rows; an empty batch stays ``[0, dim]``."""
    arr = x.detach().float().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)
    if len(arr) == 0:
        return np.zeros((0, dim), np.float32)
    return normalize(arr).astype(np.float32)
