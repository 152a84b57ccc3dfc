"""FPL's top-K pseudo-labels (paper 001 §3.1, §4): the ``K`` most confident images per class
(:func:`top_k_per_class`), the images AiR fine-tunes its generator on and trains its prompt on —
from the zero-shot ``p`` or a fused ``p*`` alike."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger("raysynth.air")


@dataclass(frozen=True)
class TopK:
    """The ``k`` most confident rows per class, ``indices`` grouped by class (class 0 first),
    most confident first within a class; ``labels[i]`` is the class of ``indices[i]``.

    ``short`` names every class that got fewer than ``k`` rows, with what it got.
    """

    indices: np.ndarray
    labels: np.ndarray
    k: int | None
    counts: np.ndarray  # [C] rows per class
    short: dict[int, int] = field(default_factory=dict)

    def of_class(self, c: int) -> np.ndarray:
        return self.indices[self.labels == c]


def top_k_per_class(probs: np.ndarray, k: int | None = 16) -> TopK:
    """FPL's top-K pseudo-labels: each row goes to its argmax class (ties → the lowest class), and
    each class keeps its ``k`` rows of highest probability (``None``: all of them).

    Equal probabilities are ordered by row index, so the choice is deterministic. A class predicted
    for fewer than ``k`` rows keeps what it has and is listed in ``TopK.short`` (and logged).
    ``probs: [N, C]`` (``p``, or a fused ``p*`` — only the order matters).
    """
    probs = np.asarray(probs)
    if probs.ndim != 2:
        raise ValueError(f"probs must be [N, C], got shape {probs.shape}")
    if k is not None and k < 1:
        raise ValueError(f"k must be >= 1 (or None for every row), got {k}")
    pred = np.argmax(probs, axis=1)
    conf = probs[np.arange(len(probs)), pred]
    picked, counts = [], np.zeros(probs.shape[1], dtype=np.int64)
    for c in range(probs.shape[1]):
        rows = np.flatnonzero(pred == c)
        rows = rows[np.lexsort((rows, -conf[rows]))][:k]
        picked.append(rows)
        counts[c] = len(rows)
    short = {c: int(n) for c, n in enumerate(counts) if k is not None and n < k}
    if short:
        log.warning(
            "top-%d pseudo-labels: %d classes have fewer confident images (class: count) %s",
            k,
            len(short),
            short,
        )
    idx = np.concatenate(picked).astype(np.int64) if picked else np.zeros(0, np.int64)
    return TopK(idx, np.repeat(np.arange(probs.shape[1]), counts), k, counts, short)


__all__ = ["TopK", "top_k_per_class"]
