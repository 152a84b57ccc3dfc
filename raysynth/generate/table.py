"""The synthetic table: a Parquet dataset under ``<run>/synthetic/`` (DESIGN §1–2).

Written by :class:`PartWriter` (one file per block, from a long-lived Ray Data actor), read back
here. A part is written under a hidden temporary name and renamed into place, so a killed writer
leaves no half-written part. A part whose footer is corrupt (a copy cut short, bytes overwritten:
the file reads back but is not Parquet) is left out with a warning, and only the generate stage
(:func:`existing_ids`, ``repair=True``) moves it aside (``*.parquet.corrupt``) so that its rows
are made again; every other reader — the report above all — never moves a file. A file that
cannot be *read* (an I/O or permission error, storage away for a moment) is not corruption: it
raises :class:`RunDirError` and stays where it is.
Rows are unique by ``sample_id``: a ``sample_id`` seen twice (a retried write) keeps its first
row — generation is deterministic, so both rows hold the same image.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raysynth import columns as col
from raysynth.data.parquet import list_parquet
from raysynth.errors import RunDirError
from raysynth.files import atomic_open, move_aside
from raysynth.generate.schema import conform
from raysynth.storage import AnyPath, RemotePath, as_path, fs_path

log = logging.getLogger("raysynth.generate")


def parquet_files(root: str | AnyPath, repair: bool = False) -> list[AnyPath]:
    """Readable Parquet files under the folder ``root``, as
    :func:`raysynth.data.parquet.list_parquet` lists them (sorted, absolute; hidden temporary
    parts left out). A part with a corrupt footer is left out with a warning, and moved aside
    only with ``repair``; a read error raises :class:`RunDirError` (module docstring). Empty
    while ``root`` is not a folder."""
    root = as_path(root)
    if not root.is_dir():
        return []
    good = []
    fs, names = list_parquet(root)
    for f in (RemotePath(fs, n, root.scheme) if isinstance(root, RemotePath) else Path(n)
              for n in names):
        problem = corrupt_footer(f)
        if problem is None:
            good.append(f)
        elif repair:
            log.warning("moving synthetic part %s aside: its footer is corrupt (%s); its rows are "
                        "made again", f, problem)
            move_aside(f, f.with_suffix(".parquet.corrupt"))
        else:
            log.warning("leaving out synthetic part %s: its footer is corrupt (%s); the next "
                        "`raysynth run --resume` moves it aside and makes its rows again", f, problem)
    return good


def corrupt_footer(path: AnyPath) -> str | None:
    """Why the Parquet footer of ``path`` cannot be parsed, or None when it can. Raises
    :class:`RunDirError` when the file cannot be read at all (an I/O error is the storage's,
    not the file's: the file is not judged corrupt on it)."""
    try:
        fs, where = fs_path(path)
        pq.ParquetFile(where, filesystem=fs).metadata  # noqa: B018 - parsing validates the file
        return None
    except (pa.ArrowInvalid, OSError) as e:
        error = e
    # pyarrow reports a system error with its errno and a footer it cannot parse without one
    # (ArrowInvalid, or OSError("Couldn't deserialize thrift")); read the bytes ourselves too,
    # so a read that fails now is never taken for corruption
    try:
        if isinstance(error, OSError) and error.errno is not None:
            raise error
        with path.open("rb") as fh:
            while fh.read(1 << 20):
                pass
    except OSError as e:
        raise RunDirError(
            f"could not read synthetic part {path} ({e}); it was left in place. Check the "
            "storage (permissions, mount, disk) and rerun the same command with --resume"
        ) from e
    return f"{type(error).__name__}: {error}"


def existing_ids(root: str | AnyPath) -> set[str]:
    """``sample_id``s already written under ``root`` (reads only that column); the generate
    stage's read, which moves parts with a corrupt footer aside so their rows are made again."""
    ids: set[str] = set()
    for f in parquet_files(root, repair=True):
        ids.update(_read(f, [col.SAMPLE_ID])[col.SAMPLE_ID].to_pylist())
    return ids


def part_name(sample_ids: Sequence[str]) -> str:
    """The file name :class:`PartWriter` gives the part of these ``sample_id``\\ s (a hash of
    them, in order: a retried block overwrites its own part)."""
    ids = "\n".join(sample_ids).encode()
    return f"part-{hashlib.sha256(ids).hexdigest()[:24]}.parquet"


def part_ids(path: str | AnyPath) -> list[str]:
    """The ``sample_id``\\ s of one part (reads only that column)."""
    return _read(as_path(path), [col.SAMPLE_ID])[col.SAMPLE_ID].to_pylist()


def _read(path: AnyPath, columns: list[str] | None) -> pa.Table:
    fs, where = fs_path(path)
    return pq.read_table(where, columns=columns, filesystem=fs)


def iter_tables(root: str | AnyPath, columns: Sequence[str] | None = None) -> Iterator[pa.Table]:
    """Stream the table file by file, first occurrence of each ``sample_id`` only."""
    seen: set[str] = set()
    for f in parquet_files(root):
        cols = None if columns is None else list(dict.fromkeys([col.SAMPLE_ID, *columns]))
        t = _read(f, cols)
        ids = t[col.SAMPLE_ID].to_pylist()
        keep = [i not in seen and not seen.add(i) for i in ids]  # type: ignore[func-returns-value]
        if not all(keep):
            t = t.filter(pa.array(keep))
        yield t if columns is None or col.SAMPLE_ID in columns else t.drop([col.SAMPLE_ID])


def read_table(root: str | AnyPath, columns: Sequence[str] | None = None) -> pa.Table | None:
    """The whole (deduplicated) table, or None when nothing was written yet.

    Only for small tables or narrow column sets: the driver holds what it returns.
    """
    parts = list(iter_tables(root, columns))
    if not parts:
        return None
    return pa.concat_tables(parts, promote_options="default")


def count_by(root: str | AnyPath, column: str) -> dict:
    """Row counts per value of ``column`` (e.g. per label), reading only that column."""
    counts: dict = {}
    for t in iter_tables(root, [column]):
        vc = pc.value_counts(t[column]).to_pylist()
        for item in vc:
            counts[item["values"]] = counts.get(item["values"], 0) + item["counts"]
    return counts


class PartWriter:
    """A Ray Data callable class: conform a block to the synthetic schema and write it as one
    Parquet part under ``path``; returns one row (``file``, ``rows``) per part.

    The part's name is a hash of its ``sample_id``s, so a retried block overwrites its own part
    instead of adding a copy; the write goes to a hidden temporary file first and is renamed
    into place (atomic on one filesystem; on an object store one whole-object put), so readers
    never see a partial part.
    """

    def __init__(self, path: str | AnyPath) -> None:
        self.path = as_path(path)  # a RemotePath keeps the filesystem it was opened with
        self.path.mkdir(parents=True, exist_ok=True)

    def __call__(self, block: pa.Table) -> pa.Table:
        table = conform(block)
        name = part_name(table[col.SAMPLE_ID].to_pylist())
        with atomic_open(self.path / name, "wb") as f:
            pq.write_table(table, f)
        return pa.table({"file": [name], "rows": [table.num_rows]})
