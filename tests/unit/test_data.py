"""Data stage: PNG codec, loaders (digits, ImageFolder, Parquet), splits, run-directory store."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from raysynth import columns as col
from raysynth.config.schema import DataConfig
from raysynth.data import (
    ImageSet,
    Splits,
    decode_png,
    encode_png,
    load_dataset,
    long_tail_counts,
    long_tail_groups,
    make_splits,
    read_classes,
    read_real,
    read_real_splits,
    read_table,
    real_exists,
    to_tensor_array,
    write_real,
)
from raysynth.data.store import REAL_SCHEMA
from raysynth.errors import DataError, RunDirError

RNG = np.random.default_rng(0)


def _tiny_set(per_class: int, num_classes: int = 3, size: int = 4) -> ImageSet:
    """Images whose first pixel encodes their index, so rows can be told apart after a trip."""
    n = per_class * num_classes
    images = []
    for i in range(n):
        px = np.full((size, size), i % 256, dtype=np.uint8)
        px[0, 0] = i // 256
        images.append(encode_png(px))
    return ImageSet(
        images=images,
        labels=np.repeat(np.arange(num_classes), per_class),
        class_names=[f"c{c}" for c in range(num_classes)],
        sources=[f"tiny:{i}" for i in range(n)],
        skipped=[("tiny:bad", "not a readable image: test")],
        channels=1,
    )


def _save(path: Path, pixels: np.ndarray, fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt)


# images --------------------------------------------------------------------------------------


def test_png_round_trip_grey_and_rgb_is_exact() -> None:
    grey = RNG.integers(0, 256, (7, 5), dtype=np.uint8)
    rgb = RNG.integers(0, 256, (6, 9, 3), dtype=np.uint8)
    np.testing.assert_array_equal(decode_png(encode_png(grey)), grey[:, :, None])
    np.testing.assert_array_equal(decode_png(encode_png(grey[:, :, None])), grey[:, :, None])
    np.testing.assert_array_equal(decode_png(encode_png(rgb)), rgb)
    assert encode_png(rgb)[:8] == b"\x89PNG\r\n\x1a\n"


def test_decode_converts_channels_and_resizes() -> None:
    rgb = np.zeros((4, 6, 3), dtype=np.uint8)
    rgb[..., 0] = 255  # pure red: ITU-R 601 luma 0.299 * 255 = 76
    grey = decode_png(encode_png(rgb), channels=1)
    assert grey.shape == (4, 6, 1) and np.all(grey == 76)
    back = decode_png(encode_png(grey), channels=3, size=8)
    assert back.shape == (8, 8, 3) and np.all(back == 76)
    flat = np.full((16, 16), 200, np.uint8)
    np.testing.assert_array_equal(decode_png(encode_png(flat), size=4), np.full((4, 4, 1), 200))


def test_decode_composites_alpha_on_white_and_scales_16_bit() -> None:
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)  # fully transparent black
    buf = io.BytesIO()
    Image.fromarray(rgba).save(buf, format="PNG")
    assert np.all(decode_png(buf.getvalue()) == 255)
    wide = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    buf = io.BytesIO()
    Image.fromarray(wide).save(buf, format="PNG")
    np.testing.assert_array_equal(decode_png(buf.getvalue())[..., 0], [[0, 100, 255]])


def test_decode_corrupt_bytes_raise_data_error() -> None:
    with pytest.raises(DataError, match="is not a readable image"):
        decode_png(b"not an image at all")
    with pytest.raises(DataError, match="empty"):
        decode_png(b"")
    with pytest.raises(DataError, match="x.png is not a readable image"):
        decode_png(encode_png(np.zeros((8, 8), np.uint8))[:40], name="x.png")


def test_to_tensor_array_layout_and_scale() -> None:
    a = np.array([[0, 255], [51, 102]], dtype=np.uint8)
    out = to_tensor_array([encode_png(a), encode_png(255 - a)], channels=3)
    assert out.shape == (2, 3, 2, 2) and out.dtype == np.float32
    np.testing.assert_allclose(out[0, 1], a / 255.0, rtol=0, atol=1e-7)
    np.testing.assert_allclose(out[1, 2], (255 - a) / 255.0, rtol=0, atol=1e-7)
    with pytest.raises(DataError, match="data.image_size"):
        to_tensor_array([encode_png(a), encode_png(np.zeros((3, 3), np.uint8))], channels=1)
    assert to_tensor_array([], channels=1, size=4).shape == (0, 1, 4, 4)


# sources -------------------------------------------------------------------------------------


def test_digits_loads_all_images_scaled() -> None:
    data = load_dataset(DataConfig())
    assert len(data) == 1797 and data.class_names == [str(i) for i in range(10)]
    assert data.channels == 1 and data.sources[5] == "digits:5"
    assert np.bincount(data.labels).tolist()[0] == 178
    first = decode_png(data.images[0])
    assert first.shape == (8, 8, 1)
    # sklearn digits image 0, row 0 is [0 0 5 13 9 1 0 0]: 5 * 255 / 16 = 79.69 -> 80
    assert first[0, :, 0].tolist() == [0, 0, 80, 207, 143, 16, 0, 0]


def test_digits_class_subset_relabels_in_given_order() -> None:
    data = load_dataset(DataConfig(classes=("7", "2")))
    assert data.class_names == ["7", "2"]
    assert set(data.labels.tolist()) == {0, 1}
    full = load_dataset(DataConfig())
    src = {s: y for s, y in zip(full.sources, full.labels)}
    for s, y in zip(data.sources, data.labels):
        assert full.class_names[src[s]] == data.class_names[y]
    assert len(data) == int(np.sum(full.labels == 7) + np.sum(full.labels == 2))


def test_unknown_class_lists_the_available_ones() -> None:
    with pytest.raises(DataError, match=r"'x'.*available classes: '0', '1'"):
        load_dataset(DataConfig(classes=("1", "x")))


def test_digits_honours_channels_and_size() -> None:
    data = load_dataset(DataConfig(channels=3, image_size=16, classes=("0",)))
    assert data.channels == 3 and decode_png(data.images[0]).shape == (16, 16, 3)


def _folder(tmp_path: Path) -> Path:
    root = tmp_path / "imgs"
    for i in range(3):
        _save(root / "cat" / f"{i}.png", np.full((10, 12, 3), 40 * i, np.uint8))
    _save(root / "dog" / "a.JPG", np.full((10, 12, 3), 200, np.uint8), fmt="JPEG")
    _save(root / "dog" / "sub" / "b.bmp", np.full((10, 12), 100, np.uint8), fmt="BMP")
    (root / "dog" / "notes.txt").write_text("not an image")
    return root


def test_imagefolder_skips_corrupt_and_empty_files(tmp_path: Path, caplog) -> None:
    root = _folder(tmp_path)
    (root / "cat" / "empty.png").write_bytes(b"")
    (root / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    with caplog.at_level(logging.WARNING, logger="raysynth.data"):
        data = load_dataset(DataConfig(source="imagefolder", path=str(root), image_size=6))
    assert data.class_names == ["cat", "dog"] and data.channels == 3
    assert data.labels.tolist() == [0, 0, 0, 1, 1]
    assert [Path(s).name for s in data.sources] == ["0.png", "1.png", "2.png", "a.JPG", "b.bmp"]
    skipped = {Path(s).name: reason for s, reason in data.skipped}
    assert set(skipped) == {"empty.png", "broken.jpg"}
    assert "empty" in skipped["empty.png"] and "not a readable image" in skipped["broken.jpg"]
    assert "empty.png" in caplog.text and "broken.jpg" in caplog.text
    assert decode_png(data.images[4]).shape == (6, 6, 3)
    np.testing.assert_array_equal(decode_png(data.images[1]), np.full((6, 6, 3), 40))


def test_imagefolder_empty_class_folder_is_an_error(tmp_path: Path) -> None:
    root = _folder(tmp_path)
    (root / "emu").mkdir()
    (root / "emu" / "bad.png").write_bytes(b"junk")
    with pytest.raises(DataError, match=r"emu.*add images.*data\.classes"):
        load_dataset(DataConfig(source="imagefolder", path=str(root)))
    ok = load_dataset(DataConfig(source="imagefolder", path=str(root), classes=("dog", "cat")))
    assert ok.class_names == ["dog", "cat"] and ok.labels.tolist() == [0, 0, 1, 1, 1]


def test_imagefolder_bad_layouts(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(DataConfig(source="imagefolder", path=str(tmp_path / "nope")))
    _save(tmp_path / "flat" / "a.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(DataError, match="(?s)no class sub-folders.*cat/"):
        load_dataset(DataConfig(source="imagefolder", path=str(tmp_path / "flat")))


def test_parquet_source_with_names_labels_and_corrupt_rows(tmp_path: Path) -> None:
    grey = [encode_png(np.full((5, 5), v, np.uint8)) for v in (10, 20, 30, 40)]
    table = pa.table(
        {
            col.IMAGE: grey + [b"corrupt"],
            col.LABEL: [1, 0, 1, 0, 1],
            col.CLASS_NAME: ["b", "a", "b", "a", "b"],
        }
    )
    (tmp_path / "pq").mkdir()
    pq.write_table(table.slice(0, 3), tmp_path / "pq" / "part-0.parquet")
    pq.write_table(table.slice(3), tmp_path / "pq" / "part-1.parquet")
    pq.write_table(table, tmp_path / "pq" / ".hidden.parquet")  # left out
    data = load_dataset(DataConfig(source="parquet", path=str(tmp_path / "pq")))
    assert data.class_names == ["a", "b"] and data.channels == 1
    assert data.labels.tolist() == [1, 0, 1, 0]
    assert [decode_png(p)[0, 0, 0] for p in data.images] == [10, 20, 30, 40]
    assert len(data.skipped) == 1 and data.skipped[0][0].endswith("part-1.parquet:1")
    sub = load_dataset(DataConfig(source="parquet", path=str(tmp_path / "pq"), classes=("b",)))
    assert sub.class_names == ["b"] and sub.labels.tolist() == [0, 0]


def test_parquet_source_labels_only_and_struct_images(tmp_path: Path) -> None:
    pngs = [encode_png(np.full((4, 4), v, np.uint8)) for v in range(6)]
    struct = pa.array(
        [{"bytes": b, "path": None} for b in pngs],
        pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
    )  # the Hugging Face datasets layout of an image column
    pq.write_table(
        pa.table({col.IMAGE: struct, col.LABEL: [5, 3, 5, 3, 9, 9]}), tmp_path / "a.parquet"
    )
    data = load_dataset(DataConfig(source="parquet", path=str(tmp_path / "a.parquet")))
    assert data.class_names == ["3", "5", "9"] and data.labels.tolist() == [1, 0, 1, 0, 2, 2]
    assert data.images == pngs  # already grey PNGs of the right size: re-encoding is lossless


def test_parquet_source_inconsistent_label_and_name(tmp_path: Path) -> None:
    png = encode_png(np.zeros((2, 2), np.uint8))
    table = pa.table({col.IMAGE: [png, png], col.LABEL: [0, 0], col.CLASS_NAME: ["a", "b"]})
    pq.write_table(table, tmp_path / "t.parquet")
    with pytest.raises(DataError, match="t.parquet:1: class_name 'b' with label 0.*label 0 is 'a'"):
        load_dataset(DataConfig(source="parquet", path=str(tmp_path / "t.parquet")))


def test_parquet_source_missing_columns(tmp_path: Path) -> None:
    pq.write_table(pa.table({"pixels": [b"x"], "target": [1]}), tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"pixels, target.*'image'.*'label'.*'class_name'"):
        load_dataset(DataConfig(source="parquet", path=str(tmp_path / "bad.parquet")))


# splits --------------------------------------------------------------------------------------


def test_splits_disjoint_exact_sizes_and_deterministic() -> None:
    data = _tiny_set(per_class=20)
    cfg = DataConfig(k=4, pool_per_class=3, val_per_class=2, test_per_class=5)
    s = make_splits(data, cfg, seed=0)
    counts = s.counts(data.labels, 3)
    assert counts == {"train": [4] * 3, "pool": [3] * 3, "val": [2] * 3, "test": [5] * 3}
    every = np.concatenate([s.train, s.pool, s.val, s.test])
    assert len(set(every.tolist())) == len(every) == 42
    again = make_splits(data, cfg, seed=0)
    for name in ("train", "pool", "val", "test"):
        np.testing.assert_array_equal(getattr(s, name), getattr(again, name))
    other = make_splits(data, cfg, seed=1)
    assert set(other.test.tolist()) != set(s.test.tolist())
    assert s.groups == {}


def test_test_val_pool_fixed_when_k_changes() -> None:
    data = _tiny_set(per_class=20)
    small = make_splits(
        data, DataConfig(k=2, pool_per_class=3, val_per_class=2, test_per_class=5), seed=7
    )
    big = make_splits(
        data, DataConfig(k=8, pool_per_class=3, val_per_class=2, test_per_class=5), seed=7
    )
    lt = make_splits(
        data,
        DataConfig(k=8, pool_per_class=3, val_per_class=2, test_per_class=5, imbalance_factor=4),
        seed=7,
    )
    for name in ("test", "val", "pool"):
        np.testing.assert_array_equal(getattr(small, name), getattr(big, name))
        np.testing.assert_array_equal(getattr(lt, name), getattr(big, name))
    assert set(small.train.tolist()) < set(big.train.tolist())  # a prefix per class


def test_too_few_images_names_class_and_numbers() -> None:
    data = _tiny_set(per_class=10)
    cfg = DataConfig(k=4, pool_per_class=3, val_per_class=2, test_per_class=5)
    with pytest.raises(DataError) as err:
        make_splits(data, cfg, seed=0)
    msg = str(err.value)
    assert "class 'c0' has 10 images but the split needs 14" in msg
    assert "test 5 + val 2 + pool 3 + train 4" in msg
    assert "data.k" in msg and "data.test_per_class" in msg


def test_long_tail_counts_hand_case() -> None:
    counts = long_tail_counts(10, 100, 10)
    # 100 * 10 ** (-c / 9): 100, 77.4, 59.9, 46.4, 35.9, 27.8, 21.5, 16.7, 12.9, 10
    assert counts == [100, 77, 60, 46, 36, 28, 22, 17, 13, 10]
    assert long_tail_counts(3, 4, 100) == [4, 1, 1]  # floor of 1 image
    assert long_tail_counts(1, 5, 10) == [5]
    assert long_tail_counts(4, 8, 1) == [8, 8, 8, 8]


def test_long_tail_groups_auto_and_explicit() -> None:
    counts = long_tail_counts(10, 100, 10)
    assert long_tail_groups(counts) == {
        "many": [0, 1, 2],
        "medium": [3, 4, 5, 6],
        "few": [7, 8, 9],
    }
    assert long_tail_groups(counts, many_threshold=50, few_threshold=20) == {
        "many": [0, 1, 2],
        "medium": [3, 4, 5, 6],
        "few": [7, 8, 9],
    }
    assert long_tail_groups(counts, many_threshold=30, few_threshold=15) == {
        "many": [0, 1, 2, 3, 4],
        "medium": [5, 6, 7],
        "few": [8, 9],
    }


def test_long_tailed_splits_use_the_profile_and_groups() -> None:
    data = _tiny_set(per_class=30, num_classes=4)
    cfg = DataConfig(k=9, pool_per_class=2, val_per_class=2, test_per_class=2, imbalance_factor=9)
    s = make_splits(data, cfg, seed=3)
    assert s.counts(data.labels, 4)["train"] == [9, 4, 2, 1]
    assert s.groups == {"many": [0], "medium": [1, 2], "few": [3]}


# store ---------------------------------------------------------------------------------------


def test_write_real_round_trip(tmp_path: Path) -> None:
    data = _tiny_set(per_class=12)
    splits = make_splits(
        data, DataConfig(k=3, pool_per_class=2, val_per_class=2, test_per_class=4), 0
    )
    out = write_real(tmp_path / "run", data, splits)
    assert out == tmp_path / "run" / "real" and real_exists(tmp_path / "run")
    assert sorted(p.name for p in out.iterdir()) == [
        "classes.json",
        "pool.parquet",
        "test.parquet",
        "train.parquet",
        "val.parquet",
    ]
    for name in ("train", "pool", "val", "test"):
        idx = getattr(splits, name)
        back = read_real(tmp_path / "run", name)
        assert back.images == [data.images[i] for i in idx]
        np.testing.assert_array_equal(back.labels, data.labels[idx])
        assert back.sample_ids == [f"real-{i:06d}" for i in idx]
        assert back.sources == [data.sources[i] for i in idx]
        assert back.class_names == data.class_names and back.channels == 1
    table = read_table(out / "train.parquet")
    assert table.schema.equals(REAL_SCHEMA) and tuple(table.column_names) == col.REAL_COLUMNS
    assert set(table.column(col.SPLIT).to_pylist()) == {"train"}
    assert table.column(col.CLASS_NAME).to_pylist() == [
        data.class_names[y] for y in data.labels[splits.train]
    ]
    meta = read_classes(tmp_path / "run")
    assert meta["skipped"] == [["tiny:bad", "not a readable image: test"]]
    assert meta["counts"]["test"] == [4, 4, 4]
    assert read_table(out, columns=[col.SAMPLE_ID]).num_rows == 3 * (3 + 2 + 2 + 4)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_read_real_splits_rebuilds_indices(tmp_path: Path) -> None:
    data = _tiny_set(per_class=10)
    cfg = DataConfig(k=4, pool_per_class=1, val_per_class=1, test_per_class=2, imbalance_factor=4)
    splits = make_splits(data, cfg, 5)
    write_real(tmp_path, data, splits)
    whole, again = read_real_splits(tmp_path)
    assert isinstance(again, Splits) and again.groups == splits.groups
    assert again.counts(whole.labels, 3) == splits.counts(data.labels, 3)
    assert [whole.images[i] for i in again.test] == [data.images[i] for i in splits.test]


def test_read_real_missing_run_dir_is_a_run_dir_error(tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match="classes.json is missing"):
        read_real(tmp_path, "train")
