"""The streamed data stage's pieces without Ray (issue 15): listing a source reads no image,
the tasks' callables called in-process read the right rows, and bad input stops with a clear
message before anything is written or leaves what was written as it was."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from raysynth import columns as col
from raysynth.config.schema import DataConfig
from raysynth.data import encode_png
from raysynth.data.listing import Checked, list_source, resolve
from raysynth.data.real_tasks import (
    DECODE,
    FILE,
    POS,
    ROW,
    CheckImages,
    MergeRealSplits,
    WriteRealParts,
    read_images,
)
from raysynth.data.splits import make_splits
from raysynth.data.streamed import split_rows
from raysynth.errors import DataError

LOCAL = pafs.LocalFileSystem()


def _png(v: int) -> bytes:
    return encode_png(np.full((4, 4), v, np.uint8))


def _check(pending) -> Checked:
    """What the Ray tasks find, found here in-process (one block)."""
    out = CheckImages(pending.fs)(pa.table({
        POS: np.arange(len(pending)), FILE: pending.files, ROW: pending.rows,
        DECODE: pending.decode, col.SOURCE: pending.sources}))
    return Checked(out["null"].to_numpy(zero_copy_only=False), out["reason"].to_pylist(),
                   out["grey"].to_numpy())


def test_parquet_rows_are_read_from_the_row_groups_that_hold_them(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({col.IMAGE: [bytes([i]) for i in range(10)]}), path,
                   row_group_size=3)
    rows = [9, 0, 4, 5, 3]
    assert read_images(LOCAL, [str(path)] * 5, rows) == [bytes([r]) for r in rows]
    missing = read_images(LOCAL, [str(tmp_path / "gone.png")], [-1])[0]
    assert isinstance(missing, OSError)


def test_listing_a_parquet_table_never_reads_the_image_column(tmp_path, monkeypatch):
    pq.write_table(pa.table({col.IMAGE: [_png(0), _png(9)], col.LABEL: [1, 0]}),
                   tmp_path / "a.parquet")
    real_read = pq.read_table
    asked = []
    monkeypatch.setattr(pq, "read_table", lambda *a, **k: asked.append(k.get("columns"))
                        or real_read(*a, **k))
    pending = list_source(DataConfig(source="parquet", path=str(tmp_path)))
    assert asked == [[col.LABEL]] and pending.sources == [f"{tmp_path}/a.parquet:0",
                                                          f"{tmp_path}/a.parquet:1"]


def test_a_parquet_file_without_a_label_column_is_refused_before_anything_is_read(tmp_path):
    pq.write_table(pa.table({col.IMAGE: [_png(0)], col.LABEL: [0]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({col.IMAGE: [_png(0)], "y": [0]}), tmp_path / "b.parquet")
    with pytest.raises(DataError, match=r"b.parquet has columns image, y; .*needs 'image'.*"
                                         r"'label' \(int\) and/or 'class_name'"):
        list_source(DataConfig(source="parquet", path=str(tmp_path)))


def test_a_class_left_empty_by_unreadable_images_is_named_and_nothing_is_written(tmp_path):
    for name, blobs in (("cat", [_png(1), _png(2)]), ("dog", [b"not a png", _png(3)[:20]])):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i, blob in enumerate(blobs):
            (tmp_path / "data" / name / f"{i}.png").write_bytes(blob)
    cfg = DataConfig(source="imagefolder", path=str(tmp_path / "data"))
    pending = list_source(cfg)
    with pytest.raises(DataError, match=r"class folder\(s\) .*dog hold no readable image "
                                        r"\(files skipped: 2\)"):
        resolve(cfg, pending, _check(pending))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_parts_merge_in_order_and_a_missing_part_keeps_the_old_split(tmp_path):
    folder = tmp_path / "data"
    for name in ("a", "b"):
        (folder / name).mkdir(parents=True)
        for i in range(6):
            (folder / name / f"{i}.png").write_bytes(_png(10 * i + (name == "b")))
    cfg = DataConfig(source="imagefolder", path=str(folder), k=2, pool_per_class=1,
                     val_per_class=1, test_per_class=2, channels=1)
    pending = list_source(cfg)
    listing = resolve(cfg, pending, _check(pending))
    splits = make_splits(listing, cfg, seed=5)
    rows = split_rows(listing, splits, "train")
    parts, real = tmp_path / "run" / "real" / "_parts", tmp_path / "run" / "real"
    write = WriteRealParts(LOCAL, parts, 1, 0)
    write(rows.slice(2)), write(rows.slice(0, 2))  # blocks may finish in any order
    MergeRealSplits(parts, real)(pa.table({col.SPLIT: ["train"], "rows": [4]}))
    got = pq.read_table(real / "train.parquet")
    assert got[col.SAMPLE_ID].to_pylist() == [listing.sample_ids[i] for i in splits.train]
    assert got[col.IMAGE].to_pylist() == [(folder / s.split("/data/")[1]).read_bytes()
                                          for s in got[col.SOURCE].to_pylist()]
    before = (real / "train.parquet").read_bytes()
    (parts / "train-0000000002.parquet").unlink()
    with pytest.raises(DataError, match=r"real/train: 2 rows in its parts, 4 expected"):
        MergeRealSplits(parts, real)(pa.table({col.SPLIT: ["train"], "rows": [4]}))
    assert (real / "train.parquet").read_bytes() == before  # the file written stays whole
    assert [p.name for p in real.iterdir() if p.is_file()] == ["train.parquet"]  # no temporary


def test_an_image_changed_since_the_listing_is_an_error_naming_it(tmp_path):
    (tmp_path / "data" / "a").mkdir(parents=True)
    for i in range(3):
        (tmp_path / "data" / "a" / f"{i}.png").write_bytes(_png(i))
    cfg = DataConfig(source="imagefolder", path=str(tmp_path / "data"), k=1, pool_per_class=0,
                     val_per_class=1, test_per_class=1)
    pending = list_source(cfg)
    listing = resolve(cfg, pending, _check(pending))
    rows = split_rows(listing, make_splits(listing, cfg, seed=0), "test")
    (tmp_path / "data" / "a" / rows[col.SOURCE][0].as_py().rsplit("/", 1)[1]).unlink()
    with pytest.raises(DataError, match=r"\.png could be read when the data was listed but not"):
        WriteRealParts(LOCAL, tmp_path / "parts", 3, 0)(rows)
    assert not (tmp_path / "parts").exists()


def test_the_listing_keeps_what_the_in_memory_loader_keeps(tmp_path):
    """ImageFolder with context folders (data.group=folder) and a Parquet table with nulls, an
    unreadable row and a class subset: the same rows, labels, sources, groups, skips, channels."""
    from raysynth.data import load_dataset

    for cls, ctx in (("cat", "snow"), ("cat", ""), ("dog", "grass"), ("dog", "snow")):
        folder = tmp_path / "tree" / cls / ctx
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(2):
            (folder / f"{ctx or 'plain'}{i}.png").write_bytes(_png(40 * i + len(ctx)))
    (tmp_path / "tree" / "dog" / "bad.png").write_bytes(b"\x89PNG broken")
    pq.write_table(pa.table({
        col.IMAGE: pa.array([_png(1), None, _png(3)[:25], _png(4), _png(5), _png(6)], pa.binary()),
        col.LABEL: pa.array([2, 0, 0, 1, None, 0], pa.int64())}), tmp_path / "t.parquet")
    for cfg, skips in (
            (DataConfig(source="imagefolder", path=str(tmp_path / "tree"), group="folder"), 1),
            (DataConfig(source="parquet", path=str(tmp_path / "t.parquet"), classes=("2", "0")),
             3)):  # null image, null label, unreadable; label 1 is not selected
        pending = list_source(cfg)
        got, want = resolve(cfg, pending, _check(pending)), load_dataset(cfg)
        assert got.labels.tolist() == want.labels.tolist() and len(got) > 0
        assert (got.sources, got.group, got.class_names, got.skipped, got.channels) == (
            want.sources, want.group, want.class_names, want.skipped, want.channels)
        assert got.sample_ids == want.sample_ids and len(got.skipped) == skips
        assert set(got.group) == ({"", "snow", "grass"} if skips == 1 else {""})
