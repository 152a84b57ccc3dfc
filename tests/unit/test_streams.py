"""The worker-side batch streams of the streamed classifier (``train/streams.py``) on a local
shard: a pyarrow table served with Ray Data's ``iter_torch_batches`` contract (batches of numpy
columns through ``collate_fn``), so the unit tier needs no Ray instance."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from raysynth import columns as col
from raysynth.data.images import encode_png
from raysynth.errors import DataError
from raysynth.train.streams import DecodeBatch, endless


class TableShard:
    """A shard over an in-memory table; each pass is a new seeded shuffle (as Ray's local shuffle
    buffer gives) and is counted."""

    def __init__(self, table: pa.Table) -> None:
        self.table, self.passes = table, 0

    def iter_torch_batches(self, batch_size, collate_fn, local_shuffle_seed=0, **_):
        self.passes += 1
        order = np.random.default_rng(local_shuffle_seed).permutation(self.table.num_rows)
        t = self.table.take(pa.array(order))
        for i in range(0, t.num_rows, batch_size):
            part = t.slice(i, batch_size)
            yield collate_fn({c: part[c].to_numpy(zero_copy_only=False) for c in part.column_names})


def _table(n: int, value_of=lambda i: i) -> pa.Table:
    return pa.table({
        col.SAMPLE_ID: [f"s{i}" for i in range(n)],
        col.LABEL: pa.array([i % 3 for i in range(n)], pa.int64()),
        col.IMAGE: [encode_png(np.full((4, 4), value_of(i), np.uint8)) for i in range(n)],
    })


def test_endless_cycles_whole_passes_in_full_batches():
    """7 rows drawn 3 at a time: batches are always full, each pass holds every row once (the
    last batch of a pass is completed from the next pass)."""
    shard = TableShard(_table(7))
    draws = endless(shard, 3, DecodeBatch(1, 0, "t"), 5, torch.device("cpu"))
    got = [next(draws) for _ in range(7)]  # 21 rows = 3 passes
    assert all(len(y) == 3 for _, y in got)
    rows = torch.cat([x for x, _ in got]).flatten(1)[:, 0].mul(255).round().long().tolist()
    for p in range(3):
        assert sorted(rows[7 * p : 7 * p + 7]) == list(range(7))
    assert shard.passes == 3
    assert torch.cat([y for _, y in got]).tolist() == [r % 3 for r in rows]


def test_endless_on_an_empty_shard_stops():
    assert list(endless(TableShard(_table(0)), 3, DecodeBatch(1, 0, "t"), 0,
                        torch.device("cpu"))) == []


def test_a_damaged_png_is_named_by_its_sample_id():
    t = _table(3)
    images = t[col.IMAGE].to_pylist()
    images[2] = images[2][:10]
    t = t.set_column(2, col.IMAGE, pa.array(images, pa.binary()))
    with pytest.raises(DataError, match=r"synthetic: the image of row 's2'"):
        DecodeBatch(1, 0, "synthetic")({c: t[c].to_numpy(zero_copy_only=False)
                                         for c in t.column_names})
