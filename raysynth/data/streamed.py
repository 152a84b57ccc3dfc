"""The data stage for ImageFolder trees and Parquet tables of any size: the driver lists the
images and carves the splits from labels and paths; Ray Data tasks read, check, convert and write
the images, so the driver never decodes or holds one (DESIGN §5).

1. :func:`~raysynth.data.listing.list_source`: files / Parquet rows with their labels (metadata).
2. ``CheckImages`` on an actor pool: null, unreadable (skipped, counted and named as the
   in-memory loaders do) and grey (Parquet's automatic channel count) for every image.
3. :func:`~raysynth.data.listing.resolve` and ``make_splits``: the same rows, classes, ids and
   splits — same seeds, same images, same order — as ``load_dataset`` + ``make_splits``.
4. ``WriteRealParts``: each split's rows converted and written as parts to ``real/_parts/``;
   ``MergeRealSplits``: the parts of each split appended in order to ``real/<split>.parquet``;
   then ``classes.json`` (last: its presence means the splits are complete) and the parts go.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from raysynth import columns as col
from raysynth import ray_data
from raysynth.config.schema import DataConfig, Resources
from raysynth.data.listing import Checked, Listing, Pending, list_source, resolve
from raysynth.data.real_tasks import (
    DECODE,
    FILE,
    POS,
    ROW,
    CheckImages,
    MergeRealSplits,
    WriteRealParts,
)
from raysynth.data.splits import SPLIT_NAMES, Splits, make_splits
from raysynth.data.store import CLASSES_FILE, ROW_GROUP_SIZE, classes_meta, write_json_atomic
from raysynth.errors import DataError
from raysynth.files import remove_tree
from raysynth.rundir import RunDir
from raysynth.storage import is_remote

# Local files (the source or the run directory) are read and written on the driver's node, where
# they are; an object store's from any node.
CHECK_ROWS = 256  # images per CheckImages call (a block): small enough to spread a small set


def stream_real(run: RunDir, cfg: DataConfig, seed: int) -> tuple[Listing, Splits]:
    """List, check, split and write ``real/`` of ``cfg``'s ImageFolder or Parquet source."""
    pending = list_source(cfg)
    listing = resolve(cfg, pending, check_images(pending))
    splits = make_splits(listing, cfg, seed)
    write_splits(run, listing, splits)
    return listing, splits


def _pool(blocks: int, pinned: bool) -> Resources:
    """Up to one 1-CPU actor per block, as many as the cluster (or, ``pinned``, the driver's
    node) has CPUs."""
    cpus = ray_data.driver_node_cpus() if pinned else ray_data.cluster_resources().get("CPU", 1)
    return Resources(batch_size=1, min_actors=1, max_actors=max(1, min(blocks, int(cpus))))


def _local(fs: pafs.FileSystem) -> bool:
    return isinstance(fs, pafs.LocalFileSystem)


def _blocks(table: pa.Table, rows: int) -> list[pa.Table]:
    return [table.slice(i, rows) for i in range(0, table.num_rows, rows)]


def check_images(p: Pending) -> Checked:
    """What ``CheckImages`` finds of every listed image, gathered by position (metadata only)."""
    n = len(p)
    checked = Checked(np.zeros(n, bool), [""] * n, np.full(n, -1, np.int8))
    if not n:
        return checked
    table = pa.table({POS: np.arange(n, dtype=np.int64), FILE: p.files, ROW: p.rows,
                      DECODE: p.decode, col.SOURCE: p.sources})
    blocks = _blocks(table, CHECK_ROWS)
    pinned = _local(p.fs)
    ds = ray_data.map_pool(ray_data.from_tables(blocks), CheckImages, _pool(len(blocks), pinned),
                           {"fs": p.fs}, batch_format="pyarrow", batch_size=None,
                           on_driver_node=pinned)
    seen = 0
    for block in ray_data.iter_numpy(ds):
        pos = block[POS]
        checked.null[pos] = block["null"]
        checked.grey[pos] = block["grey"]
        for i, reason in zip(pos, block["reason"]):
            checked.reason[int(i)] = str(reason)
        seen += len(pos)
    if seen != n:
        raise DataError(f"the image check saw {seen} of {n} images; run the data stage again")
    return checked


def split_rows(listing: Listing, splits: Splits, split: str) -> pa.Table:
    """The rows of ``split`` in order, as ``WriteRealParts`` reads them (no image)."""
    idx = getattr(splits, split)
    labels = listing.labels[idx]
    return pa.table({
        POS: np.arange(len(idx), dtype=np.int64),
        col.SAMPLE_ID: pa.array([listing.sample_ids[i] for i in idx], pa.string()),
        col.LABEL: pa.array(labels, pa.int64()),
        col.CLASS_NAME: pa.array([listing.class_names[y] for y in labels], pa.string()),
        col.SPLIT: pa.array([split] * len(idx), pa.string()),
        col.SOURCE: pa.array([listing.sources[i] for i in idx], pa.string()),
        col.GROUP: pa.array([listing.group[i] for i in idx], pa.string()),
        FILE: pa.array([listing.files[i] for i in idx], pa.string()),
        ROW: pa.array(listing.rows[idx] if len(idx) else [], pa.int64()),
    })


def write_splits(run: RunDir, listing: Listing, splits: Splits) -> None:
    """``real/<split>.parquet`` for every split, then ``classes.json``; the parts are scratch."""
    parts = run.real_parts
    remove_tree(parts)  # a killed earlier attempt's parts
    want = {s: len(getattr(splits, s)) for s in SPLIT_NAMES}
    blocks = [b for s in SPLIT_NAMES for b in _blocks(split_rows(listing, splits, s),
                                                      ROW_GROUP_SIZE)]
    if blocks:
        kwargs = {"fs": listing.fs, "parts": parts, "channels": listing.channels,
                  "size": listing.size}
        pinned = _local(listing.fs) or not is_remote(parts)
        ds = ray_data.map_pool(ray_data.from_tables(blocks), WriteRealParts,
                               _pool(len(blocks), pinned), kwargs, batch_format="pyarrow",
                               batch_size=None, on_driver_node=pinned)
        written = sum(int(b["rows"].sum()) for b in ray_data.iter_numpy(ds))
        if written != sum(want.values()):
            raise DataError(f"{written} real rows written of {sum(want.values())}; run again")
    jobs = [pa.table({col.SPLIT: [s], "rows": [n]}) for s, n in want.items()]  # a block each
    pinned = not is_remote(parts)
    merge = ray_data.map_pool(ray_data.from_tables(jobs), MergeRealSplits,
                              _pool(len(jobs), pinned), {"parts": parts, "real": run.real},
                              batch_format="pyarrow", batch_size=None, on_driver_node=pinned)
    for _ in ray_data.iter_numpy(merge):
        pass
    write_json_atomic(classes_meta(listing, splits), run.real / CLASSES_FILE)
    remove_tree(parts)
