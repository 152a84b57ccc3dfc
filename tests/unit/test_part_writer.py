"""The synthetic table's writer: one conformed part per block, named by its rows, written
atomically, so a retried block replaces its own part and readers never see a partial one."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from raysynth import columns as col
from raysynth.generate.schema import SYNTHETIC_SCHEMA
from raysynth.generate.table import PartWriter, existing_ids, parquet_files, read_table


def _block(ids: list[str], extra: bool = True) -> pa.Table:
    """A block as the generator stage leaves it: every column of the schema (nulls where a
    stage did not fill it) plus, with ``extra``, a column the table does not keep."""
    cols = {f.name: pa.nulls(len(ids), f.type) for f in SYNTHETIC_SCHEMA}
    cols[col.SAMPLE_ID] = pa.array(ids)
    cols[col.IMAGE] = pa.array([i.encode() for i in ids], pa.binary())
    if extra:
        cols["flagged"] = pa.array([False] * len(ids))
    return pa.table(cols)


def test_part_writer_conforms_and_names_parts_by_their_rows(tmp_path):
    w = PartWriter(str(tmp_path / "round-000"))
    out = w(_block(["a", "b"]))
    assert out.to_pylist() == [{"file": out["file"][0].as_py(), "rows": 2}]
    (part,) = parquet_files(tmp_path)
    assert part.name == out["file"][0].as_py()
    assert pq.read_schema(part).remove_metadata() == SYNTHETIC_SCHEMA  # "flagged" dropped
    # a retried block (same rows) replaces its part; another block gets its own
    assert w(_block(["a", "b"]))["file"][0].as_py() == part.name
    w(_block(["c"]))
    assert len(parquet_files(tmp_path)) == 2
    assert existing_ids(tmp_path) == {"a", "b", "c"}
    assert sorted(read_table(tmp_path, [col.IMAGE])[col.IMAGE].to_pylist()) == [b"a", b"b", b"c"]
    assert not [p for p in (tmp_path / "round-000").iterdir() if p.name.startswith(".")]


def test_a_leftover_temporary_file_is_not_read(tmp_path):
    w = PartWriter(str(tmp_path))
    w(_block(["a"]))
    (tmp_path / ".part-x.parquet.123.tmp").write_bytes(b"PAR1 cut short")  # a killed writer
    assert existing_ids(tmp_path) == {"a"}
