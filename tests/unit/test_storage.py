"""Locations: a local path stays a ``Path``, a URI becomes a ``RemotePath`` on pyarrow's filesystem
(here a real S3 server, moto's, on loopback), an unknown scheme is an error and never a local
folder; the durable writer's whole-object puts show nothing of a failed or unfinished write; the
run log and the stale moves work on the store."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pytest

from raysynth.files import atomic_open, atomic_save_npz, atomic_write_json, cached, move_aside
from raysynth.rundir import RunDir
from raysynth.storage import RemotePath, StorageError, fs_path, path


def test_local_paths_and_file_uris_stay_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert path("runs/x") == tmp_path / "runs" / "x"
    assert path(f"file://{tmp_path}/y") == tmp_path / "y"
    fs, where = fs_path(tmp_path / "z")
    assert isinstance(fs, pafs.LocalFileSystem) and where == str(tmp_path / "z")


@pytest.mark.parametrize("uri", ["foo://bucket/run", "s4://bucket/run", "s3://"])
def test_an_unknown_or_empty_uri_is_an_error_not_a_local_folder(tmp_path, monkeypatch, uri):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StorageError, match="s3://|bucket"):
        RunDir(uri)
    assert os.listdir(tmp_path) == []  # no ./foo: folder


def test_s3_uri_reads_the_endpoint_from_the_environment(s3_root):
    assert isinstance(s3_root, RemotePath) and str(s3_root).startswith("s3://raysynth-test/")
    fs, where = fs_path(s3_root / "a" / "b.txt")
    assert isinstance(fs, pafs.S3FileSystem) and where.endswith("/a/b.txt")
    (s3_root / "a" / "b.txt").write_text("hello")
    assert path(str(s3_root / "a" / "b.txt")).read_text() == "hello"  # a new object, same store
    assert [p.name for p in s3_root.glob("a/*.txt")] == ["b.txt"]
    assert (s3_root / "a").is_dir() and not (s3_root / "a").is_file()


def test_a_failed_write_leaves_the_old_object_and_an_unfinished_one_is_invisible(s3_root):
    target = s3_root / "x.json"
    atomic_write_json(target, {"v": 1})
    with pytest.raises(RuntimeError), atomic_open(target, "w") as f:
        f.write('{"v": 2')
        assert target.read_text() == '{\n  "v": 1\n}'  # nothing of the new one shown yet
        raise RuntimeError("killed mid-write")
    assert target.read_text() == '{\n  "v": 1\n}'
    assert [p.name for p in s3_root.iterdir()] == ["x.json"]  # no temporary object either
    fresh = s3_root / "never.bin"
    with pytest.raises(RuntimeError), atomic_open(fresh) as f:
        f.write(b"part")
        raise RuntimeError
    assert not fresh.exists()


def test_cached_computes_once_and_npz_round_trips_on_s3(s3_root):
    calls = []
    compute = lambda: calls.append(1) or {"acc": 0.5}  # noqa: E731
    assert cached(s3_root / "r.json", compute) == {"acc": 0.5}
    assert cached(s3_root / "r.json", compute) == {"acc": 0.5} and calls == [1]
    atomic_save_npz(s3_root / "e.npz", z=np.arange(4.0))
    with (s3_root / "e.npz").open("rb") as f:
        assert np.load(f)["z"].tolist() == [0.0, 1.0, 2.0, 3.0]


def test_move_aside_of_a_folder_keeps_every_object(s3_root):
    for name in ("a.txt", "deep/b.txt"):
        (s3_root / "tune" / name).write_text(name)
    move_aside(s3_root / "tune", s3_root / "stale" / "t" / "tune")
    assert not (s3_root / "tune").exists()
    moved = s3_root / "stale" / "t" / "tune"
    assert (moved / "a.txt").read_text() == "a.txt"
    assert (moved / "deep" / "b.txt").read_text() == "deep/b.txt"


def test_the_run_log_on_s3_is_whole_and_kept_across_a_resume(s3_root):
    run = RunDir(s3_root)
    logger = logging.getLogger("raysynth.test_storage")
    for text in ("first", "second"):
        handler = run.attach_log()
        logger.info("run %s", text)
        logging.getLogger("raysynth").removeHandler(handler)
        handler.close()
    lines = run.log_path.read_text().splitlines()
    assert [line.split(": ", 1)[1] for line in lines] == ["run first", "run second"]


def test_remote_paths_cannot_become_local_paths_by_accident(s3_root):
    with pytest.raises(TypeError):
        Path(s3_root)


def test_a_checkpoint_on_s3_is_replaced_only_when_its_pointer_moves(s3_root):
    import torch

    from raysynth.train.checkpoint import (
        _write_files,
        has_checkpoint,
        load_model,
        read_state,
        restore_training,
        write_checkpoint,
    )
    from raysynth.train.models import build_model

    cfg = {"kind": "mlp", "in_dim": 4, "num_classes": 3, "hidden": 8}
    folder = s3_root / "train" / "ckpt"
    models = []
    for epoch in (0, 1):
        torch.manual_seed(epoch)
        models.append(build_model(cfg))
        opt = torch.optim.SGD(models[-1].parameters(), lr=0.1, momentum=0.9)
        write_checkpoint(folder, models[-1], cfg, opt, {"epoch": epoch})
    # a writer killed after its files and before the pointer: readers still see epoch 1
    torch.manual_seed(7)
    _write_files(folder / "v-9", build_model(cfg), cfg, None, {"epoch": 2})
    assert has_checkpoint(folder) and read_state(folder)["epoch"] == 1
    loaded = load_model(folder)
    for a, b in zip(loaded.parameters(), models[1].parameters(), strict=True):
        assert torch.equal(a, b)
    fresh = build_model(cfg)
    state = restore_training(folder, fresh, torch.optim.SGD(fresh.parameters(), lr=0.1))
    assert state["epoch"] == 1 and torch.equal(next(fresh.parameters()), next(models[1].parameters()))
    # the current version and the killed writer's orphan; the epoch-0 version was deleted
    assert len([p for p in folder.iterdir() if p.name.startswith("v-")]) == 2


def test_data_path_may_be_an_s3_imagefolder_or_parquet(s3_root):
    """data.path as a URI: an ImageFolder and a Parquet table in the bucket load as they would
    from a local folder (the driver reads them; the data stage writes real/ to the run
    directory, from where every node reads)."""
    import io

    from PIL import Image

    from raysynth.config import build_config, replace
    from raysynth.data import load_dataset
    from raysynth.data.store import read_table, real_table, write_table_atomic

    def png(v: int) -> bytes:
        buf = io.BytesIO()
        Image.new("L", (8, 8), v).save(buf, format="PNG")
        return buf.getvalue()

    for cls, vals in (("a", (10, 20)), ("b", (200,))):
        for v in vals:
            (s3_root / "imgs" / cls / f"{v}.png").write_bytes(png(v))
    (s3_root / "imgs" / "a" / ".hidden.png").write_bytes(png(0))
    cfg = replace(build_config("digits"), **{"data.source": "imagefolder",
                                            "data.path": str(s3_root / "imgs"),
                                            "data.classes": [], "data.image_size": 8,
                                            "data.channels": 1})
    images = load_dataset(cfg.data)
    assert images.class_names == ["a", "b"] and images.labels.tolist() == [0, 0, 1]
    write_table_atomic(real_table(images, [0, 1, 2], "train"), s3_root / "t" / "x.parquet")
    assert read_table(str(s3_root / "t")).num_rows == 3  # a Parquet folder by URI


def test_the_tune_ledger_on_s3_appends_whole_and_stays_confined(s3_root):
    import json

    from raysynth.tune.ledger import _append, confined_dir, read_ledger, relative_dir

    ledger = s3_root / "tune" / "trials.jsonl"
    for i in range(2):
        _append(ledger, json.dumps({"trial_id": f"t{i}", "dir": f"search/t{i}"}) + "\n")
    assert [r["trial_id"] for r in read_ledger(ledger)] == ["t0", "t1"]
    root = s3_root / "tune"
    assert relative_dir(f"{root.path}/search/t0", root) == "search/t0"
    assert confined_dir("search/t0", root) == root / "search" / "t0"
    for bad in ("../other-run/tune/x", "/etc", "", None):
        assert confined_dir(bad, root) is None
