"""The benchmarks' published split lists, read into one row per image: ``path`` (relative to
``data.path``), ``label``, ``group`` (context; "" when the format has none) and ``split``.

Formats (``data.split_files.format``):

- ``path_label``: ImageNet-LT's text files, one ``<relative path> <label>`` per line, one file per
  split (``train`` / ``val`` / ``test``);
- ``flowers102``: Oxford Flowers 102's ``setid.mat`` (``trnid`` / ``valid`` / ``tstid``, 1-based
  image ids) and ``imagelabels.mat`` (``labels``, 1..102); image ``i`` is ``jpg/image_%05d.jpg``;
- ``csv``: a metadata table with a header, as NICO++'s lists are published for sub-population
  shift benchmarks (SubpopBench's ``metadata_nicopp.csv``: ``filename,y,a,split``): a path column
  (``filename`` or ``path``), a label column (``y`` or ``label``), an optional group column (``a``,
  ``group`` or ``context``) and a ``split`` column (``0``/``1``/``2`` or ``train``/``val``/``test``).

Class names come from ``names`` (one per line, line ``i`` names label ``i``) when given, else
are the labels as strings. A listing (the data stage's loaders, or a streamed one) carries these
rows as they are; :func:`assigned_splits` turns the ``split`` of each loaded image into indices.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from raysynth.data.convert import auto_channels, convert_images, log_skipped
from raysynth.data.imageset import ImageSet
from raysynth.errors import DataError

SPLITS = ("train", "val", "test")
_CSV_SPLIT = {"0": "train", "1": "val", "2": "test", "train": "train", "val": "val",
              "valid": "val", "test": "test"}


class ListedImage(NamedTuple):
    """One image of a split list."""

    path: str  # relative to data.path, "/"-separated
    label: int
    group: str  # context ("" when the list has none)
    split: str  # train | val | test


def resolve(root: str | Path, name: str) -> Path:
    """A split file named in the config: absolute, or relative to ``data.path``."""
    p = Path(name).expanduser()
    return p if p.is_absolute() else Path(root).expanduser() / p


def read_split_files(cfg, root: str | Path) -> list[ListedImage]:
    """Every listed image of ``cfg`` (a ``SplitFilesConfig``), in file order."""
    if cfg.format == "path_label":
        rows = []
        for split in SPLITS:
            name = getattr(cfg, split)
            if name:
                rows += read_path_label(resolve(root, name), split)
    elif cfg.format == "flowers102":
        rows = read_flowers102(resolve(root, cfg.setid), resolve(root, cfg.labels))
    elif cfg.format == "csv":
        rows = read_csv(resolve(root, cfg.metadata))
    else:
        raise DataError(f"data.split_files.format={cfg.format!r}; choose path_label, flowers102 "
                        "or csv")
    _check_unique(rows)
    if cfg.group_names:  # integer group ids (SubpopBench's a) → context names
        names = read_names(resolve(root, cfg.group_names))
        bad = sorted({r.group for r in rows if r.group and not (r.group.isdigit()
                                                                and int(r.group) < len(names))})
        if bad:
            raise DataError(f"group ids {', '.join(bad[:5])} have no line in "
                            f"{cfg.group_names}; give one context name per group id")
        rows = [r._replace(group=names[int(r.group)] if r.group else "") for r in rows]
    return rows


def read_path_label(path: Path, split: str) -> list[ListedImage]:
    """ImageNet-LT style: ``<relative path> <int label>`` per line (blank lines skipped)."""
    rows = []
    for n, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise DataError(f"{path}:{n}: expected '<relative path> <integer label>', got {line!r}")
        rows.append(ListedImage(parts[0].strip(), _label(parts[1], path, n), "", split))
    return rows


def read_flowers102(setid: Path, labels: Path) -> list[ListedImage]:
    """Flowers102's official split: ``setid.mat`` ids, ``imagelabels.mat`` labels (0-based here)."""
    ids = _loadmat(setid, ("trnid", "valid", "tstid"))
    lab = _loadmat(labels, ("labels",))["labels"]
    rows = []
    for split, key in zip(SPLITS, ("trnid", "valid", "tstid")):
        for i in ids[key]:
            if not 1 <= i <= len(lab):
                raise DataError(f"{setid}: {key} names image {i}, but {labels} labels images "
                                f"1..{len(lab)}; use the two files of the same release")
            rows.append(ListedImage(f"jpg/image_{i:05d}.jpg", int(lab[i - 1]) - 1, "", split))
    return rows


