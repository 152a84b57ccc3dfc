"""Image tables described for streaming: which Parquet files, which rows, how many per class.

The driver reads only the narrow metadata columns (``sample_id``, ``label``, ``accepted``) of each
file, never the images; the Train workers read the images from the files through Ray Data
(``ray_data.image_table``). The per-class counts are what balanced softmax and the empty-class
check need; ``drop`` lists the repeats of a ``sample_id`` (only its first occurrence, in file
order, is a row of the table — as :func:`raysynth.generate.table.iter_tables` reads it) and the
rows a learned per-class trust leaves out (:func:`keep_trusted`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from raysynth import columns as col
from raysynth.errors import DataError


@dataclass(frozen=True)
class ImageTable:
    """The rows of an image table a training run streams (``counts[c]``: rows of class c)."""

    files: tuple[str, ...]
    counts: tuple[int, ...]
    channels: int
    image_size: int
    accepted_only: bool = False
    drop: frozenset[tuple[str, str]] = field(default_factory=frozenset)

    def __len__(self) -> int:
        return int(sum(self.counts))

    def labels(self) -> np.ndarray:
        """One label per row in class order (what the prior of balanced softmax counts)."""
        return np.repeat(np.arange(len(self.counts)), self.counts).astype(np.int64)


def describe_table(
    files: Sequence[str],
    num_classes: int,
    channels: int,
    image_size: int,
    accepted_only: bool = False,
    what: str = "the table",
) -> ImageTable:
    """Read the metadata columns of ``files`` and describe the table's rows.

    Raises :class:`DataError` naming the file when a file has no ``label`` column or a label
    outside ``[0, num_classes)``."""
    need = [col.SAMPLE_ID, col.LABEL] + ([col.ACCEPTED] if accepted_only else [])
    counts = np.zeros(num_classes, np.int64)
    seen: set[str] = set()
    drop: set[tuple[str, str]] = set()
    for f in files:
        names = pq.read_schema(f).names
        missing = [c for c in need if c not in names]
        if missing:
            raise DataError(
                f"{what}: {f} has no {', '.join(missing)} column (it has {', '.join(names)}); "
                f"every image table needs {', '.join(need)} — rewrite it with those columns"
            )
        t = pq.read_table(f, columns=need)
        keep = np.asarray(t[col.ACCEPTED].fill_null(False)) if accepted_only else None
        ids = t[col.SAMPLE_ID].to_pylist()
        labels = np.asarray(t[col.LABEL].to_numpy(zero_copy_only=False), np.int64)
        for i, sid in enumerate(ids):
            if keep is not None and not keep[i]:
                continue
            if sid in seen:
                drop.add((f, sid))
                continue
            seen.add(sid)
            y = labels[i]
            if not 0 <= y < num_classes:
                raise DataError(
                    f"{what}: {f} row {sid!r} has label {y}, outside 0..{num_classes - 1} "
                    "(the run's classes); was it written for another dataset?"
                )
            counts[y] += 1
    return ImageTable(tuple(str(f) for f in files), tuple(int(c) for c in counts), channels,
                      image_size, accepted_only, frozenset(drop))


def trusted_rows(ids: Sequence[str], labels: Sequence[int], trust: Sequence[float]) -> np.ndarray:
    """Which rows a per-class ``trust`` keeps: ``round(trust[c] × n_c)`` of class c's ``n_c``
    rows, those whose ``sample_id`` hashes lowest (blake2b: stable across runs and machines, and
    independent of the rows' order or of which round made them). A row's loss weighed by
    ``trust[c]`` in expectation, with whole images (trust 1 keeps all, 0 none)."""
    labels = np.asarray(labels, np.int64)
    keep = np.zeros(len(labels), bool)
    keys = np.array([hashlib.blake2b(str(s).encode(), digest_size=8).hexdigest() for s in ids])
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        w = float(trust[c]) if 0 <= c < len(trust) else 1.0
        n = int(round(min(1.0, max(0.0, w)) * len(rows)))
        keep[rows[np.argsort(keys[rows], kind="stable")[:n]]] = True
    return keep


def keep_trusted(table: ImageTable, trust: Sequence[float]) -> ImageTable:
    """``table`` with only the rows :func:`trusted_rows` keeps (the others added to ``drop``;
    reads the metadata columns again, never the images)."""
    rows = [(f, sid, int(y)) for f, _, (sid, y) in _rows(table, [col.SAMPLE_ID, col.LABEL])]
    keep = trusted_rows([r[1] for r in rows], [r[2] for r in rows], trust)
    counts = np.bincount(np.array([y for (_, _, y), k in zip(rows, keep) if k], np.int64),
                         minlength=len(table.counts))
    drop = table.drop | {(f, sid) for (f, sid, _), k in zip(rows, keep) if not k}
    return replace(table, counts=tuple(int(c) for c in counts), drop=frozenset(drop))


def _rows(table: ImageTable, columns: list[str]) -> Iterator[tuple[str, int, tuple[Any, ...]]]:
    """``(file, row, values of columns)`` of each row of ``table`` (accepted where it keeps only
    accepted rows, not dropped), in file order; reads ``columns`` (+ the flags) only."""
    need = list(dict.fromkeys([col.SAMPLE_ID, *columns]
                              + ([col.ACCEPTED] if table.accepted_only else [])))
    for f in table.files:
        t = pq.read_table(f, columns=need)
        ok = (t[col.ACCEPTED].fill_null(False).to_pylist() if table.accepted_only
              else [True] * t.num_rows)
        ids = t[col.SAMPLE_ID].to_pylist()
        values = list(zip(*(t[c].to_pylist() for c in columns)))
        for row, (sid, a, v) in enumerate(zip(ids, ok, values)):
            if a and (f, sid) not in table.drop:
                yield str(f), row, v


def own_partners(table: ImageTable) -> dict[str, tuple[str, int]]:
    """Each real ``sample_id`` → ``(file, row)`` of the synthetic image generated from it: the
    first row of ``table`` (in file order, a row of the table: accepted, not a dropped repeat)
    whose ``cond_id`` names it — DiffCoRe-Mix's counterpart G_i of I_i (``mix.pairing: own``).
    Reads only ``sample_id``, ``cond_id`` and ``accepted``."""
    for f in table.files:
        names = pq.read_schema(f).names
        if col.COND_ID not in names:
            raise DataError(
                f"mix.pairing=own pairs each real image with the image generated from it, named "
                f"by {col.COND_ID!r}, but {f} has no such column (it has {', '.join(names)}); "
                "use mix.pairing=random for tables without it")
    out: dict[str, tuple[str, int]] = {}
    for f, row, (cond,) in _rows(table, [col.COND_ID]):
        if cond:
            out.setdefault(cond, (f, row))
    return out
