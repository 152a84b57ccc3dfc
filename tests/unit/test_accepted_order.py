"""The accepted synthetic images reach training in one order whatever Ray Data's batching put in
which Parquet part (DESIGN §2: nothing depends on the order of arrival)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from raysynth import columns as col
from raysynth.config.schema import DataConfig
from raysynth.data import encode_png, load_dataset, make_splits
from raysynth.flows.prepare import accepted_arrays
from raysynth.flows.real import RealData
from raysynth.generate.schema import SYNTHETIC_SCHEMA
from raysynth.generate.table import PartWriter


def _rows(ids: list[str]) -> pa.Table:
    cols = {f.name: pa.nulls(len(ids), f.type) for f in SYNTHETIC_SCHEMA}
    cols[col.SAMPLE_ID] = pa.array(ids)
    cols[col.LABEL] = pa.array([int(i[-1]) % 3 for i in ids], pa.int64())
    # each image is its id's number as a flat grey level, so the order is visible in the pixels
    pngs = [encode_png(np.full((8, 8, 1), 20 * int(i[-1]), np.uint8)) for i in ids]
    cols[col.IMAGE] = pa.array(pngs, pa.binary())
    cols[col.ACCEPTED] = pa.array([i != "syn-5" for i in ids])
    return pa.table(cols)


def _write(root, blocks: list[list[str]]) -> None:
    writer = PartWriter(str(root / "round-000"))
    for block in blocks:
        writer(_rows(block))


def test_accepted_images_come_in_sample_id_order_whatever_the_parts(tmp_path):
    images = load_dataset(DataConfig(k=2, pool_per_class=0, val_per_class=0, test_per_class=0))
    cfg = DataConfig(k=2, pool_per_class=0, val_per_class=0, test_per_class=0)
    real = RealData.from_images(images, make_splits(images, cfg, 0))
    ids = [f"syn-{n}" for n in range(6)]
    _write(tmp_path / "a", [ids[:3], ids[3:]])
    _write(tmp_path / "b", [[ids[5], ids[1]], [ids[0], ids[4], ids[2], ids[3]]])

    a, b = accepted_arrays(tmp_path / "a", real), accepted_arrays(tmp_path / "b", real)

    assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y)
    levels = np.round(a.x[:, 0, 0, 0] * 255).astype(int).tolist()
    assert levels == [0, 20, 40, 60, 80]  # syn-0 … syn-4; syn-5 was rejected
    assert a.y.tolist() == [0, 1, 2, 0, 1]