def read_csv(path: Path) -> list[ListedImage]:
    """A metadata table (NICO++ lists): path, label, optional group, split columns."""
    reader = csv.DictReader(_read_text(path).splitlines())
    fields = set(reader.fieldnames or ())
    path_col, label_col = _pick(fields, ("filename", "path")), _pick(fields, ("y", "label"))
    group_col = _pick(fields, ("a", "group", "context"))
    if not path_col or not label_col or "split" not in fields:
        raise DataError(f"{path} has columns {', '.join(sorted(fields)) or 'none'}; a split list "
                        "needs filename (or path), y (or label), split and optionally a (group)")
    rows = []
    for n, r in enumerate(reader, 2):
        split = _CSV_SPLIT.get(str(r["split"]).strip().lower())
        if split is None:
            raise DataError(f"{path}:{n}: split {r['split']!r}; use 0/1/2 or train/val/test")
        group = str(r[group_col]).strip() if group_col else ""
        rows.append(ListedImage(r[path_col].strip(), _label(r[label_col], path, n), group, split))
    return rows


def read_names(path: Path) -> list[str]:
    """Class names, one per line (line ``i`` names label ``i``)."""
    names = [line.strip() for line in _read_text(path).splitlines() if line.strip()]
    if len(set(names)) != len(names):
        raise DataError(f"{path} names a class twice; give each label its own name")
    return names


def class_names(rows: Sequence[ListedImage], names: Sequence[str] | None) -> list[str]:
    """The name of each label 0..max; labels beyond ``names`` are a :class:`DataError`."""
    top = max((r.label for r in rows), default=-1)
    if not names:
        return [str(i) for i in range(top + 1)]
    if top >= len(names):
        raise DataError(f"the split lists use label {top} but the names file has {len(names)} "
                        "names; give one name per label")
    return list(names)


def _check_unique(rows: Sequence[ListedImage]) -> None:
    seen: dict[str, str] = {}
    for r in rows:
        if r.path in seen:
            raise DataError(f"{r.path} is listed twice ({seen[r.path]} and {r.split}); an image "
                            "belongs to one split")
        seen[r.path] = r.split


def _pick(fields: set[str], options: tuple[str, ...]) -> str:
    return next((o for o in options if o in fields), "")


def _label(text: str, path: Path, line: int) -> int:
    try:
        value = int(str(text).strip())
    except ValueError:
        raise DataError(f"{path}:{line}: label {text!r} is not an integer") from None
    if value < 0:
        raise DataError(f"{path}:{line}: label {value} is negative")
    return value


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise DataError(f"split file {path} does not exist; check data.split_files (relative "
                        "names are read under data.path)")
    return path.read_text(encoding="utf-8")


def _loadmat(path: Path, keys: tuple[str, ...]) -> dict:
    from scipy.io import loadmat

    if not path.is_file():
        raise DataError(f"split file {path} does not exist; check data.split_files")
    mat = loadmat(str(path))
    missing = [k for k in keys if k not in mat]
    if missing:
        raise DataError(f"{path} lacks {', '.join(missing)}; is it Flowers102's "
                        f"{'setid' if 'trnid' in keys else 'imagelabels'}.mat?")
    return {k: [int(v) for v in mat[k].reshape(-1)] for k in keys}


def listed_class_names(cfg) -> list[str]:
    """The class names of ``cfg`` (a ``DataConfig`` with split files), label order."""
    sf = cfg.split_files
    names = read_names(resolve(cfg.path, sf.names)) if sf.names else None
    return class_names(read_split_files(sf, cfg.path), names)


