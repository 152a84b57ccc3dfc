"""Load an unlabeled image set (AiR pseudo-labelling, METHODS §4): :class:`UnlabeledSet` from a
folder of images (sub-folder names are *not* labels) or a Parquet table.

Images are converted as the labelled loaders do (:mod:`raysynth.data.convert`); unreadable ones
are skipped, logged on ``raysynth.data`` and listed in ``UnlabeledSet.skipped``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from raysynth import columns as col
from raysynth.data.convert import auto_channels, convert_images, log_skipped
from raysynth.data.image_rows import read_image_rows
from raysynth.data.imagefiles import IMAGE_EXTENSIONS, image_files
from raysynth.errors import DataError

UNLABELED_PREFIX = "unlabeled"


@dataclass
class UnlabeledSet:
    """Images with no labels to learn from, held as PNG bytes (AiR's unlabeled set ``X_U``).

    ``true_labels`` / ``true_names`` are whatever a Parquet source carried (``label`` / ``class_name``;
    None when absent, ``-1`` / None in a null cell): they are kept only to measure pseudo-label
    accuracy, never to train. ``sample_ids[i]`` is ``unlabeled-000123`` (index among the kept rows).
    """

    images: list[bytes]
    sources: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    channels: int = 3
    sample_ids: list[str] = field(default_factory=list)
    true_labels: np.ndarray | None = None
    true_names: list[str | None] | None = None

    def __post_init__(self) -> None:
        if not self.sample_ids:
            self.sample_ids = [f"{UNLABELED_PREFIX}-{i:06d}" for i in range(len(self.images))]
        if self.true_labels is not None:
            self.true_labels = np.asarray(self.true_labels, dtype=np.int64).reshape(-1)
        sizes = {len(self.images), len(self.sources), len(self.sample_ids)}
        sizes |= {len(x) for x in (self.true_labels, self.true_names) if x is not None}
        if len(sizes) != 1:
            raise ValueError(f"UnlabeledSet fields differ in length: {sorted(sizes)}")

    def __len__(self) -> int:
        return len(self.images)


def load_unlabeled(path: str | Path, channels: int = 0, image_size: int = 0) -> UnlabeledSet:
    """Load unlabeled images from a folder (any depth; sub-folder names are *not* labels) or from
    Parquet (DESIGN §1 schema: ``image`` PNG bytes; ``label`` / ``class_name`` optional, kept as
    true labels for measuring only).

    ``channels`` 0 keeps RGB for a folder and picks grey/RGB from a Parquet table's images;
    ``image_size`` 0 keeps each image's size. Unreadable images are skipped, logged and listed in
    ``skipped`` as ``(source, reason)``, as :func:`~raysynth.data.sources.load_dataset` does.
    """
    text = str(path)
    local = Path(text).expanduser()
    if "://" not in text and local.is_dir() and not any(local.rglob("*.parquet")):
        return _unlabeled_folder(local.absolute(), channels or 3, image_size)
    if "://" not in text and local.is_file() and local.suffix.lower() in IMAGE_EXTENSIONS:
        raise DataError(f"{local} is one image; give the folder that holds the unlabeled images")
    return _unlabeled_parquet(text, channels, image_size)


def _unlabeled_folder(root: Path, channels: int, size: int) -> UnlabeledSet:
    files = image_files(root)
    if not files:
        raise DataError(
            f"{root} holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}); give a folder "
            "of images (sub-folders are searched) or a Parquet table with an 'image' column"
        )
    pngs, skipped = convert_images(
        [str(f) for f in files], lambda i: files[i].read_bytes(), channels, size
    )
    log_skipped(skipped, len(files))
    keep = [i for i, png in enumerate(pngs) if png is not None]
    return UnlabeledSet(
        images=[pngs[i] for i in keep],
        sources=[str(files[i]) for i in keep],
        skipped=skipped,
        channels=channels,
    )


def _unlabeled_parquet(path: str, channels: int, size: int) -> UnlabeledSet:
    needs = f"unlabeled Parquet needs {col.IMAGE!r} (PNG bytes)"
    rows, columns = read_image_rows(path, lambda present: col.IMAGE in present, needs)
    has_labels = all(col.LABEL in c for c in columns)
    has_names = all(col.CLASS_NAME in c for c in columns)
    null = [(r.source, f"no {col.IMAGE} bytes (null)") for r in rows if r.image is None]
    rows = [r for r in rows if r.image is not None]
    channels = channels or auto_channels([r.image or b"" for r in rows])
    pngs, bad = convert_images([r.source for r in rows], lambda i: rows[i].image, channels, size)
    log_skipped(null + bad, len(rows) + len(null))
    kept = [rows[i] for i, png in enumerate(pngs) if png is not None]
    return UnlabeledSet(
        images=[png for png in pngs if png is not None],
        sources=[r.source for r in kept],
        skipped=null + bad,
        channels=channels,
        true_labels=(
            np.array([-1 if r.label is None else r.label for r in kept]) if has_labels else None
        ),
        true_names=[r.name for r in kept] if has_names else None,
    )
