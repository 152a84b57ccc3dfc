"""The real splits in the run directory: ``real/<split>.parquet`` and ``real/classes.json``.

Layout (DESIGN §4)::

    run_dir/real/train.parquet  pool.parquet  val.parquet  test.parquet   (REAL_COLUMNS)
    run_dir/real/classes.json   class names, channels, skipped images, long-tail groups, counts

Every file is written under a hidden temporary name, flushed to disk and then renamed over the
final name (``os.replace`` is atomic), so a killed writer leaves either the old file or the new
one, never half of one; readers (and Ray Data) ignore the hidden names. On an object store
(``raysynth.storage``) each file is one whole-object put.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raysynth import columns as col
from raysynth.data.imageset import ImageSet
from raysynth.data.parquet import require_parquet
from raysynth.data.splits import SPLIT_NAMES, Splits
from raysynth.errors import RunDirError
from raysynth.files import atomic_open
from raysynth.rundir import REAL
from raysynth.storage import AnyPath, as_path, fs_path

REAL_DIR = REAL
CLASSES_FILE = "classes.json"
ROW_GROUP_SIZE = 1024  # rows per Parquet row group: the unit of parallel reads in Ray Data

REAL_SCHEMA = pa.schema(
    [
        pa.field(col.SAMPLE_ID, pa.string(), nullable=False),
        pa.field(col.LABEL, pa.int64(), nullable=False),
        pa.field(col.CLASS_NAME, pa.string(), nullable=False),
        pa.field(col.IMAGE, pa.binary(), nullable=False),
        pa.field(col.SPLIT, pa.string(), nullable=False),
        pa.field(col.SOURCE, pa.string(), nullable=False),
        pa.field(col.GROUP, pa.string(), nullable=False),  # "" when the data has no groups
    ]
)


def real_path(run_dir: str | AnyPath, split: str) -> AnyPath:
    """``run_dir/real/<split>.parquet``."""
    if split not in SPLIT_NAMES:
        raise ValueError(f"split must be one of {', '.join(SPLIT_NAMES)}, got {split!r}")
    return as_path(run_dir) / REAL_DIR / f"{split}.parquet"


def real_exists(run_dir: str | AnyPath) -> bool:
    """Whether the data stage has finished in ``run_dir`` (all splits and classes.json)."""
    real = as_path(run_dir) / REAL_DIR
    return (real / CLASSES_FILE).is_file() and all(
        real_path(run_dir, s).is_file() for s in SPLIT_NAMES
    )


def write_real(run_dir: str | AnyPath, data: ImageSet, splits: Splits) -> AnyPath:
    """Write the four real splits and ``classes.json`` atomically; returns ``run_dir/real``.

    ``classes.json`` is written last, so its presence means the splits are complete.
    """
    out = as_path(run_dir) / REAL_DIR
    out.mkdir(parents=True, exist_ok=True)
    for split in SPLIT_NAMES:
        table = real_table(data, getattr(splits, split), split)
        write_table_atomic(table, real_path(run_dir, split))
    write_json_atomic(classes_meta(data, splits), out / CLASSES_FILE)
    return out


def classes_meta(data: Any, splits: Splits) -> dict[str, Any]:
    """``classes.json`` of ``data`` (an ImageSet, or the streamed stage's ``Listing``)."""
    return {
        "class_names": list(data.class_names),
        "channels": int(data.channels),
        "num_images": len(data),
        "groups": splits.groups,
        "counts": splits.counts(data.labels, data.num_classes),
        "skipped": [[source, reason] for source, reason in data.skipped],
    }


def real_table(data: ImageSet, indices: Sequence[int] | np.ndarray, split: str) -> pa.Table:
    """The rows ``indices`` of ``data`` as a table of :data:`REAL_SCHEMA`."""
    idx = np.asarray(indices, dtype=np.int64)
    labels = data.labels[idx]
    return pa.Table.from_arrays(
        [
            pa.array([data.sample_ids[i] for i in idx], pa.string()),
            pa.array(labels, pa.int64()),
            pa.array([data.class_names[y] for y in labels], pa.string()),
            pa.array([data.images[i] for i in idx], pa.binary()),
            pa.array([split] * len(idx), pa.string()),
            pa.array([data.sources[i] for i in idx], pa.string()),
            pa.array([data.group[i] for i in idx], pa.string()),
        ],
        schema=REAL_SCHEMA,
    )


def read_classes(run_dir: str | AnyPath) -> dict[str, Any]:
    """``real/classes.json`` as a dict (class_names, channels, groups, counts, skipped)."""
    path = as_path(run_dir) / REAL_DIR / CLASSES_FILE
    if not path.is_file():
        raise RunDirError(
            f"{path} is missing: the data stage has not finished in {run_dir}; "
            "run `raysynth run` on it (with --resume to keep what is there)"
        )
    return json.loads(path.read_text())


def read_real(run_dir: str | AnyPath, split: str) -> ImageSet:
    """One split of the real data as an :class:`ImageSet` (ids and sources kept)."""
    meta = read_classes(run_dir)
    table = read_split(run_dir, split)
    return ImageSet(
        images=table.column(col.IMAGE).to_pylist(),
        labels=table.column(col.LABEL).to_numpy().astype(np.int64),
        class_names=list(meta["class_names"]),
        sources=table.column(col.SOURCE).to_pylist(),
        skipped=[(s, r) for s, r in meta.get("skipped", [])],
        channels=int(meta["channels"]),
        sample_ids=table.column(col.SAMPLE_ID).to_pylist(),
        group=table.column(col.GROUP).to_pylist() if col.GROUP in table.column_names else [],
    )


def read_split(
    run_dir: str | AnyPath, split: str, columns: Sequence[str] | None = None
) -> pa.Table:
    """``real/<split>.parquet`` (only ``columns``, e.g. the small ones without ``image``); a
    missing file or column is a :class:`RunDirError` saying what to do."""
    path = real_path(run_dir, split)
    if not path.is_file():
        raise RunDirError(f"{path} is missing; re-run the data stage on {run_dir}")
    fs, where = fs_path(path)
    names = pq.read_schema(where, filesystem=fs).names
    wanted = list(columns or col.REAL_COLUMNS)
    missing = [c for c in wanted if c not in names and c != col.GROUP]
    if missing:
        raise RunDirError(
            f"{path} lacks columns {', '.join(missing)} (has {', '.join(names)}); "
            "it was written by another version; re-run the data stage in a new run directory"
        )
    return pq.read_table(where, columns=[c for c in wanted if c in names], filesystem=fs)


def first_real_image(run_dir: str | AnyPath) -> bytes | None:
    """The bytes of the first stored real image (train split first; None: no image at all),
    read from one row group, never a whole split."""
    for split in SPLIT_NAMES:
        fs, where = fs_path(real_path(run_dir, split))
        with fs.open_input_file(where) as fh:
            pf = pq.ParquetFile(fh)
            if pf.metadata.num_rows:
                batch = next(pf.iter_batches(batch_size=1, columns=[col.IMAGE]))
                return batch.column(0)[0].as_py()
    return None


def read_real_splits(run_dir: str | AnyPath) -> tuple[ImageSet, Splits]:
    """All real rows as one :class:`ImageSet` plus :class:`Splits` indexing into it.

    Rows are ordered train, pool, val, test, so ``splits.train`` is ``0..len(train)-1`` and so on.
    """
    parts = [read_real(run_dir, s) for s in SPLIT_NAMES]
    first = parts[0]
    data = ImageSet(
        images=[img for p in parts for img in p.images],
        labels=np.concatenate([p.labels for p in parts]),
        class_names=first.class_names,
        sources=[s for p in parts for s in p.sources],
        skipped=first.skipped,
        channels=first.channels,
        sample_ids=[i for p in parts for i in p.sample_ids],
        group=[g for p in parts for g in p.group],
    )
    bounds = np.cumsum([0] + [len(p) for p in parts])
    ranges = {
        s: np.arange(bounds[i], bounds[i + 1], dtype=np.int64) for i, s in enumerate(SPLIT_NAMES)
    }
    groups = {k: [int(c) for c in v] for k, v in read_classes(run_dir).get("groups", {}).items()}
    return data, Splits(**ranges, groups=groups)


# Generic Parquet helpers ---------------------------------------------------------------------


def read_table(path: str | AnyPath, columns: Sequence[str] | None = None) -> pa.Table:
    """Read a Parquet file or folder (see :func:`~raysynth.data.parquet.require_parquet`) into one
    table.

    Files whose schemas differ (a column added later) are combined, missing values as nulls.
    """
    fs, files = require_parquet(path)
    tables = [
        pq.read_table(f, columns=list(columns) if columns else None, filesystem=fs) for f in files
    ]
    return pa.concat_tables(tables, promote_options="default")


def write_table_atomic(table: pa.Table, path: str | AnyPath) -> AnyPath:
    """Write ``table`` to ``path`` via a hidden temporary file and ``os.replace``."""
    path = as_path(path)
    with atomic_open(path, "wb") as fh:
        pq.write_table(table, fh, row_group_size=ROW_GROUP_SIZE)
    return path


def write_json_atomic(obj: Any, path: str | AnyPath) -> AnyPath:
    """Write ``obj`` as indented JSON to ``path`` via a temporary file and ``os.replace``."""
    path = as_path(path)
    with atomic_open(path, "w") as fh:
        json.dump(obj, fh, indent=2)
        fh.write("\n")
    return path
