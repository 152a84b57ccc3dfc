"""The real dataset as metadata only: which images there are (files, or rows of Parquet files),
their labels, sources and groups — listed on the driver without reading an image's bytes.

The streamed data stage (``data/streamed.py``) lists a source here (:func:`list_source`), has
Ray Data tasks look at every image once (``real_tasks.CheckImages``: null, unreadable, grey),
and resolves the result here (:func:`resolve`) with the same rules the in-memory loaders of
``sources.py`` apply, so the :class:`Listing` has the same rows, in the same order, as the
:class:`~raysynth.data.imageset.ImageSet` they would build, and ``make_splits`` carves the same
splits from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raysynth import columns as col
from raysynth.config.schema import DataConfig
from raysynth.data.convert import log_skipped
from raysynth.data.image_rows import ParquetRow
from raysynth.data.imageset import real_sample_id
from raysynth.data.parquet import require_parquet
from raysynth.data.sources import check_no_empty_class, list_folder_tree, pick_rows
from raysynth.errors import DataError
from raysynth.storage import AnyPath, fs_path

WHOLE_FILE = -1  # ``rows`` value of an image that is a whole file (ImageFolder)


@dataclass
class Pending:
    """A source listed but not yet looked at: every candidate image as ``(files[i], rows[i])``
    on ``fs`` (``rows[i]`` the row in a Parquet file, or :data:`WHOLE_FILE`), named
    ``sources[i]``; ``decode[i]`` whether its class can be selected (only those are decoded).
    ``meta`` holds the Parquet rows' labels and names (image None: not read yet)."""

    kind: str  # imagefolder | parquet
    fs: pafs.FileSystem
    files: list[str]
    rows: np.ndarray
    sources: list[str]
    decode: np.ndarray
    meta: list[ParquetRow] = field(default_factory=list)
    has_names: bool = False
    folders: dict[str, AnyPath] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.files)


@dataclass
class Checked:
    """What the tasks found of each candidate image: ``null`` (a Parquet null), ``reason`` ("" when
    readable) and ``grey`` (1 grey, 0 colour, -1 header unreadable)."""

    null: np.ndarray
    reason: list[str]
    grey: np.ndarray


@dataclass
class Listing:
    """The kept images of the real dataset, without their bytes: what ``make_splits`` reads of an
    ImageSet (``labels``, ``class_names``, ``split``) plus where each image is read from."""

    class_names: list[str]
    labels: np.ndarray
    sources: list[str]
    group: list[str]
    files: list[str]
    rows: np.ndarray
    fs: pafs.FileSystem
    channels: int
    size: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    sample_ids: list[str] = field(default_factory=list)
    split: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        self.sample_ids = self.sample_ids or [real_sample_id(i) for i in range(len(self.labels))]
        self.split = self.split or [""] * len(self.labels)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def streams(cfg: DataConfig) -> bool:
    """Whether the data stage lists ``cfg``'s source and writes it by Ray Data tasks (ImageFolder
    and Parquet; the bundled digits, generated data and published split lists load in memory)."""
    return cfg.source in ("imagefolder", "parquet") and not cfg.split_files.format


def list_source(cfg: DataConfig) -> Pending:
    """List ``cfg.path`` (ImageFolder or Parquet) without reading an image."""
    return _list_folder(cfg) if cfg.source == "imagefolder" else _list_parquet(cfg)


def _list_folder(cfg: DataConfig) -> Pending:
    tree = list_folder_tree(cfg)
    fs = fs_path(tree.root)[0]
    n = len(tree.files)
    return Pending("imagefolder", fs, [fs_path(f)[1] for f in tree.files],
                   np.full(n, WHOLE_FILE, np.int64), [str(f) for f in tree.files],
                   np.ones(n, bool), folders=tree.folders, names=tree.names,
                   labels=tree.labels, groups=tree.groups)


