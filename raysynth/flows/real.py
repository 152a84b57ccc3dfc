"""What the driver knows of the real splits (:class:`RealData`): labels, sample ids, groups,
class names, channels, image size and per-split counts — read from the small columns of
``real/<split>.parquet`` and ``classes.json``, never the image bytes. A split's images are read
and decoded only where a caller asks for them (:meth:`RealData.arrays`: the few-shot in-memory
paths — UniCon, the pixel generator, the closed loop's measurement); the streamed paths read the
tables themselves (``end_to_end.real_table``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np

from raysynth import columns as col
from raysynth.data import ImageSet, Splits, to_tensor_array
from raysynth.data.images import image_size_of
from raysynth.data.splits import SPLIT_NAMES
from raysynth.data.store import first_real_image, read_classes, read_split
from raysynth.filter.rounds import RealTrain
from raysynth.storage import AnyPath
from raysynth.train.arrays import LabeledArrays

SMALL_COLUMNS = (col.SAMPLE_ID, col.LABEL, col.GROUP)  # not image, class_name, split, source


@dataclass
class RealData:
    """The real splits without their images: every row's label, sample id and group,
    indexed by ``splits`` (rows ordered train, pool, val, test); ``split_images(split)`` reads
    a split's image bytes when asked."""

    class_names: list[str]
    channels: int
    labels: np.ndarray
    sample_ids: list[str]
    group: list[str]
    splits: Splits
    skipped: list[tuple[str, str]]
    split_images: Callable[[str], list[bytes]]  # a split's PNG bytes, read when called
    size: Callable[[], int]  # the images' width (= height), read once when first asked

    @classmethod
    def read(cls, root: AnyPath) -> RealData:
        """The real splits of the run directory ``root`` from ``classes.json`` and the splits'
        small columns (no image read but one PNG header, for the size)."""
        meta = read_classes(root)
        tables = [read_split(root, s, SMALL_COLUMNS) for s in SPLIT_NAMES]
        bounds = np.cumsum([0] + [t.num_rows for t in tables])
        ranges = {s: np.arange(bounds[i], bounds[i + 1], dtype=np.int64)
                  for i, s in enumerate(SPLIT_NAMES)}
        groups = {k: [int(c) for c in v] for k, v in meta.get("groups", {}).items()}

        def column(name: str) -> list:
            return [v for t in tables for v in (t[name].to_pylist() if name in t.column_names
                                                 else [""] * t.num_rows)]

        @cache
        def size() -> int:
            first = first_real_image(root)
            return image_size_of(first)[-1] if first is not None else 0

        return cls(
            list(meta["class_names"]), int(meta["channels"]),
            np.asarray(column(col.LABEL), np.int64), column(col.SAMPLE_ID), column(col.GROUP),
            Splits(**ranges, groups=groups),
            [(s, r) for s, r in meta.get("skipped", [])],
            lambda split: read_split(root, split, [col.IMAGE])[col.IMAGE].to_pylist(), size,
        )

    @classmethod
    def from_images(cls, data: ImageSet, splits: Splits) -> RealData:
        """Real splits held in memory (``splits`` index ``data``)."""

        @cache
        def size() -> int:
            return image_size_of(data.images[0])[-1] if len(data) else 0

        return cls(
            list(data.class_names), data.channels, data.labels, list(data.sample_ids),
            list(data.group), splits, list(data.skipped),
            lambda split: [data.images[i] for i in getattr(splits, split)], size,
        )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_size(self) -> int:
        return self.size()

    @property
    def group_names(self) -> list[str]:
        return sorted({g for g in self.group if g})

    def rows(self, split: str) -> np.ndarray:
        return getattr(self.splits, split)

    def arrays(self, split: str) -> LabeledArrays:
        """A split decoded (here, on the driver: the few-shot in-memory paths)."""
        x = to_tensor_array(self.split_images(split), self.channels)
        return LabeledArrays(x, self.labels[self.rows(split)])

    def counts(self) -> dict[str, list[int]]:
        """Images per split and class."""
        return self.splits.counts(self.labels, self.num_classes)

    def ids_by_class(self, split: str = "train") -> dict[int, list[str]]:
        out: dict[int, list[str]] = {c: [] for c in range(self.num_classes)}
        for i in self.rows(split):
            out[int(self.labels[i])].append(self.sample_ids[i])
        return out

    def train_counts(self) -> list[int]:
        return self.counts()["train"]

    def real_train(self, table: AnyPath) -> RealTrain:
        """What the filter's rounds need of the train split (``table``: its Parquet file)."""
        return RealTrain(
            tuple(self.class_names), self.ids_by_class(), self.channels, self.image_size, table,
            self.group_counts(), tuple(self.group_names),
        )

    def contexts(self, split: str) -> tuple[list[str], list[str]] | None:
        """Each row's group in ``split`` and the class names; None when the data has no groups."""
        groups = [self.group[i] for i in self.rows(split)]
        return (groups, self.class_names) if any(groups) else None

    def group_counts(self) -> dict[int, dict[str, int]]:
        """Train images per class and group (context); {} when the data has no groups."""
        out: dict[int, Counter] = {}
        for i in self.splits.train:
            if self.group[i]:
                out.setdefault(int(self.labels[i]), Counter())[self.group[i]] += 1
        return {c: dict(sorted(n.items())) for c, n in sorted(out.items())}
