"""In-memory arrays a training run works on (decoded once on the driver, shipped to workers)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class LabeledArrays:
    """Images ``x: [N, C, H, W]`` float32 in [0, 1] and labels ``y: [N]`` int64."""

    x: np.ndarray
    y: np.ndarray

    def __post_init__(self) -> None:
        self.x = np.ascontiguousarray(self.x, dtype=np.float32)
        self.y = np.asarray(self.y, dtype=np.int64)
        if self.x.ndim != 4 or len(self.x) != len(self.y):
            raise ValueError(f"expected x [N, C, H, W] and y [N], got {self.x.shape}, {self.y.shape}")

    def __len__(self) -> int:
        return len(self.y)

    def take(self, idx: np.ndarray) -> LabeledArrays:
        return LabeledArrays(self.x[idx], self.y[idx])

    @staticmethod
    def empty_like(other: LabeledArrays) -> LabeledArrays:
        return LabeledArrays(np.zeros((0, *other.x.shape[1:]), np.float32), np.zeros(0, np.int64))


@dataclass
class ProtocolData:
    """Everything one evaluation of the UniCon protocol needs (Alg. 1 of paper 000).

    ``train``: the real k-shot images; ``synthetic``: the synthetic (or study) images, each run
    draws ``synthetic_per_class`` of them per class (all when 0); ``pool``: held-out real images
    each classifier run draws ``classifier.per_class`` from; ``eval``: validation (search) or test
    (final report) images. ``groups``: long-tail class groups for per-group accuracy.
    """

    train: LabeledArrays
    synthetic: LabeledArrays
    pool: LabeledArrays
    eval: LabeledArrays
    num_classes: int
    synthetic_per_class: int = 0
    groups: dict[str, list[int]] = field(default_factory=dict)

    @property
    def image_size(self) -> int:
        return int(self.train.x.shape[-1])

    @property
    def channels(self) -> int:
        return int(self.train.x.shape[1])


def sample_per_class(
    y: np.ndarray, per_class: int, rng: np.random.Generator, num_classes: int
) -> np.ndarray:
    """Indices of up to ``per_class`` rows of each class (all of a class when it has fewer)."""
    out = []
    for c in range(num_classes):
        idx = np.flatnonzero(y == c)
        if per_class and len(idx) > per_class:
            idx = rng.choice(idx, per_class, replace=False)
        out.append(np.sort(idx))
    return np.concatenate(out) if out else np.zeros(0, np.int64)
