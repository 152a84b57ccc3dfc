"""The streamed data stage's work on the images themselves, as Ray Data callable classes (plain
Python: ``data/streamed.py`` runs them through ``raysynth.ray_data.map_pool``). Each reads its
images where they are (a file, or a row of a Parquet file, on any pyarrow filesystem), so image
bytes travel from the source to the run directory without passing through the driver.

- :class:`CheckImages`: whether each image is null, unreadable (the reason) or grey.
- :class:`WriteRealParts`: one split's rows converted to PNGs of the run's channels and size,
  written as one Parquet part per block, named by its first position (so a retried block
  overwrites its own part and the parts sort in split order).
- :class:`MergeRealSplits`: a split's parts, in order, into ``real/<split>.parquet``, one part
  in memory at a time.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from PIL import Image

from raysynth import columns as col
from raysynth.data.convert import reencode
from raysynth.data.image_rows import image_column
from raysynth.data.images import GREY_MODES, UnreadableImageError, decode_png
from raysynth.data.store import REAL_SCHEMA, ROW_GROUP_SIZE
from raysynth.errors import DataError
from raysynth.files import atomic_open
from raysynth.storage import AnyPath

POS, FILE, ROW, DECODE = "pos", "file", "row", "decode"  # the tasks' own input columns


def read_images(fs: pafs.FileSystem, files: Sequence[str], rows: Sequence[int]
                ) -> list[bytes | None | OSError]:
    """The bytes of each image: a whole file (row < 0), or the ``image`` of row ``rows[i]`` of a
    Parquet file (None where it is null; only the row groups holding the rows are read). A file
    that cannot be read comes back as its ``OSError``."""
    out: list[bytes | None | OSError] = [None] * len(files)
    by_file: dict[str, list[int]] = {}
    for i, (f, r) in enumerate(zip(files, rows)):
        if r < 0:
            try:
                with fs.open_input_stream(f) as fh:
                    out[i] = fh.read()
            except OSError as e:
                out[i] = e
        else:
            by_file.setdefault(f, []).append(i)
    for f, idx in by_file.items():
        images = _parquet_images(fs, f, [int(rows[i]) for i in idx])
        for i, image in zip(idx, images):
            out[i] = image
    return out


def _parquet_images(fs: pafs.FileSystem, file: str, rows: list[int]) -> list[bytes | None]:
    pf = pq.ParquetFile(fs.open_input_file(file))
    sizes = [pf.metadata.row_group(g).num_rows for g in range(pf.metadata.num_row_groups)]
    starts = np.cumsum([0, *sizes])
    group_of = np.searchsorted(starts, rows, side="right") - 1
    groups = sorted({int(g) for g in group_of})
    images = image_column(pf.read_row_groups(groups, columns=[col.IMAGE]).column(col.IMAGE), file)
    offset = dict(zip(groups, np.cumsum([0, *[sizes[g] for g in groups]])))
    return [images[int(offset[int(g)] + r - starts[g])] for r, g in zip(rows, group_of)]


class CheckImages:
    """Per row (``pos``, ``file``, ``row``, ``decode``): ``null`` (a Parquet null), ``reason``
    ("" when the image decodes, or was not to be decoded) and ``grey`` (1 when its header says
    grey, 0 colour, -1 unreadable) — the facts the in-memory loaders act on, without the image."""

    def __init__(self, fs: pafs.FileSystem) -> None:
        self.fs = fs

    def __call__(self, batch: pa.Table) -> pa.Table:
        pos = batch[POS].to_numpy()
        blobs = read_images(self.fs, batch[FILE].to_pylist(), batch[ROW].to_numpy())
        decode = batch[DECODE].to_pylist()
        null, reason, grey = [], [], []
        for blob, wanted, source in zip(blobs, decode, batch[col.SOURCE].to_pylist()):
            null.append(blob is None)
            grey.append(_grey(blob) if isinstance(blob, bytes) else -1)
            reason.append(_problem(blob, source) if wanted and blob is not None else "")
        return pa.table({POS: pos, "null": null, "reason": reason,
                         "grey": pa.array(grey, pa.int8())})


def _grey(blob: bytes) -> int:
    try:
        mode = Image.open(io.BytesIO(blob)).mode  # the header only, as auto_channels reads it
    except Exception:
        return -1
    return int(mode in GREY_MODES or mode.startswith("I;16"))


def _problem(blob: bytes | OSError, source: str) -> str:
    """Why an image is skipped ("" when it decodes), worded as ``convert.convert_images``."""
    if isinstance(blob, OSError):
        return f"cannot read the file: {blob}"
    try:
        decode_png(blob, name=source)
    except UnreadableImageError as e:
        return f"not a readable image: {e.reason}"
    return ""


class WriteRealParts:
    """A block of one split's rows (``pos`` and the real table's columns but ``image``, plus
    ``file`` and ``row``) read, converted and written to ``parts/<split>-<first pos>.parquet``;
    returns one row (``part``, ``rows``)."""

    def __init__(self, fs: pafs.FileSystem, parts: AnyPath, channels: int, size: int) -> None:
        self.fs, self.parts, self.channels, self.size = fs, parts, channels, size

    def __call__(self, batch: pa.Table) -> pa.Table:
        sources = batch[col.SOURCE].to_pylist()
        blobs = read_images(self.fs, batch[FILE].to_pylist(), batch[ROW].to_numpy())
        pngs = []
        for blob, source in zip(blobs, sources):
            if not isinstance(blob, bytes):
                raise DataError(f"{source} could be read when the data was listed but not now "
                                f"({blob or 'null'}); did the data change? Run again")
            pngs.append(reencode(blob, self.channels, self.size, name=source))
        table = pa.Table.from_arrays(
            [batch[col.SAMPLE_ID], batch[col.LABEL], batch[col.CLASS_NAME],
             pa.array(pngs, pa.binary()), batch[col.SPLIT], batch[col.SOURCE], batch[col.GROUP]],
            schema=REAL_SCHEMA)
        split, first = batch[col.SPLIT][0].as_py(), int(batch[POS][0].as_py())
        name = f"{split}-{first:010d}.parquet"
        with atomic_open(self.parts / name, "wb") as fh:
            pq.write_table(table, fh, row_group_size=ROW_GROUP_SIZE)
        return pa.table({"part": [name], "rows": [table.num_rows]})


class MergeRealSplits:
    """Per row (``split``, ``rows``): the split's parts, in name order, appended one at a time to
    ``real/<split>.parquet`` (written atomically); a row count other than ``rows`` is an error
    (a part missing or doubled) and the file is not written."""

    def __init__(self, parts: AnyPath, real: AnyPath) -> None:
        self.parts, self.real = parts, real

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = []
        for split, want in zip(batch[col.SPLIT].to_pylist(), batch["rows"].to_pylist()):
            names = sorted(p.name for p in self.parts.glob(f"{split}-*.parquet"))
            written = 0
            target = self.real / f"{split}.parquet"
            with atomic_open(target, "wb") as fh, pq.ParquetWriter(fh, REAL_SCHEMA) as writer:
                for name in names:
                    with (self.parts / name).open("rb") as part:
                        table = pq.read_table(part)
                    writer.write_table(table, row_group_size=ROW_GROUP_SIZE)
                    written += table.num_rows
                if written != want:
                    raise DataError(f"real/{split}: {written} rows in its parts, {want} "
                                    "expected; run the data stage again")
            out.append(written)
        return pa.table({col.SPLIT: batch[col.SPLIT], "rows": out})
