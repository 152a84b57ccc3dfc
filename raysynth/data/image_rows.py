"""Image rows from a Parquet dataset (DESIGN §1 schema): ``image`` (PNG bytes, or a Hugging Face
style struct with a ``bytes`` field), with ``label`` (int) and ``class_name`` (string) where a
file has them. Shared by the labelled Parquet loader and the unlabeled-set loader, which differ
only in the columns they require."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from raysynth import columns as col
from raysynth.data.parquet import require_parquet
from raysynth.errors import DataError


class ParquetRow(NamedTuple):
    source: str  # "<file>:<row>"
    image: bytes | None
    label: int | None
    name: str | None
    path: str | None = None  # the ``path`` column, or the image struct's ``path`` (split files)


def read_image_rows(
    path: str | Path, accepts: Callable[[set[str]], bool], needs: str
) -> tuple[list[ParquetRow], list[set[str]]]:
    """Every row of the dataset at ``path`` (see :func:`~raysynth.data.parquet.require_parquet`),
    and the columns of each file.

    ``label`` / ``name`` are None where a file lacks the column. A file whose columns ``accepts``
    rejects is a :class:`DataError` that lists its columns and then says ``needs``.
    """
    fs, files = require_parquet(path)
    rows: list[ParquetRow] = []
    columns: list[set[str]] = []
    for f in files:
        present = pq.read_schema(f, filesystem=fs).names
        if not accepts(set(present)):
            raise DataError(f"{f} has columns {', '.join(present)}; {needs}")
        wanted = [c for c in (col.IMAGE, col.LABEL, col.CLASS_NAME, col.PATH) if c in present]
        table = pq.read_table(f, columns=wanted, filesystem=fs)
        n = table.num_rows
        columns.append(set(present))
        images = image_column(table.column(col.IMAGE), f)
        labels = _label_column(table.column(col.LABEL), f) if col.LABEL in present else [None] * n
        names = (
            table.column(col.CLASS_NAME).to_pylist() if col.CLASS_NAME in present else [None] * n
        )
        paths = _path_column(table, present)
        rows += [
            ParquetRow(f"{f}:{i}", images[i], labels[i], names[i], paths[i]) for i in range(n)
        ]
    return rows, columns


def _path_column(table: pa.Table, present: list[str]) -> list[str | None]:
    if col.PATH in present:
        return table.column(col.PATH).to_pylist()
    image = table.column(col.IMAGE)
    if pa.types.is_struct(image.type) and image.type.get_field_index("path") >= 0:
        return image.combine_chunks().field("path").to_pylist()
    return [None] * table.num_rows


def image_column(column: pa.ChunkedArray, file: str) -> list[bytes | None]:
    if pa.types.is_struct(column.type) and column.type.get_field_index("bytes") >= 0:
        column = column.combine_chunks().field("bytes")
    if not (pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type)):
        raise DataError(f"{file}: column {col.IMAGE!r} must hold PNG bytes, not {column.type}")
    return column.to_pylist()


def _label_column(column: pa.ChunkedArray, file: str) -> list[int | None]:
    if not pa.types.is_integer(column.type):
        raise DataError(f"{file}: column {col.LABEL!r} must hold integers, not {column.type}")
    return column.to_pylist()
