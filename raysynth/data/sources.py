"""Load a labelled image dataset: bundled digits, an ImageFolder tree or Parquet (DESIGN §1).

Every loader returns an :class:`~raysynth.data.imageset.ImageSet` of PNG bytes already converted
to the configured channel count and size, so later stages never look at the source format again.
Unreadable images are skipped, never fatal and never silent: each is logged on ``raysynth.data``
and listed in ``ImageSet.skipped`` (which the data stage writes to ``real/classes.json``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from raysynth import columns as col
from raysynth.config.schema import DataConfig
from raysynth.data.convert import auto_channels, convert_images, log_skipped, reencode
from raysynth.data.image_rows import ParquetRow, read_image_rows
from raysynth.data.imagefiles import image_files
from raysynth.data.images import encode_png
from raysynth.data.imageset import ImageSet
from raysynth.errors import DataError
from raysynth.storage import AnyPath, as_path


def load_dataset(cfg: DataConfig) -> ImageSet:
    """Load the dataset ``cfg.source`` names, restricted to ``cfg.classes`` when given."""
    if cfg.split_files.format:  # the benchmark's published lists (data/split_files.py)
        from raysynth.data.split_files import listed_class_names, load_listed

        data = load_listed(cfg, select_classes(listed_class_names(cfg), cfg.classes))
    elif cfg.source == "digits":
        data = _load_digits(cfg)
    elif cfg.source == "imagefolder":
        data = _load_imagefolder(cfg)
    elif cfg.source == "parquet":
        data = _load_parquet(cfg)
    elif cfg.source == "generated":
        from raysynth.data.generated import generated_set

        data = generated_set(cfg)
    else:  # DataConfig validates the choice; this guards a config built around it
        raise DataError(f"data.source={cfg.source!r}; choose digits, imagefolder or parquet")
    check_no_empty_class(data)
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
        images = [reencode(png, channels, cfg.image_size) for png in images]
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
    tree = list_folder_tree(cfg)
    files = tree.files
    channels = cfg.channels or 3
    pngs, skipped = convert_images(
        [str(f) for f in files], lambda i: files[i].read_bytes(), channels, cfg.image_size
    )
    keep = [i for i, png in enumerate(pngs) if png is not None]
    log_skipped(skipped, len(files))
    data = ImageSet(
        images=[png for png in pngs if png is not None],
        labels=np.array([tree.labels[i] for i in keep], dtype=np.int64),
        class_names=tree.names,
        sources=[str(files[i]) for i in keep],
        skipped=skipped,
        channels=channels,
        group=[tree.groups[i] for i in keep],
    )
    check_no_empty_class(data, folders=tree.folders)
    return data


class FolderTree(NamedTuple):
    """An ImageFolder tree listed (nothing read): the selected classes, their folders, and each
    image file with its label and group."""

    root: AnyPath
    names: list[str]
    folders: dict[str, AnyPath]
    files: list[AnyPath]
    labels: list[int]
    groups: list[str]


def list_folder_tree(cfg: DataConfig) -> FolderTree:
    """List ``cfg.path`` as ImageFolder (``root/<class>/**/<image>``) without reading an image."""
    root = as_path(str(cfg.path))  # a local folder or a URI (s3://…) read through pyarrow
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
    files: list[AnyPath] = []
    labels: list[int] = []
    groups: list[str] = []
    for label, name in enumerate(names):
        found = image_files(folders[name])
        files += found
        labels += [label] * len(found)
        groups += [folder_group(folders[name], f) if cfg.group else "" for f in found]
    return FolderTree(root, names, {n: folders[n] for n in names}, files, labels, groups)


def folder_group(class_folder: Path, file: Path) -> str:
    """``<class>/<context>/…/image``: the context folder ("" for an image directly in the class)."""
    parts = file.relative_to(class_folder).parts
    return parts[0] if len(parts) > 1 else ""


# 3. Parquet (DESIGN §1 schema) ---------------------------------------------------------------


def _load_parquet(cfg: DataConfig) -> ImageSet:
    """A Parquet file or folder with ``image`` (PNG bytes) and ``label`` and/or ``class_name``.

    Classes are ordered by ``label`` when there is one (named by ``class_name``, else by the
    label as a string), else by name. ``image`` may also be a Hugging Face style struct with a
    ``bytes`` field. Channels default to 1 when every image is grey, else 3.
    """
    rows, columns = read_image_rows(
        str(cfg.path),
        lambda present: col.IMAGE in present and bool({col.LABEL, col.CLASS_NAME} & present),
        f"data.source=parquet needs {col.IMAGE!r} (PNG bytes) and {col.LABEL!r} (int) and/or "
        f"{col.CLASS_NAME!r} (string)",
    )
    has_names = any(col.CLASS_NAME in c for c in columns)
    return _rows_to_set(cfg, rows, has_names)


def _rows_to_set(cfg: DataConfig, rows: list[ParquetRow], has_names: bool) -> ImageSet:
    """Resolve class names and order, select classes, skip bad rows, convert the rest."""
    pick = pick_rows(cfg, rows, has_names)
    kept = pick.kept
    blobs = [row.image or b"" for row, _ in kept]
    channels = cfg.channels or auto_channels(blobs)
    pngs, bad = convert_images(
        [r.source for r, _ in kept], blobs.__getitem__, channels, cfg.image_size
    )
    good = [j for j, png in enumerate(pngs) if png is not None]
    log_skipped(pick.skipped + bad, len(rows))
    return ImageSet(
        images=[png for png in pngs if png is not None],
        labels=np.array([pick.index[kept[j][1]] for j in good], dtype=np.int64),
        class_names=pick.names,
        sources=[kept[j][0].source for j in good],
        skipped=pick.skipped + bad,
        channels=channels,
    )


class RowPick(NamedTuple):
    """Parquet rows resolved to classes: rows skipped for a null class or image (``(source,
    reason)``), the kept ``(row, class name)`` of the selected classes in row order, the class
    names in label order and each name's label."""

    skipped: list[tuple[str, str]]
    kept: list[tuple[ParquetRow, str]]
    names: list[str]
    index: dict[str, int]


def pick_rows(cfg: DataConfig, rows: Sequence[ParquetRow], has_names: bool) -> RowPick:
    """Class order (by ``label`` when there is one, else by name), the selected classes and the
    rows they keep. Reads only ``image is None`` of each row, never its bytes."""
    skipped: list[tuple[str, str]] = []
    kept: list[tuple[ParquetRow, str]] = []  # (row, class name)
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
    return RowPick(skipped, [(row, k) for row, k in kept if k in index], names, index)


def _check_label_name(
    row: ParquetRow, key: str, label_of: dict[str, int], name_of: dict[int, str]
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


# 4. shared by the loaders ---------------------------------------------------------------------


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


def check_no_empty_class(data: Any, folders: dict[str, AnyPath] | None = None) -> None:
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
