"""Hard-cosine filtration (paper 003, METHODS §3): per-class thresholds from real–real pairs.

For class k, ``τ_k = mean cos(E(I_i), E(I_j))`` over z random pairs ``i ≠ j`` of real images of
the class (every pair when the class has at most z pairs). A generated image G made for real
image I is accepted when ``cos(E(I), E(G)) > τ_k``.

The DiffCoRe-Mix reference code differs in two places, both options: a fixed threshold of 0.6
(``filter.threshold=fixed``, ``filter.fixed_threshold``) and, as the real image I, the first real
image of G's class instead of the image G was generated for (``filter.reference=first_real``,
:func:`reference_ids`).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import numpy as np


def normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float64)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(n == 0, 1.0, n)


def class_pairs(n: int, z: int, rng: np.random.Generator) -> np.ndarray:
    """``[P, 2]`` index pairs ``i < j`` among ``n`` images: all of them when ``n(n-1)/2 ≤ z``,
    else ``z`` distinct pairs drawn at random."""
    total = n * (n - 1) // 2
    if total == 0:
        return np.zeros((0, 2), np.int64)
    if total <= z:
        return np.array(list(itertools.combinations(range(n), 2)), np.int64)
    chosen = rng.choice(total, size=z, replace=False)
    i = (n - 2 - np.floor(np.sqrt(-8 * chosen + 4 * n * (n - 1) - 7) / 2 - 0.5)).astype(np.int64)
    j = (chosen + i + 1 - n * (n - 1) // 2 + (n - i) * ((n - i) - 1) // 2).astype(np.int64)
    return np.stack([i, j], axis=1)


def class_thresholds(
    embeddings: np.ndarray, labels: np.ndarray, num_classes: int, pairs: int, seed: int
) -> np.ndarray:
    """``τ: [C]`` — mean cosine of up to ``pairs`` real–real pairs per class.

    A class with a single real image has no pair; its threshold is NaN and the caller must
    decide (the filter then accepts every image of that class and says so in the report).
    """
    emb = normalize(embeddings)
    out = np.full(num_classes, np.nan)
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        pp = class_pairs(len(idx), pairs, np.random.default_rng([seed, c]))
        if len(pp):
            a, b = emb[idx[pp[:, 0]]], emb[idx[pp[:, 1]]]
            out[c] = float(np.mean(np.sum(a * b, axis=1)))
    return out


def cosine_to_reference(synthetic: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Row-wise cosine between each generated image's embedding and its real image's."""
    return np.sum(normalize(synthetic) * normalize(reference), axis=1)


def first_real_ids(ids_by_class: Mapping[int, Sequence[str]]) -> dict[int, str]:
    """``{class: id}`` of each class's first real image (the reference code's comparison image;
    classes without a real image are absent)."""
    return {int(c): str(ids[0]) for c, ids in ids_by_class.items() if len(ids)}


def reference_ids(
    cond_ids: Sequence[str], labels: Sequence[int], first_real: Mapping[int, str] | None
) -> list[str]:
    """The real image each generated image is compared with: the one its plan row was generated
    from (``cond_ids``, the paper), or with ``first_real`` its class's first real image."""
    if first_real is None:
        return [str(c) for c in cond_ids]
    return [first_real[int(y)] for y in labels]


def accept(cos: np.ndarray, labels: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """``cos > τ_label`` per row; a class without a threshold (NaN) accepts everything."""
    tau = thresholds[labels]
    return np.where(np.isnan(tau), True, cos > tau)
