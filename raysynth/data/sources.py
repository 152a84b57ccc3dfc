"""Load a labelled image dataset: bundled digits, an ImageFolder tree or Parquet (DESIGN §1).

Every loader returns an :class:`ImageSet` of PNG bytes already converted to the configured channel
count and size, so later stages never look at the source format again. Unreadable images are
skipped, never fatal and never silent: each is logged on ``raysynth.data`` and listed in
``ImageSet.skipped`` (which the data stage writes to ``real/classes.json``).
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from raysynth import columns as col
from raysynth.config.schema import DataConfig
from raysynth.data.images import GREY_MODES, UnreadableImageError, decode_png, encode_png
from raysynth.errors import DataError

log = logging.getLogger("raysynth.data")

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
_MAX_LOGGED_SKIPS = 20  # beyond this, one summary line (the full list is in ImageSet.skipped)


@dataclass
class ImageSet:
    """A labelled set of images held as PNG bytes.

    ``labels[i]`` indexes ``class_names``; ``sources[i]`` says where image ``i`` came from;
    ``sample_ids[i]`` is its stable id in the run directory (``real-000123``: the index in the
    loaded dataset, so it does not depend on the split). ``channels`` is what every image decodes
    to (1 grey, 3 RGB).
    """

    images: list[bytes]
    labels: np.ndarray
    class_names: list[str]
    sources: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    channels: int = 3
    sample_ids: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if not self.sample_ids:
            self.sample_ids = [real_sample_id(i) for i in range(len(self.images))]
        sizes = {len(self.images), len(self.labels), len(self.sources), len(self.sample_ids)}
        if len(sizes) != 1:
            raise ValueError(
                f"ImageSet fields differ in length: images {len(self.images)}, labels "
                f"{len(self.labels)}, sources {len(self.sources)}, sample_ids {len(self.sample_ids)}"
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
        )


def real_sample_id(index: int) -> str:
    """The ``sample_id`` of the real image at ``index`` of the loaded dataset."""
    return f"real-{index:06d}"


def load_dataset(cfg: DataConfig) -> ImageSet:
    """Load the dataset ``cfg.source`` names, restricted to ``cfg.classes`` when given."""
    if cfg.source == "digits":
        data = _load_digits(cfg)
    elif cfg.source == "imagefolder":
        data = _load_imagefolder(cfg)
    elif cfg.source == "parquet":
        data = _load_parquet(cfg)
    else:  # DataConfig validates the choice; this guards a config built around it
        raise DataError(f"data.source={cfg.source!r}; choose digits, imagefolder or parquet")
    _check_no_empty_class(data)
    return data


# 1. bundled digits ----------------------------------------------------------------------------


def _load_digits(cfg: DataConfig) -> ImageSet:
    """scikit-learn's bundled 8×8 digits (values 0–16, scaled to 0–255 with rounding)."""
    from sklearn.datasets import load_digits  # imported here: sklearn is slow to import

    bunch = load_digits()
    pixels = np.rint(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    names = [str(i) for i in range(10)]
    keep = select_classes(names, cfg.classes)
    mapping = {names.index(n): new for new, n in enumerate(keep)}
    rows = [i for i, y in enumerate(bunch.target) if int(y) in mapping]
    channels = cfg.channels or 1
    images = [encode_png(pixels[i]) for i in rows]
    if channels != 1 or cfg.image_size not in (0, 8):
        images = [_reencode(png, channels, cfg.image_size) for png in images]
    return ImageSet(
        images=images,
        labels=np.array([mapping[int(bunch.target[i])] for i in rows], dtype=np.int64),
        class_names=keep,
        sources=[f"digits:{i}" for i in rows],
        channels=channels,
    )


# 2. ImageFolder -------------------------------------------------------------------------------


def _load_imagefolder(cfg: DataConfig) -> ImageSet:
    """``root/<class>/**/<image>``: class = sub-folder name (sorted), files by extension."""
    root = Path(str(cfg.path)).expanduser().absolute()
    if not root.exists():
        raise DataError(f"data.path {root} does not exist; point it at a folder of class folders")
    if not root.is_dir():
        raise DataError(f"data.path {root} is a file; data.source=imagefolder needs a folder")
    folders = {p.name: p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    if not folders:
        raise DataError(
            f"data.path {root} has no class sub-folders; ImageFolder expects one folder per "
            f"class:\n  {root}/\n    cat/  001.jpg 002.png ...\n    dog/  003.jpg ...\n"
            "or use data.source=parquet for a table of images"
        )
    names = select_classes(sorted(folders), cfg.classes)
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(names):
        found = _image_files(folders[name])
        files += found
        labels += [label] * len(found)
    channels = cfg.channels or 3
    pngs, skipped = convert_images(
        [str(f) for f in files], lambda i: files[i].read_bytes(), channels, cfg.image_size
    )
    keep = [i for i, png in enumerate(pngs) if png is not None]
    log_skipped(skipped, len(files))
    data = ImageSet(
        images=[png for png in pngs if png is not None],
        labels=np.array([labels[i] for i in keep], dtype=np.int64),
        class_names=names,
        sources=[str(files[i]) for i in keep],
        skipped=skipped,
        channels=channels,
    )
    _check_no_empty_class(data, folders={n: folders[n] for n in names})
    return data


def _image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive, by extension, hidden files left out), sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fname in filenames:
            if not fname.startswith(".") and Path(fname).suffix.lower() in IMAGE_EXTENSIONS:
                out.append(Path(dirpath) / fname)
    return sorted(out)


# 3. Parquet (DESIGN §1 schema) ---------------------------------------------------------------


class _Row(NamedTuple):
    source: str  # "<file>:<row>"
    image: bytes | None
    label: int | None
    name: str | None


def _load_parquet(cfg: DataConfig) -> ImageSet:
    """A Parquet file or folder with ``image`` (PNG bytes) and ``label`` and/or ``class_name``.

    Classes are ordered by ``label`` when there is one (named by ``class_name``, else by the
    label as a string), else by name. ``image`` may also be a Hugging Face style struct with a
    ``bytes`` field. Channels default to 1 when every image is grey, else 3.
    """
    from raysynth.data.store import parquet_files  # store imports this module for ImageSet

    fs, files = parquet_files(str(cfg.path))
    rows: list[_Row] = []
    has_names = False
    for f in files:
        present = pq.read_schema(f, filesystem=fs).names
        if col.IMAGE not in present or not {col.LABEL, col.CLASS_NAME} & set(present):
            raise DataError(
                f"{f} has columns {', '.join(present)}; data.source=parquet needs {col.IMAGE!r} "
                f"(PNG bytes) and {col.LABEL!r} (int) and/or {col.CLASS_NAME!r} (string)"
            )
        wanted = [c for c in (col.IMAGE, col.LABEL, col.CLASS_NAME) if c in present]
        table = pq.read_table(f, columns=wanted, filesystem=fs)
        n = table.num_rows
        has_names |= col.CLASS_NAME in present
        images = _image_column(table.column(col.IMAGE), f)
        labels = _label_column(table.column(col.LABEL), f) if col.LABEL in present else [None] * n
        names = (
            table.column(col.CLASS_NAME).to_pylist() if col.CLASS_NAME in present else [None] * n
        )
        rows += [_Row(f"{f}:{i}", images[i], labels[i], names[i]) for i in range(n)]
    return _rows_to_set(cfg, rows, has_names)


def _image_column(column: pa.ChunkedArray, file: str) -> list[bytes | None]:
    if pa.types.is_struct(column.type) and column.type.get_field_index("bytes") >= 0:
        column = column.combine_chunks().field("bytes")
    if not (pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type)):
        raise DataError(f"{file}: column {col.IMAGE!r} must hold PNG bytes, not {column.type}")
    return column.to_pylist()


