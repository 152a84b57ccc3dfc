"""The recognition rate of the synthetic images at scale (issue 15): when the classifiers stream
(``train.stream``), the real-split classifier labels the synthetic table on an actor pool over
Ray Data and only counts come back — the same rates as the driver's file-by-file count, repeated
``sample_id`` s counted once, and no synthetic image decoded on the driver."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from raysynth import columns as col
from raysynth.config import build_config
from raysynth.data import ImageSet, encode_png, make_splits, write_real
from raysynth.data import images as images_mod
from raysynth.flows.prepare import recognition
from raysynth.flows.real import RealData
from raysynth.generate.actor import SYNTHETIC_SCHEMA
from raysynth.rundir import RunDir
from raysynth.train.checkpoint import write_checkpoint
from raysynth.train.models import build_model


@pytest.fixture
def run_with_table(tmp_path):
    """A run directory with real splits (3 classes of 8×8 grey images), a classifier that calls
    every image class 1, and a synthetic table of two rounds: a row without an image, an
    unfiltered one, and one sample id written twice (its second copy, a miss, must not count)."""
    rng = np.random.default_rng(0)
    png = [encode_png(rng.integers(0, 256, (8, 8), dtype=np.uint8)) for _ in range(40)]
    data = ImageSet(images=png[:30], labels=[i % 3 for i in range(30)],
                    class_names=["a", "b", "c"], sources=[f"r{i}" for i in range(30)], channels=1)
    cfg = build_config(overrides={"data.k": 4, "data.val_per_class": 2,
                                  "data.test_per_class": 2, "data.pool_per_class": 0})
    write_real(tmp_path, data, make_splits(data, cfg.data, 0))
    model_cfg = {"kind": "classifier", "num_classes": 3,
                 "encoder": {"arch": "small_cnn", "in_channels": 1, "width": 4, "feat_dim": 8}}
    torch.manual_seed(0)
    model = build_model(model_cfg)
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.copy_(torch.tensor([0.0, 5.0, 0.0]))
    folder = write_checkpoint(tmp_path / "cls", model.eval(), model_cfg)
    hit, miss = 1, 0
    parts = {
        "round-000/block-0.parquet": [("s0", hit, 0, png[30], True), ("s1", miss, 0, png[31], False),
                                      ("s2", hit, 0, None, True), ("s3", 2, 0, png[32], True),
                                      ("s4", hit, 0, png[33], None), ("s5", hit, 0, png[34], False)],
        "round-001/block-0.parquet": [("s6", hit, 1, png[35], False), ("s7", miss, 1, png[36], True),
                                      ("s0", miss, 1, png[37], True)],  # a repeat: not a row
        "round-001/block-1.parquet": [("s8", hit, 1, None, None)],
    }
    keys = (col.SAMPLE_ID, col.LABEL, col.ROUND, col.IMAGE, col.ACCEPTED)
    for name, rows in parts.items():
        path = tmp_path / "synthetic" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist([dict(zip(keys, r)) for r in rows],
                                            schema=SYNTHETIC_SCHEMA), path)
    return RunDir(tmp_path), RealData.read(tmp_path), folder


def test_streamed_recognition_counts_on_a_pool_and_decodes_nothing_on_the_driver(
    ray_local, run_with_table, monkeypatch
):
    run, real, folder = run_with_table
    want = {"all": 4 / 7, "round0": 3 / 5, "accepted": 1 / 3}
    decoded = []
    real_decode = images_mod.to_tensor_array
    monkeypatch.setattr(images_mod, "to_tensor_array",
                        lambda pngs, *a, **k: decoded.append(len(pngs)) or real_decode(pngs, *a, **k))
    streamed = recognition(run, build_config(overrides={"train.stream": "always"}), real, folder)
    assert streamed == pytest.approx(want)
    assert decoded == []  # the pool's actors decoded the images, not this process
    in_driver = recognition(run, build_config(overrides={"train.stream": "never"}), real, folder)
    assert in_driver == pytest.approx(want)
    assert sum(decoded) == 7  # ... where the driver's own count decodes every image once
