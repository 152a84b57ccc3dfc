"""Hostile run directories through the real CLI: `--out` naming a source tree or a folder of other
files, a run whose meta.json was deleted, a config changed between runs with and without
`--resume`, `raysynth train` with new weights. One tiny digits run at the smoke budget is made
once and copied for each case (what was kept is told by file mtimes and bytes)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ARGS = ["--set", "budget=smoke", "--set", "data.classes=0,1,2", "--set", "data.k=8",
        "--set", "synthesis.generator.pixel_train_steps=40",
        "--set", "synthesis.generator.pixel_channels=[8,16]",
        "--set", "synthesis.generator.num_steps=8", "--set", "filter.enabled=false",
        "--set", "tune.num_samples=2", "--set", "tune.max_concurrent=1",
        "--set", "encoder.width=8", "--set", "encoder.epochs=10", "--set", "encoder.batch_size=8",
        "--set", "classifier.epochs=5"]
REPO = str(Path(__file__).resolve().parents[2])


def raysynth(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "raysynth.cli", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=900, env=env)


def snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(root.rglob("*")) if p.is_file()}


def refused(proc, *needles):
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "raysynth: error:" in proc.stderr, proc.stderr
    for n in needles:
        assert n in proc.stderr, proc.stderr
    assert "Started a local Ray instance" not in proc.stderr  # refused before Ray starts


def mtime(path: Path) -> int:
    return path.stat().st_mtime_ns


def stale_dir(out: Path) -> Path:
    (only,) = (out / "stale").iterdir()
    return only


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hostile") / "run"
    proc = raysynth("run", "--out", str(out), *ARGS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def copy_of(finished: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(finished, out)  # copy2: mtimes kept
    return out


@pytest.mark.parametrize("command", ["run", "synthesize"])
def test_out_dot_in_a_source_tree_is_refused_and_nothing_written(tmp_path, command):
    src = tmp_path / "src"
    for name in ("pyproject.toml", "README.md", "mypkg/__init__.py", "config.yaml"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text("mine\n")
    before = snapshot(tmp_path)
    proc = raysynth(command, "--out", ".", *ARGS, cwd=src)
    refused(proc, "is not empty and is not a raysynth run directory", "--out")
    assert snapshot(tmp_path) == before


def test_a_folder_of_unrelated_files_is_refused_with_or_without_resume(tmp_path):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"\xff\xd8 not really")
    (out / "notes").mkdir()
    (out / "notes" / "todo.txt").write_text("buy milk")
    before = snapshot(tmp_path)
    for extra in ([], ["--resume"]):
        refused(raysynth("run", "--out", str(out), *ARGS, *extra), "is not a raysynth run")
    refused(raysynth("train", "--out", str(out)), "holds no run")
    assert snapshot(tmp_path) == before


def test_meta_json_deleted_then_a_new_k_is_refused_or_recomputed_never_reused(finished, tmp_path):
    out = copy_of(finished, tmp_path)
    (out / "meta.json").unlink()
    old = snapshot(out)
    # Before: config.yaml overwritten, the old synthesis/search/training reused under k=4.
    refused(raysynth("run", "--out", str(out), *ARGS, "--set", "data.k=4"), "already holds a run")
    assert snapshot(out) == old
    proc = raysynth("run", "--out", str(out), *ARGS, "--set", "data.k=4", "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["data"]["counts"]["train"] == [4, 4, 4]  # the new k, not the old splits
    aside = stale_dir(out)
    for rel in ("real/train.parquet", "synthesis.json", "tune/summary.json",
                "train/unicon-r0/result.json", "report.json", "config.yaml"):
        assert (aside / rel).read_bytes() == old[rel][1], rel  # the old results kept aside...
        assert mtime(out / rel) != old[rel][0], rel  # ...and every one recomputed
    assert "k: 4" in (out / "config.yaml").read_text()
    assert json.loads((out / "meta.json").read_text())["format"] >= 1


def test_a_changed_search_setting_keeps_data_and_synthesis_and_redoes_search_and_final(
    finished, tmp_path
):
    out = copy_of(finished, tmp_path)
    old = snapshot(out)
    sets = [*ARGS, "--set", "tune.num_samples=3"]
    refused(raysynth("run", "--out", str(out), *sets), "--resume")  # without --resume: as today
    assert snapshot(out) == old
    proc = raysynth("run", "--out", str(out), *sets, "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    new = snapshot(out)
    for rel in [r for r in old if r.startswith(("real/", "synthetic/", "generator/"))] + [
            "synthesis.json", "samples.png", "train/real_classifier.ckpt/state.json"]:
        if rel in old:
            assert new[rel] == old[rel], f"{rel} was recomputed"
    assert json.loads((out / "tune" / "summary.json").read_text())["trials"] == 3
    assert json.loads((out / "report.json").read_text())["tune"]["trials"] == 3
    assert new["train/unicon-r0/result.json"][0] != old["train/unicon-r0/result.json"][0]
    aside = stale_dir(out)
    assert json.loads((aside / "tune" / "summary.json").read_text())["trials"] == 2
    assert (aside / "train/unicon-r0/result.json").read_bytes() == \
        old["train/unicon-r0/result.json"][1]
    assert not (aside / "synthesis.json").exists() and not (aside / "real").exists()


def test_train_with_new_weights_on_an_existing_run(finished, tmp_path):
    """Before: always refused ("the config differs"), contradicting the help. After: the run's
    config with the new weights; final runs redone, the searched ones kept in stale/."""
    out = copy_of(finished, tmp_path)
    old = snapshot(out)
    proc = raysynth("train", "--out", str(out), "--set", "tune.weights=[0.1,0.5,0.9]")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["weights"] == {"0": 0.1, "1": 0.5, "2": 0.9}
    assert report["tune"]["trials"] == 0  # fixed weights, no search trial
    assert mtime(out / "synthesis.json") == old["synthesis.json"][0]
    assert mtime(out / "real" / "train.parquet") == old["real/train.parquet"][0]
    aside = stale_dir(out)
    assert (aside / "train/unicon-r0/result.json").read_bytes() == \
        old["train/unicon-r0/result.json"][1]
    assert (aside / "tune/summary.json").read_bytes() == old["tune/summary.json"][1]
    assert mtime(out / "train/unicon-r0/result.json") != old["train/unicon-r0/result.json"][0]
    assert "- 0.1" in (out / "config.yaml").read_text() or "0.1" in (out / "config.yaml").read_text()
    assert "encoder:" in (out / "config.yaml").read_text()
