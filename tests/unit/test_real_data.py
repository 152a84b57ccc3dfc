"""What the driver holds of the real splits (issue 15): ``RealData`` read from the small columns
of ``real/*.parquet`` (no image bytes, no decode) is what the in-memory ``RealData`` is — same
labels, ids, groups, counts, size — and a split's images are decoded only when asked, to the same
arrays; ``--dry-run`` lists a streamed source without opening an image."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from raysynth import columns as col
from raysynth.cli import main
from raysynth.config.schema import DataConfig
from raysynth.data import SPLIT_NAMES, ImageSet, encode_png, make_splits, write_real
from raysynth.flows.air import split_set
from raysynth.flows.real import RealData


@pytest.fixture
def opened(monkeypatch):
    """Every ``PIL.Image.open`` of this process, and every column list ``pq.read_table`` read."""
    seen: dict[str, list] = {"images": [], "columns": []}
    real_open, real_read = Image.open, pq.read_table
    monkeypatch.setattr(Image, "open", lambda *a, **k: seen["images"].append(a)
                        or real_open(*a, **k))
    monkeypatch.setattr(pq, "read_table", lambda *a, **k: seen["columns"].append(k.get("columns"))
                        or real_read(*a, **k))
    return seen


def _grouped_set() -> ImageSet:
    rng = np.random.default_rng(0)
    n = 30
    images = [encode_png(rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)) for _ in range(n)]
    return ImageSet(images=images, labels=[i % 3 for i in range(n)], class_names=["a", "b", "c"],
                    sources=[f"s{i}" for i in range(n)], channels=3,
                    skipped=[("s-bad", "not a readable image: test")],
                    group=["sun" if i % 2 else "rain" for i in range(n)])


def test_real_data_read_back_holds_no_image_and_decodes_the_same_arrays(tmp_path, opened):
    data = _grouped_set()
    cfg = DataConfig(k=4, pool_per_class=1, val_per_class=2, test_per_class=3,
                     imbalance_factor=2)
    splits = make_splits(data, cfg, 3)
    write_real(tmp_path, data, splits)
    memory = RealData.from_images(data, splits)
    opened["images"].clear()

    back = RealData.read(tmp_path)
    meta = (back.class_names, back.channels, back.image_size, back.counts(), back.skipped,
            back.splits.groups, back.group_counts(), back.ids_by_class("test"),
            back.contexts("val"), back.real_train("t.parquet"))
    assert opened["images"] == []  # no image decoded to read the splits, their size included
    assert all(c is not None and col.IMAGE not in c for c in opened["columns"])
    assert meta == (memory.class_names, memory.channels, memory.image_size, memory.counts(),
                    memory.skipped, memory.splits.groups, memory.group_counts(),
                    memory.ids_by_class("test"), memory.contexts("val"),
                    memory.real_train("t.parquet"))
    assert back.image_size == 6 and back.counts()["train"] == [4, 3, 2]
    assert back.group_counts() and back.contexts("val") is not None
    unlabeled = split_set(back, "val")  # AiR's view of a split: its bytes, ids, true labels
    assert unlabeled.images == [data.images[i] for i in splits.val]
    assert unlabeled.sample_ids == [f"real-{i:06d}" for i in splits.val]
    assert np.array_equal(unlabeled.true_labels, data.labels[splits.val])
    want = {split: memory.arrays(split) for split in SPLIT_NAMES}
    opened["images"].clear()
    for split in SPLIT_NAMES:  # decoded only when asked, to the very same arrays
        got = back.arrays(split)
        assert got.x.shape == want[split].x.shape and np.array_equal(got.x, want[split].x), split
        assert np.array_equal(got.y, want[split].y), split
    assert len(opened["images"]) == sum(sum(n) for n in back.counts().values())  # each row once


def _dry_run(args: list[str]) -> str:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["run", "--dry-run", *args]) == 0
    return buf.getvalue()


SETS = ["data.k=2", "data.pool_per_class=0", "data.val_per_class=1", "data.test_per_class=1"]


def test_dry_run_lists_a_streamed_source_without_opening_an_image(tmp_path, opened):
    rng = np.random.default_rng(1)
    for c in ("cat", "dog"):
        (tmp_path / "folder" / c).mkdir(parents=True)
        for i in range(5):
            png = encode_png(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8))
            (tmp_path / "folder" / c / f"{i}.png").write_bytes(png)
    (tmp_path / "folder" / "cat" / "broken.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "table").mkdir()
    pq.write_table(pa.table({col.IMAGE: [encode_png(np.zeros((4, 4), np.uint8))] * 8,
                             col.LABEL: [0, 1] * 4}), tmp_path / "table" / "a.parquet")
    opened["images"].clear()

    folder = _dry_run([a for s in SETS + ["data.source=imagefolder", f"data.path={tmp_path}/folder"]
                       for a in ("--set", s)])
    table = _dry_run([a for s in SETS + ["data.source=parquet", f"data.path={tmp_path}/table"]
                      for a in ("--set", s)])
    assert opened["images"] == []  # listed (labels, paths), never loaded
    assert all(c is not None and col.IMAGE not in c for c in opened["columns"])
    assert "data: 11 images, 2 classes, 3 channel(s)" in folder  # the broken one is only listed
    assert "listed, not opened" in folder
    assert "  train: 4 images, per class [2, 2]" in folder
    assert "  test: 2 images, per class [1, 1]" in folder
    assert "data: 8 images, 2 classes, channels found by the data stage" in table
    assert "  val: 2 images, per class [1, 1]" in table
