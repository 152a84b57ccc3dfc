"""The labelled image set every data stage passes around: :class:`ImageSet` (PNG bytes, labels,
class names, sources and stable sample ids), with no knowledge of where the images came from."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class ImageSet:
    """A labelled set of images held as PNG bytes.

    ``labels[i]`` indexes ``class_names``; ``sources[i]`` says where image ``i`` came from;
    ``sample_ids[i]`` is its stable id in the run directory (``real-000123``: the index in the
    loaded dataset, so it does not depend on the split). ``channels`` is what every image decodes
    to (1 grey, 3 RGB). ``group[i]`` is the image's group (context, "" when the data has none) and
    ``split[i]`` the split a published list assigns it ("" when raysynth carves the splits); both
    are all "" when not given.
    """

    images: list[bytes]
    labels: np.ndarray
    class_names: list[str]
    sources: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    channels: int = 3
    sample_ids: list[str] = field(default_factory=list)
    group: list[str] = field(default_factory=list)
    split: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if not self.sample_ids:
            self.sample_ids = [real_sample_id(i) for i in range(len(self.images))]
        self.group = list(self.group) or [""] * len(self.images)
        self.split = list(self.split) or [""] * len(self.images)
        sizes = {len(self.images), len(self.labels), len(self.sources), len(self.sample_ids),
                 len(self.group), len(self.split)}
        if len(sizes) != 1:
            raise ValueError(
                f"ImageSet fields differ in length: images {len(self.images)}, labels "
                f"{len(self.labels)}, sources {len(self.sources)}, sample_ids {len(self.sample_ids)}, "
                f"group {len(self.group)}, split {len(self.split)}"
            )
        if len(self.labels) and not 0 <= self.labels.min() <= self.labels.max() < self.num_classes:
            raise ValueError(f"labels must lie in [0, {self.num_classes}) (one per class name)")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subset(self, indices: Sequence[int] | np.ndarray) -> ImageSet:
        """The rows ``indices`` (in that order), keeping classes, channels, ids and skip list."""
        idx = [int(i) for i in indices]
        return ImageSet(
            images=[self.images[i] for i in idx],
            labels=self.labels[idx] if idx else np.zeros(0, dtype=np.int64),
            class_names=list(self.class_names),
            sources=[self.sources[i] for i in idx],
            skipped=list(self.skipped),
            channels=self.channels,
            sample_ids=[self.sample_ids[i] for i in idx],
            group=[self.group[i] for i in idx],
            split=[self.split[i] for i in idx],
        )

    @property
    def group_names(self) -> list[str]:
        """The distinct non-empty groups, sorted ([] when the data has none)."""
        return sorted({g for g in self.group if g})


def real_sample_id(index: int) -> str:
    """The ``sample_id`` of the real image at ``index`` of the loaded dataset."""
    return f"real-{index:06d}"
