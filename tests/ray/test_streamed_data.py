"""The streamed data stage (issue 15): an ImageFolder tree or a Parquet table is listed on the
driver and read, checked, converted and written by Ray Data tasks. The real splits it writes are
the ones the in-memory loader writes (same ids, labels, images, order, skipped list), and the
driver opens no image while it runs."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from raysynth import columns as col
from raysynth.config import build_config
from raysynth.data import SPLIT_NAMES, encode_png, load_dataset, make_splits, write_real
from raysynth.data.store import read_table
from raysynth.flows.prepare import prepare_real
from raysynth.rundir import RunDir

SPLIT = {"data.k": 4, "data.pool_per_class": 3, "data.val_per_class": 3,
         "data.test_per_class": 5}


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The bundled digits as an ImageFolder tree (one file unreadable) and as two Parquet files
    (label + class_name; one row truncated, one image null)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pngs = [encode_png(np.rint(im * 255 / 16).astype(np.uint8)) for im in bunch.images]
    root = tmp_path_factory.mktemp("digits")
    for i, (png, y) in enumerate(zip(pngs, bunch.target)):
        folder = root / "folder" / f"d{y}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:04d}.png").write_bytes(png)
    (root / "folder" / "d3" / "0000-broken.png").write_bytes(pngs[3][:30])
    images: list[bytes | None] = list(pngs)
    images[5] = pngs[5][:40]  # truncated: skipped as unreadable
    images[11] = None  # null: skipped as "no image bytes"
    table = pa.table({col.IMAGE: pa.array(images, pa.binary()),
                      col.LABEL: pa.array(bunch.target, pa.int64()),
                      col.CLASS_NAME: [f"digit-{y}" for y in bunch.target]})
    (root / "table").mkdir()
    pq.write_table(table.slice(0, 900), root / "table" / "a.parquet", row_group_size=300)
    pq.write_table(table.slice(900), root / "table" / "b.parquet", row_group_size=300)
    return root


def _in_memory(cfg, out):
    """``real/`` as the in-memory loader writes it (today's path, decoded on the driver)."""
    images = load_dataset(cfg.data)
    write_real(out, images, make_splits(images, cfg.data, cfg.seed))
    return out


def _streamed(cfg, out, monkeypatch):
    """``real/`` as the data stage writes it, counting every image the driver opens."""
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(a) or real_open(*a, **k))
    run = RunDir(out)
    run.init(cfg)
    prepare_real(run, cfg)
    monkeypatch.setattr(Image, "open", real_open)
    return out, len(opened)


def _same_real(a, b):
    for split in SPLIT_NAMES:
        want, got = (read_table(p / "real" / f"{split}.parquet") for p in (a, b))
        assert got.num_rows == want.num_rows > 0
        for name in want.column_names:  # ids, labels, names, PNG bytes, split, source, group
            assert got[name].to_pylist() == want[name].to_pylist(), (split, name)
    meta_a, meta_b = (json.loads((p / "real" / "classes.json").read_text()) for p in (a, b))
    assert meta_b == meta_a
    assert not (b / "real" / "_parts").exists()  # the scratch parts are gone
    return meta_a


def test_imagefolder_streamed_splits_equal_todays_and_driver_opens_no_image(
        ray_local, digits, tmp_path, monkeypatch):
    cfg = build_config(overrides={**SPLIT, "seed": 7, "data.source": "imagefolder",
                                  "data.path": str(digits / "folder"), "data.image_size": 12})
    old = _in_memory(cfg, tmp_path / "old")
    new, opened = _streamed(cfg, tmp_path / "new", monkeypatch)
    assert opened == 0  # every image was read, checked and converted in Ray tasks
    meta = _same_real(old, new)
    assert meta["channels"] == 3 and meta["num_images"] == 1797
    assert [s.rsplit("/", 2)[-2:] for s, _ in meta["skipped"]] == [["d3", "0000-broken.png"]]
    train = pq.read_table(new / "real" / "train.parquet")
    assert np.bincount(train[col.LABEL].to_numpy()).tolist() == [4] * 10