def load_listed(cfg, names: Sequence[str]) -> ImageSet:
    """The listed images of the classes ``names`` (a selection of :func:`listed_class_names`,
    in the new label order), each with its group and assigned split. Images ``data.source``
    lacks or cannot read are skipped and listed in ``ImageSet.skipped``."""
    rows = read_split_files(cfg.split_files, cfg.path)
    every = listed_class_names(cfg)
    index = {n: c for c, n in enumerate(names)}
    rows = [r for r in rows if every[r.label] in index]
    blob = _parquet_blobs(cfg.path, rows) if cfg.source == "parquet" else _file_blobs(cfg.path)
    sources = [r.path for r in rows]
    grabbed = [blob(r.path) for r in rows]
    channels = cfg.channels or (auto_channels([b for b in grabbed if b]) if cfg.source ==
                                "parquet" else 3)
    missing = [(sources[i], "listed but not found under data.path") for i, b in enumerate(grabbed)
               if b is None]
    have = [i for i, b in enumerate(grabbed) if b is not None]
    pngs, bad = convert_images([sources[i] for i in have], lambda j: grabbed[have[j]], channels,
                               cfg.image_size)
    keep = [have[j] for j, png in enumerate(pngs) if png is not None]
    log_skipped(missing + bad, len(rows))
    return ImageSet(
        images=[png for png in pngs if png is not None],
        labels=np.array([index[every[rows[i].label]] for i in keep], dtype=np.int64),
        class_names=list(names),
        sources=[sources[i] for i in keep],
        skipped=missing + bad,
        channels=channels,
        group=[rows[i].group for i in keep],
        split=[rows[i].split for i in keep],
    )


def _file_blobs(root: str | Path):
    base = Path(str(root)).expanduser()

    def read(rel: str) -> bytes | None:
        p = base / rel
        return p.read_bytes() if p.is_file() else None

    return read


def _parquet_blobs(path: str | Path, rows: Sequence[ListedImage]):
    from raysynth import columns as col
    from raysynth.data.image_rows import read_image_rows

    table, _ = read_image_rows(
        str(path), lambda present: col.IMAGE in present,
        f"split files over Parquet need {col.IMAGE!r} and a {col.PATH!r} column (or an image "
        "struct with a path field) to match the listed paths",
    )
    by_path = {r.path: r.image for r in table if r.path}
    if table and not by_path:
        raise DataError(f"{path} has no {col.PATH!r} column and its images carry no path; the "
                        "split files' paths cannot be matched")
    return by_path.get


def describe_splits(cfg) -> list[str]:
    """What the data stage of ``cfg`` (a ``DataConfig``) will read, one line each (``--dry-run``
    prints them before it loads anything)."""
    sf = cfg.split_files
    if not sf.format:
        lines = [f"splits: carved per class from {cfg.path or cfg.source} (seeded): test "
                 f"{cfg.test_per_class}, val {cfg.val_per_class}, pool {cfg.pool_per_class}, "
                 f"train k={cfg.k}" + (f", long tail IF={cfg.imbalance_factor:g}"
                                      if cfg.imbalance_factor > 1 else "")]
    else:
        files = {"path_label": [f"{s}: {resolve(cfg.path, getattr(sf, s))}" for s in SPLITS
                                if getattr(sf, s)],
                 "flowers102": [f"setid: {resolve(cfg.path, sf.setid)}",
                                f"labels: {resolve(cfg.path, sf.labels)}"],
                 "csv": [f"metadata: {resolve(cfg.path, sf.metadata)}"]}[sf.format]
        train = (f"k={cfg.k} per class drawn from the train list" if sf.sample_k
                 else "the whole train list")
        lines = [f"splits: read from {sf.format} split files (val and test as listed; pool "
                 f"{cfg.pool_per_class} per class and train = {train}):"]
        lines += [f"  {f}" for f in files]
        if sf.names:
            lines.append(f"  class names: {resolve(cfg.path, sf.names)}")
    if cfg.group == "folder":
        lines.append("groups: the context folder of each image (<class>/<context>/…)")
    elif sf.format == "csv":
        lines.append("groups: the split list's group column (a / group / context)" + (
            f", named by {resolve(cfg.path, sf.group_names)}" if sf.group_names else ""))
    return lines
