"""The warm pools' actor body (:class:`raysynth.warm_pools.StageHost`) without a cluster: a block
is cut into the stage's batches in its batch format, and a redone block overwrites its own part
in the round's folder."""

import pyarrow as pa

from raysynth import columns as col
from raysynth.filter.rounds import AcceptAll
from raysynth.generate.schema import SYNTHETIC_SCHEMA
from raysynth.generate.table import PartWriter, read_table
from raysynth.warm_pools import StageHost


class CountCalls(AcceptAll):
    calls: list[int] = []

    def __call__(self, batch):
        CountCalls.calls.append(len(batch[col.SAMPLE_ID]))
        return super().__call__(batch)


def _block(n: int) -> pa.Table:
    return pa.table({col.SAMPLE_ID: [f"s{i}" for i in range(n)],
                     col.IMAGE: [b"png"] * (n - 1) + [None]})


def test_a_block_is_called_in_batches_of_the_stage_size():
    CountCalls.calls = []
    rows, out = StageHost(CountCalls, {}, "numpy", 2).call(_block(5))
    assert CountCalls.calls == [2, 2, 1] and rows == 5
    assert out[col.ACCEPTED].to_pylist() == [True, True, True, True, False]
    assert out[col.SAMPLE_ID].to_pylist() == [f"s{i}" for i in range(5)]
    CountCalls.calls = []
    StageHost(CountCalls, {}, "numpy", None).call(_block(5))  # None: one call per block
    assert CountCalls.calls == [5]


def test_the_writer_follows_the_round_folder_and_a_redone_block_overwrites_its_part(tmp_path):
    table = pa.Table.from_pylist(
        [{col.SAMPLE_ID: f"s{i}", col.LABEL: i, col.ROUND: 1, col.ACCEPTED: True} for i in range(3)],
        schema=SYNTHETIC_SCHEMA)
    host = StageHost(PartWriter, {"path": tmp_path / "synthetic"}, "pyarrow", None)
    for _ in range(2):  # the same block twice (an actor lost after writing it): one part
        rows, out = host.call(table, {"path": tmp_path / "synthetic" / "round-001"})
        assert rows == 1 and out["rows"].to_pylist() == [3]
    parts = sorted((tmp_path / "synthetic").rglob("*.parquet"))
    assert [p.parent.name for p in parts] == ["round-001"]
    ids = read_table(tmp_path / "synthetic", [col.SAMPLE_ID])[col.SAMPLE_ID].to_pylist()
    assert sorted(ids) == ["s0", "s1", "s2"]