def test_parquet_streamed_splits_equal_todays(ray_local, digits, tmp_path, monkeypatch):
    classes = ("digit-7", "digit-0", "digit-5", "digit-1")  # a subset, in the config's order
    cfg = build_config(overrides={**SPLIT, "data.source": "parquet", "seed": 3,
                                  "data.path": str(digits / "table"), "data.classes": classes})
    old = _in_memory(cfg, tmp_path / "old")
    new, opened = _streamed(cfg, tmp_path / "new", monkeypatch)
    assert opened == 0
    meta = _same_real(old, new)
    assert meta["class_names"] == list(classes) and meta["channels"] == 1  # grey, found by tasks
    reasons = sorted(r.split(":")[0] for _, r in meta["skipped"])
    assert reasons == ["no image bytes (null)", "not a readable image"]  # rows 11 and 5


def test_an_s3_imagefolder_is_read_by_the_tasks(ray_local, digits, s3_root, tmp_path, monkeypatch):
    """data.path ``s3://…``: the tasks read through the filesystem the driver opened (its endpoint
    and keys travel with it, so a worker started without them in its environment reads too)."""
    for folder in sorted((digits / "folder").iterdir())[:3]:
        for f in sorted(folder.iterdir())[:20]:
            (s3_root / "imgs" / folder.name / f.name).write_bytes(f.read_bytes())
    cfg = build_config(overrides={**SPLIT, "data.source": "imagefolder",
                                  "data.path": str(s3_root / "imgs")})
    old = _in_memory(cfg, tmp_path / "old")
    new, opened = _streamed(cfg, tmp_path / "new", monkeypatch)
    assert opened == 0
    assert _same_real(old, new)["class_names"] == ["d0", "d1", "d2"]


def _blob(args) -> bytes | str:
    """What an ``Image.open`` call opened: the bytes of a file-like object, or the path."""
    src = args[0] if args else b""
    return src.getvalue() if hasattr(src, "getvalue") else str(src)


def test_a_streamed_classifier_run_decodes_no_real_image_on_the_driver(
        ray_local, digits, tmp_path, monkeypatch):
    """Flow ``classifier`` with ``train.stream: always`` from an ImageFolder, data stage to
    report: the real splits are written by Ray Data tasks, read back as their small columns, and
    the real-split classifier (the filter's embedder here) and both final classifiers read them
    in the Train workers — the driver opens no real image. (It opens synthetic ones: the sample
    grid and the recognition rate of the synthesis stage.)"""
    from tiny_models import save_sd

    from raysynth.flows.run import run_flow
    from raysynth.generate.table import read_table as read_synthetic

    sd = save_sd(tmp_path / "sd")
    cfg = build_config(overrides={
        "flow": "classifier", "seed": 5, "data.source": "imagefolder",
        "data.path": str(digits / "folder"), "data.classes": ["d0", "d1", "d7"],
        "data.image_size": 16, "data.k": 6, "data.pool_per_class": 0,
        "data.val_per_class": 2, "data.test_per_class": 3,
        "synthesis.quota": "fixed", "synthesis.per_class": 2,
        "synthesis.generator.kind": "text2image", "synthesis.generator.model": sd,
        "synthesis.generator.num_steps": 2, "synthesis.generator.image_size": 16,
        "synthesis.pool.batch_size": 6, "synthesis.pool.cpus_per_actor": 0.5,
        "filter.embedder": "classifier", "filter.max_rounds": 1,
        "filter.pool.cpus_per_actor": 0.5,
        "encoder.arch": "small_cnn", "encoder.width": 4, "encoder.feat_dim": 8,
        "encoder.augment": "none", "end_to_end.epochs": 1, "end_to_end.batch_size": 8,
        "protocol.n_contr": 1, "train.stream": "always", "train.num_workers": 1})
    opened: list[bytes | str] = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(_blob(a))
                        or real_open(*a, **k))
    report = run_flow(cfg, tmp_path / "run")
    monkeypatch.setattr(Image, "open", real_open)

    out = tmp_path / "run"
    real = {b for s in SPLIT_NAMES
            for b in read_table(out / "real" / f"{s}.parquet")[col.IMAGE].to_pylist()}
    synthetic = set(read_synthetic(out / "synthetic")[col.IMAGE].to_pylist())
    assert len(real) == 3 * (6 + 2 + 3) and synthetic
    assert not [b for b in opened if b in real or str(digits) in str(b)]  # no real image
    assert opened and all(b in synthetic for b in opened)  # the sample grid, recognition rate
    assert (out / "train" / "real_classifier").is_dir()
    for variant in ("real_only", "with_synthetic"):
        assert 0.0 <= report["classifier"][variant]["overall"]["mean"] <= 1.0
    assert report["data"]["counts"]["train"] == [6, 6, 6]