def _label_column(column: pa.ChunkedArray, file: str) -> list[int | None]:
    if not pa.types.is_integer(column.type):
        raise DataError(f"{file}: column {col.LABEL!r} must hold integers, not {column.type}")
    return column.to_pylist()


def _rows_to_set(cfg: DataConfig, rows: list[_Row], has_names: bool) -> ImageSet:
    """Resolve class names and order, select classes, skip bad rows, convert the rest."""
    skipped: list[tuple[str, str]] = []
    kept: list[tuple[_Row, str]] = []  # (row, class name)
    label_of: dict[str, int] = {}
    name_of: dict[int, str] = {}
    for row in rows:
        key = row.name if has_names else (None if row.label is None else str(row.label))
        if key is None:
            skipped.append((row.source, f"no {col.CLASS_NAME if has_names else col.LABEL} (null)"))
            continue
        if row.image is None:
            skipped.append((row.source, f"no {col.IMAGE} bytes (null)"))
            continue
        if row.label is not None:
            _check_label_name(row, key, label_of, name_of)
        kept.append((row, key))
    order = sorted({k for _, k in kept}, key=lambda n: (n not in label_of, label_of.get(n, 0), n))
    names = select_classes(order, cfg.classes)
    index = {n: c for c, n in enumerate(names)}
    kept = [(row, k) for row, k in kept if k in index]
    blobs = [row.image or b"" for row, _ in kept]
    channels = cfg.channels or _auto_channels(blobs)
    pngs, bad = convert_images(
        [r.source for r, _ in kept], blobs.__getitem__, channels, cfg.image_size
    )
    good = [j for j, png in enumerate(pngs) if png is not None]
    log_skipped(skipped + bad, len(rows))
    return ImageSet(
        images=[png for png in pngs if png is not None],
        labels=np.array([index[kept[j][1]] for j in good], dtype=np.int64),
        class_names=names,
        sources=[kept[j][0].source for j in good],
        skipped=skipped + bad,
        channels=channels,
    )