def _list_parquet(cfg: DataConfig) -> Pending:
    """Each file's ``label`` / ``class_name`` / ``path`` columns (never ``image``)."""
    fs, found = require_parquet(str(cfg.path))
    meta: list[ParquetRow] = []
    files: list[str] = []
    rows: list[np.ndarray] = []
    has_names = False
    for f in found:
        schema = pq.read_schema(f, filesystem=fs)
        present = set(schema.names)
        if col.IMAGE not in present or not {col.LABEL, col.CLASS_NAME} & present:
            raise DataError(
                f"{f} has columns {', '.join(schema.names)}; data.source=parquet needs "
                f"{col.IMAGE!r} (PNG bytes) and {col.LABEL!r} (int) and/or {col.CLASS_NAME!r} "
                "(string)")
        _check_image_type(schema.field(col.IMAGE).type, f)
        has_names |= col.CLASS_NAME in present
        wanted = [c for c in (col.LABEL, col.CLASS_NAME, col.PATH) if c in present]
        table = pq.read_table(f, columns=wanted, filesystem=fs)
        if col.LABEL in present and not pa.types.is_integer(table.schema.field(col.LABEL).type):
            raise DataError(f"{f}: column {col.LABEL!r} must hold integers, not "
                            f"{table.schema.field(col.LABEL).type}")
        n = table.num_rows
        labels, names, paths = (table.column(c).to_pylist() if c in present else [None] * n
                                for c in (col.LABEL, col.CLASS_NAME, col.PATH))
        meta += [ParquetRow(f"{f}:{i}", b"", labels[i], names[i], paths[i]) for i in range(n)]
        files += [f] * n
        rows.append(np.arange(n, dtype=np.int64))
    keys = [_key(r, has_names) for r in meta]
    decode = np.array([k is not None and (not cfg.classes or k in cfg.classes) for k in keys],
                      dtype=bool)
    return Pending("parquet", fs, files, np.concatenate([np.zeros(0, np.int64), *rows]),
                   [r.source for r in meta], decode, meta=meta,
                   has_names=has_names)


def _key(row: ParquetRow, has_names: bool) -> str | None:
    if has_names:
        return row.name
    return None if row.label is None else str(row.label)


def _check_image_type(kind: pa.DataType, file: str) -> None:
    if pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0:
        kind = kind.field("bytes").type
    if not (pa.types.is_binary(kind) or pa.types.is_large_binary(kind)):
        raise DataError(f"{file}: column {col.IMAGE!r} must hold PNG bytes, not {kind}")


def resolve(cfg: DataConfig, pending: Pending, checked: Checked) -> Listing:
    """The kept images, classes and skips — the same as the in-memory loader of ``cfg.source``
    gives for the same files (skipped images logged, as it logs them)."""
    if pending.kind == "imagefolder":
        return _resolve_folder(cfg, pending, checked)
    return _resolve_parquet(cfg, pending, checked)


def _resolve_folder(cfg: DataConfig, p: Pending, checked: Checked) -> Listing:
    keep = [i for i, r in enumerate(checked.reason) if not r]
    skipped = [(p.sources[i], r) for i, r in enumerate(checked.reason) if r]
    log_skipped(skipped, len(p))
    listing = _listing(p, keep, [p.labels[i] for i in keep], p.names, cfg.channels or 3, cfg,
                       skipped, [p.groups[i] for i in keep])
    check_no_empty_class(listing, folders=p.folders)
    return listing


def _resolve_parquet(cfg: DataConfig, p: Pending, checked: Checked) -> Listing:
    rows = [r._replace(image=None if checked.null[i] else b"") for i, r in enumerate(p.meta)]
    at = {r.source: i for i, r in enumerate(p.meta)}
    pick = pick_rows(cfg, rows, p.has_names)
    kept = [at[row.source] for row, _ in pick.kept]
    grey = checked.grey[kept]
    channels = cfg.channels or (3 if bool((grey == 0).any()) else 1)
    bad = [(p.sources[i], checked.reason[i]) for i in kept if checked.reason[i]]
    good = [i for i in kept if not checked.reason[i]]
    log_skipped(pick.skipped + bad, len(p))
    label = {i: pick.index[k] for i, (_, k) in zip(kept, pick.kept)}
    listing = _listing(p, good, [label[i] for i in good], pick.names, channels, cfg,
                       pick.skipped + bad, [""] * len(good))
    check_no_empty_class(listing)
    return listing


def _listing(p: Pending, keep: list[int], labels: list[int], names: list[str], channels: int,
             cfg: DataConfig, skipped: list[tuple[str, str]], groups: list[str]) -> Listing:
    return Listing(names, np.array(labels, np.int64), [p.sources[i] for i in keep], groups,
                   [p.files[i] for i in keep], p.rows[keep] if keep else np.zeros(0, np.int64),
                   p.fs, channels, cfg.image_size, skipped)


def listed(cfg: DataConfig) -> Listing:
    """``cfg``'s source listed and resolved as if every listed image were readable and not null
    (``--dry-run``: nothing is opened; the data stage's tasks find the unreadable ones, and a
    Parquet source's automatic channel count)."""
    pending = list_source(cfg)
    n = len(pending)
    return resolve(cfg, pending, Checked(np.zeros(n, bool), [""] * n, np.full(n, -1, np.int8)))
