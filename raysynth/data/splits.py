"""Per-class train / pool / val / test splits: k-shot or long-tailed (CIFAR-LT profile).

Each class's images are shuffled by a generator seeded from (run seed, class name) and carved in
a fixed order — test, val, pool, then train — so test, val and pool do not move when ``k`` or
the imbalance factor changes, and the k-shot train split for a smaller ``k`` is a prefix of the
one for a larger ``k``. Seeding by class *name* rather than index keeps a class's split the same
when ``data.classes`` selects a different subset.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field

import numpy as np

from raysynth.config.schema import DataConfig
from raysynth.data.imageset import ImageSet
from raysynth.errors import DataError

SPLIT_NAMES = ("train", "pool", "val", "test")


@dataclass
class Splits:
    """Index arrays (int64) into an :class:`ImageSet`, disjoint, one per split.

    ``groups`` maps ``"many" | "medium" | "few"`` to class ids for a long-tailed train split
    (see :func:`long_tail_groups`) and is ``{}`` for a balanced one.
    """

    train: np.ndarray
    pool: np.ndarray
    val: np.ndarray
    test: np.ndarray
    groups: dict[str, list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in SPLIT_NAMES:
            setattr(self, name, np.asarray(getattr(self, name), dtype=np.int64).reshape(-1))

    def counts(self, labels: np.ndarray, num_classes: int) -> dict[str, list[int]]:
        """Images per class in each split: ``{"train": [n_0, ..., n_{C-1}], ...}``."""
        labels = np.asarray(labels, dtype=np.int64)
        return {
            name: np.bincount(labels[getattr(self, name)], minlength=num_classes).tolist()
            for name in SPLIT_NAMES
        }


def long_tail_counts(num_classes: int, n_max: int, imbalance_factor: float) -> list[int]:
    """Train images per class on the exponential long-tail profile (CIFAR-LT, Cao et al. 2019).

    ``n_c = round(n_max · IF^(−c/(C−1)))``, at least 1: class 0 has ``n_max``, class C−1 has
    ``n_max / IF``. Halves round up (not to even), so counts do not depend on float parity.
    """
    if num_classes < 1 or n_max < 1 or imbalance_factor < 1:
        raise ValueError(
            f"need num_classes >= 1, n_max >= 1 and imbalance_factor >= 1; got {num_classes}, "
            f"{n_max}, {imbalance_factor}"
        )
    if num_classes == 1:
        return [n_max]
    return [
        max(1, math.floor(n_max * imbalance_factor ** (-c / (num_classes - 1)) + 0.5))
        for c in range(num_classes)
    ]


def long_tail_groups(
    counts: list[int], many_threshold: int = 0, few_threshold: int = 0
) -> dict[str, list[int]]:
    """Split classes into many / medium / few shot by their train count.

    With a threshold set (> 0): *many* = count > ``many_threshold``, *few* = count <
    ``few_threshold`` (ImageNet-LT uses 100 and 20). The auto rule (threshold 0): rank classes by
    count, descending, ties by class id; *many* is the first ``max(1, C // 3)`` and *few* the last
    ``max(1, C // 3)`` — thirds, as the literature reports them. A class that would be both
    (overlapping explicit thresholds, or C < 3) counts as *many*. *Medium* is the rest.
    """
    num = len(counts)
    third = max(1, num // 3)
    ranked = sorted(range(num), key=lambda c: (-counts[c], c))
    many = (
        {c for c in range(num) if counts[c] > many_threshold}
        if many_threshold > 0
        else set(ranked[:third])
    )
    few = (
        {c for c in range(num) if counts[c] < few_threshold}
        if few_threshold > 0
        else set(ranked[num - third :])
    )
    few -= many
    medium = set(range(num)) - many - few
    return {"many": sorted(many), "medium": sorted(medium), "few": sorted(few)}


def train_counts(num_classes: int, cfg: DataConfig) -> list[int]:
    """Train images per class: ``k`` each, or the long-tail profile when imbalance_factor > 1."""
    if cfg.imbalance_factor > 1:
        return long_tail_counts(num_classes, cfg.k, cfg.imbalance_factor)
    return [cfg.k] * num_classes


def make_splits(data: ImageSet, cfg: DataConfig, seed: int) -> Splits:
    """Carve test, val, pool and train per class from a seeded shuffle (see module doc).

    Images of a class beyond what the splits need are left out. A class with too few images is a
    :class:`DataError` that lists every such class with what it has and needs.
    """
    if any(data.split):  # published split lists (data.split_files)
        return listed_splits(data, cfg, seed)
    num = data.num_classes
    train_n = train_counts(num, cfg)
    sizes = (cfg.test_per_class, cfg.val_per_class, cfg.pool_per_class)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in SPLIT_NAMES}
    short = []
    for c, name in enumerate(data.class_names):
        members = np.flatnonzero(data.labels == c)
        need = sum(sizes) + train_n[c]
        if len(members) < need:
            short.append(
                f"class {name!r} has {len(members)} images but the split needs {need} (test "
                f"{sizes[0]} + val {sizes[1]} + pool {sizes[2]} + train {train_n[c]})"
            )
            continue
        rng = np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])
        order = members[rng.permutation(len(members))]
        ends = np.cumsum((0, *sizes, train_n[c]))
        for split, lo, hi in zip(("test", "val", "pool", "train"), ends[:-1], ends[1:]):
            parts[split].append(order[lo:hi])
    if short:
        raise DataError(
            "too few images: "
            + "; ".join(short)
            + ". Lower data.k, data.pool_per_class, data.val_per_class or data.test_per_class, "
            "add images, or leave those classes out with data.classes"
        )
    arrays = {
        split: np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int64)
        for split, chunks in parts.items()
    }
    groups = (
        long_tail_groups(train_n, cfg.many_threshold, cfg.few_threshold)
        if cfg.imbalance_factor > 1
        else {}
    )
    return Splits(**arrays, groups=groups)


# Published split lists (data.split_files) ------------------------------------------------------


def listed_splits(data: ImageSet, cfg: DataConfig, seed: int) -> Splits:
    """Val and test exactly as listed; pool and train from the listed train images of each class,
    shuffled as above: pool the first ``pool_per_class``, train the next ``k`` with
    ``split_files.sample_k`` (few-shot, a prefix for a smaller k) or all the rest. Long-tail groups
    when ``many_threshold`` / ``few_threshold`` are set (ImageNet-LT: 100 / 20)."""
    assigned = np.asarray(data.split)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in SPLIT_NAMES}
    short = []
    for c, name in enumerate(data.class_names):
        mine = data.labels == c
        for split in ("val", "test"):
            parts[split].append(np.flatnonzero(mine & (assigned == split)))
        listed = np.flatnonzero(mine & (assigned == "train"))
        need = cfg.pool_per_class + (cfg.k if cfg.split_files.sample_k else 0)
        if len(listed) < max(need, 1):
            short.append(f"class {name!r} has {len(listed)} listed train images but needs "
                         f"{max(need, 1)}")
            continue
        rng = np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])
        order = listed[rng.permutation(len(listed))]
        end = cfg.pool_per_class + cfg.k if cfg.split_files.sample_k else len(order)
        parts["pool"].append(order[: cfg.pool_per_class])
        parts["train"].append(np.sort(order[cfg.pool_per_class : end]))
    if short:
        raise DataError("too few listed train images: " + "; ".join(short) + ". Lower data.k or "
                        "data.pool_per_class, or leave those classes out with data.classes")
    splits = Splits(**{s: np.concatenate(p) if p else np.zeros(0, np.int64)
                       for s, p in parts.items()})
    if cfg.many_threshold or cfg.few_threshold:
        counts = splits.counts(data.labels, data.num_classes)["train"]
        splits.groups = long_tail_groups(counts, cfg.many_threshold, cfg.few_threshold)
    return splits