def _check_label_name(
    row: _Row, key: str, label_of: dict[str, int], name_of: dict[int, str]
) -> None:
    """Each class name has exactly one label and each label one name, across all files."""
    label, name = label_of.setdefault(key, row.label), name_of.setdefault(row.label, key)
    if label != row.label or name != key:
        clash = (
            f"{key!r} has label {label}" if label != row.label else f"label {row.label} is {name!r}"
        )
        raise DataError(
            f"{row.source}: {col.CLASS_NAME} {key!r} with {col.LABEL} {row.label}, but an "
            f"earlier row says {clash}; each class name needs exactly one label"
        )


def _auto_channels(blobs: Sequence[bytes]) -> int:
    """1 if every readable image is grey (judged from its header alone), else 3."""
    for blob in blobs:
        try:
            mode = Image.open(io.BytesIO(blob)).mode
        except Exception:  # unreadable: convert_images skips and reports it
            continue
        if not (mode in GREY_MODES or mode.startswith("I;16")):
            return 3
    return 1


# 4. unlabeled images (AiR pseudo-labelling, METHODS §4) -------------------------------------


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
    ``skipped`` as ``(source, reason)``, as :func:`load_dataset` does.
    """
    text = str(path)
    local = Path(text).expanduser()
    if "://" not in text and local.is_dir() and not any(local.rglob("*.parquet")):
        return _unlabeled_folder(local.absolute(), channels or 3, image_size)
    if "://" not in text and local.is_file() and local.suffix.lower() in IMAGE_EXTENSIONS:
        raise DataError(f"{local} is one image; give the folder that holds the unlabeled images")
    return _unlabeled_parquet(text, channels, image_size)


def _unlabeled_folder(root: Path, channels: int, size: int) -> UnlabeledSet:
    files = _image_files(root)
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
    from raysynth.data.store import parquet_files  # store imports this module for ImageSet

    fs, files = parquet_files(path)
    rows: list[_Row] = []
    has_labels = has_names = True
    for f in files:
        present = pq.read_schema(f, filesystem=fs).names
        if col.IMAGE not in present:
            raise DataError(
                f"{f} has columns {', '.join(present)}; unlabeled Parquet needs {col.IMAGE!r} "
                "(PNG bytes)"
            )
        wanted = [c for c in (col.IMAGE, col.LABEL, col.CLASS_NAME) if c in present]
        table = pq.read_table(f, columns=wanted, filesystem=fs)
        n = table.num_rows
        has_labels &= col.LABEL in present
        has_names &= col.CLASS_NAME in present
        images = _image_column(table.column(col.IMAGE), f)
        labels = _label_column(table.column(col.LABEL), f) if col.LABEL in present else [None] * n
        names = (
            table.column(col.CLASS_NAME).to_pylist() if col.CLASS_NAME in present else [None] * n
        )
        rows += [_Row(f"{f}:{i}", images[i], labels[i], names[i]) for i in range(n)]
    null = [(r.source, f"no {col.IMAGE} bytes (null)") for r in rows if r.image is None]
    rows = [r for r in rows if r.image is not None]
    channels = channels or _auto_channels([r.image or b"" for r in rows])
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


# 5. shared helpers ----------------------------------------------------------------------------


def select_classes(available: Sequence[str], requested: Sequence[str]) -> list[str]:
    """``requested`` (in its order) if every name is available; all of ``available`` if empty."""
    if not requested:
        return list(available)
    missing = [n for n in requested if n not in available]
    if missing:
        raise DataError(
            f"data.classes names {', '.join(map(repr, missing))}, not in the data; available "
            f"classes: {', '.join(map(repr, available))}"
        )
    dupes = sorted({n for n in requested if list(requested).count(n) > 1})
    if dupes:
        raise DataError(f"data.classes lists {', '.join(map(repr, dupes))} more than once")
    return list(requested)


def convert_images(
    sources: Sequence[str],
    read: Callable[[int], bytes],
    channels: int,
    size: int,
) -> tuple[list[bytes | None], list[tuple[str, str]]]:
    """Decode, convert and re-encode every image to PNG; unreadable ones become ``None``.

    ``read(i)`` returns the raw bytes of image ``i``. Decoding runs on a thread pool (PIL releases
    the GIL while decoding, resizing and encoding). Returns the PNGs (``None`` where skipped) and
    ``(source, reason)`` for each skip (the caller reports them with :func:`log_skipped`).
    """

    def one(i: int) -> bytes | str:
        try:
            return _reencode(read(i), channels, size, name=sources[i])
        except UnreadableImageError as e:
            return f"not a readable image: {e.reason}"
        except OSError as e:  # a file that vanished or cannot be read
            return f"cannot read the file: {e}"

    workers = min(32, os.cpu_count() or 1)
    if len(sources) < 64:
        results = [one(i) for i in range(len(sources))]
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(one, range(len(sources)), chunksize=16))
    pngs = [res if isinstance(res, bytes) else None for res in results]
    skipped = [(src, res) for src, res in zip(sources, results) if isinstance(res, str)]
    return pngs, skipped


def log_skipped(skipped: Sequence[tuple[str, str]], total: int) -> None:
    """Warn on ``raysynth.data`` about each skipped image (the first 20) and their number."""
    for source, reason in skipped[:_MAX_LOGGED_SKIPS]:
        log.warning("skipped %s: %s", source, reason)
    if skipped:
        more = len(skipped) - _MAX_LOGGED_SKIPS
        log.warning(
            "skipped %d of %d images%s; the list is written to real/classes.json",
            len(skipped),
            total,
            f" ({more} not shown above)" if more > 0 else "",
        )


def _reencode(data: bytes, channels: int, size: int, name: str = "image data") -> bytes:
    return encode_png(decode_png(data, channels, size, name=name))


def _check_no_empty_class(data: ImageSet, folders: dict[str, Path] | None = None) -> None:
    """A class with no readable image cannot be split: say which and what to do."""
    counts = np.bincount(data.labels, minlength=data.num_classes)
    empty = [n for n, c in zip(data.class_names, counts) if c == 0]
    if not empty:
        return
    if folders is not None:
        where = ", ".join(str(folders[n]) for n in empty)
        raise DataError(
            f"class folder(s) {where} hold no readable image (files skipped: "
            f"{len(data.skipped)}); add images there, or remove the folder, or leave the class "
            "out with data.classes"
        )
    raise DataError(
        f"class(es) {', '.join(map(repr, empty))} have no readable image in {col.IMAGE!r}; "
        "fix those rows or leave the class out with data.classes"
    )
