"""Durability of what training and generation leave on disk.

- A checkpoint replaced while the process is killed (a real SIGKILL, sent by the writer to itself
  at a chosen step of the replacement, in a child process) leaves a readable checkpoint, the old
  or the new one, and training resumes from it instead of restarting at epoch 0.
- A synthetic part is moved aside (quarantined) only when its footer is really corrupt, only by
  the generate stage, never by the report; a part that cannot be *read* stays where it is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from raysynth.errors import RunDirError
from raysynth.generate.table import existing_ids, iter_tables, parquet_files
from raysynth.train import session as session_mod
from raysynth.train.checkpoint import load_model, read_state, write_checkpoint
from raysynth.train.models import build_model

ROOT = Path(__file__).resolve().parents[2]
MODEL_CFG = {"kind": "mlp", "in_dim": 4, "num_classes": 3, "hidden": 8}


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(MODEL_CFG)


def _write(folder: Path, seed: int, epoch: int) -> torch.nn.Module:
    model = _model(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    write_checkpoint(folder, model, MODEL_CFG, opt, {"epoch": epoch})
    return model


# The child writes checkpoint epoch 2 over epoch 1 and SIGKILLs itself at the chosen step:
# "first-rename" (before the old folder moves), "second-rename" (between the two renames),
# "cleanup" (after the new folder is in place, before NAME.old is removed).
CHILD = textwrap.dedent(
    """
    import os, shutil, signal, sys, torch
    from pathlib import Path
    sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
    from test_durability import _write
    import raysynth.train.checkpoint as ck

    step, folder = sys.argv[1], Path(sys.argv[2])
    real_replace, real_rmtree = os.replace, shutil.rmtree

    def replace(src, dst):  # the files inside the new checkpoint are renamed too: match by target
        if (step == "first-rename" and str(dst).endswith(".old")) or (
            step == "second-rename" and Path(dst) == folder
        ):
            os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(src, dst)

    def rmtree(path, *a, **k):
        if step == "cleanup" and str(path).endswith(".old"):
            os.kill(os.getpid(), signal.SIGKILL)
        return real_rmtree(path, *a, **k)

    ck.os.replace = replace
    ck.shutil.rmtree = rmtree
    _write(folder, seed=2, epoch=2)
    """
)


def _killed_write(folder: Path, step: str) -> None:
    code = CHILD.format(root=str(ROOT), tests=str(ROOT / "tests" / "unit"))
    proc = subprocess.run(
        [sys.executable, "-c", code, step, str(folder)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == -9, (proc.returncode, proc.stderr[-2000:])


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def _hidden_temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith("."))


@pytest.mark.slow
def test_a_kill_between_the_two_renames_keeps_the_old_checkpoint(tmp_path):
    folder = tmp_path / "train" / "ckpt"
    old = _write(folder, seed=1, epoch=1)
    _killed_write(folder, "second-rename")
    # what the kill left: no checkpoint folder, only NAME.old (and the new one's temp folder)
    assert not folder.exists() and (tmp_path / "train" / "ckpt.old").is_dir()

    assert read_state(folder)["epoch"] == 1  # recovered, not "no checkpoint"
    assert folder.is_dir() and not (tmp_path / "train" / "ckpt.old").exists()
    assert _same(load_model(folder), old)
    # the next write replaces it and removes the killed write's temp folder
    assert _hidden_temps(folder)
    new = _write(folder, seed=3, epoch=3)
    assert read_state(folder)["epoch"] == 3 and _same(load_model(folder), new)
    assert _hidden_temps(folder) == [] and sorted(os.listdir(folder.parent)) == ["ckpt"]


@pytest.mark.slow
def test_training_resumes_from_the_recovered_checkpoint_not_epoch_0(tmp_path):
    folder = tmp_path / "ckpt"
    _write(folder, seed=1, epoch=4)
    _killed_write(folder, "second-rename")
    token = session_mod._IN_PROCESS.set({"metrics": {}})  # the in-process session of Tune trials
    try:
        session = session_mod.TrainSession(str(folder), checkpoint_every=1)
        model = _model(9)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        assert session.restore(model, opt) == 5  # the epoch after the checkpoint's
    finally:
        session_mod._IN_PROCESS.reset(token)
    assert _same(model, load_model(folder))
    assert opt.state_dict()["state"], "the optimizer state was restored too"


@pytest.mark.slow
def test_a_kill_before_the_first_rename_keeps_the_old_checkpoint(tmp_path):
    folder = tmp_path / "ckpt"
    old = _write(folder, seed=1, epoch=1)
    _killed_write(folder, "first-rename")
    assert read_state(folder)["epoch"] == 1 and _same(load_model(folder), old)
    assert len(_hidden_temps(folder)) == 1  # the new checkpoint's temp folder, left by the kill
    _write(folder, seed=3, epoch=3)
    assert _hidden_temps(folder) == []


@pytest.mark.slow
def test_a_kill_after_the_second_rename_keeps_the_new_checkpoint(tmp_path):
    folder = tmp_path / "ckpt"
    _write(folder, seed=1, epoch=1)
    _killed_write(folder, "cleanup")
    assert (tmp_path / "ckpt.old").is_dir()
    assert read_state(folder)["epoch"] == 2
    assert _same(load_model(folder), _write(tmp_path / "ref", seed=2, epoch=2))
    assert not (tmp_path / "ckpt.old").exists()


def test_a_temp_folder_of_another_checkpoint_is_left_alone(tmp_path):
    other_tmp = tmp_path / ".ckpt-2.tmp-abcdefgh"  # ckpt-2's write in progress
    other_tmp.mkdir()
    _write(tmp_path / "ckpt", seed=1, epoch=1)
    _write(tmp_path / "ckpt", seed=2, epoch=2)
    assert other_tmp.is_dir()


# --- quarantine of synthetic parts -----------------------------------------------------------


def _part(folder: Path, name: str, ids: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    pq.write_table(pa.table({"sample_id": ids, "label": list(range(len(ids)))}), path)
    return path


def _truncate_footer(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 7])  # cut into the footer and its magic bytes


def _clobber_footer_metadata(path: Path) -> None:
    """Keep the size and the magic bytes, overwrite the footer's Thrift metadata (pyarrow then
    raises OSError, not ArrowInvalid: corruption that looks like an I/O error)."""
    data = bytearray(path.read_bytes())
    n = int.from_bytes(data[-8:-4], "little")
    data[len(data) - 8 - n : len(data) - 8] = b"\xff" * n
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("corrupt", [_truncate_footer, _clobber_footer_metadata])
def test_a_corrupt_footer_is_quarantined_by_the_generate_stage_only(tmp_path, corrupt):
    root = tmp_path / "synthetic"
    _part(root / "round-000", "part-a.parquet", ["a0", "a1"])
    bad = _part(root / "round-000", "part-b.parquet", ["b0", "b1"])
    corrupt(bad)
    damaged = bad.read_bytes()

    # readers (the report, the filter's counts) leave it out and never move it
    assert [t["sample_id"].to_pylist() for t in iter_tables(root)] == [["a0", "a1"]]
    assert [p.name for p in parquet_files(root)] == ["part-a.parquet"]
    assert bad.read_bytes() == damaged

    # the generate stage moves it aside, so its rows count as missing and are made again
    assert existing_ids(root) == {"a0", "a1"}
    assert not bad.exists()
    assert (root / "round-000" / "part-b.parquet.corrupt").read_bytes() == damaged


@pytest.mark.slow
def test_raysynth_report_never_moves_a_part(tmp_path):
    """``raysynth report`` (the real CLI) on a run directory with a corrupt part: the report is
    written, the part stays where it was, byte for byte."""
    run = tmp_path / "run"
    _part(run / "synthetic" / "round-000", "part-a.parquet", ["a0"])
    bad = _part(run / "synthetic" / "round-000", "part-b.parquet", ["b0"])
    _truncate_footer(bad)
    damaged = bad.read_bytes()
    (run / "report.json").write_text(json.dumps({"preset": "digits", "classes": ["0"]}))
    proc = subprocess.run(
        [sys.executable, "-m", "raysynth.cli", "report", str(run)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (run / "report.html").is_file() and bad.read_bytes() == damaged
    assert not list(run.rglob("*.corrupt"))


def _unreadable(part: Path, monkeypatch) -> None:
    """Make ``part`` fail to open with a permission error. Not root: chmod 000, a real one. As
    root (this machine's CI), chmod does not stop a read and an unprivileged child cannot run
    this venv's Python (it lives under /root), so the open is replaced by one raising the
    PermissionError pyarrow raises for that file — the one simulated step of this file."""
    if os.geteuid() != 0:
        part.chmod(0)
        return
    import errno

    from raysynth.generate import table

    real = table.pq.ParquetFile

    def parquet_file(source, *args, **kwargs):
        if Path(source) == part:
            raise PermissionError(errno.EACCES, f"Failed to open local file '{part}'. Detail: "
                                  "[errno 13] Permission denied")
        return real(source, *args, **kwargs)

    monkeypatch.setattr(table.pq, "ParquetFile", parquet_file)


def test_a_part_that_cannot_be_read_is_not_quarantined(tmp_path, monkeypatch):
    root = tmp_path / "synthetic"
    _part(root / "round-000", "part-a.parquet", ["a0"])
    part = _part(root / "round-000", "part-b.parquet", ["b0"])
    intact = part.read_bytes()
    with monkeypatch.context() as m:
        _unreadable(part, m)
        with pytest.raises(RunDirError, match=r"could not read synthetic part .*part-b.parquet "
                           r"\(.*Permission denied.*\); it was left in place"):
            existing_ids(root)
        part.chmod(0o644)
    assert part.read_bytes() == intact and not list(root.rglob("*.corrupt"))
    assert existing_ids(root) == {"a0", "b0"}  # readable again: nothing was lost


def test_the_report_leaves_an_unreadable_part_out_and_in_place(tmp_path, monkeypatch, caplog):
    from raysynth.report import render_report

    run = tmp_path / "run"
    part = _part(run / "synthetic" / "round-000", "part-a.parquet", ["a0"])
    (run / "report.json").write_text(json.dumps({"preset": "digits", "classes": ["0"]}))
    with monkeypatch.context() as m:
        _unreadable(part, m)
        render_report(run)
        part.chmod(0o644)
    assert (run / "report.html").is_file()
    assert "left out the cosine scores" in caplog.text and "could not read" in caplog.text
    assert part.is_file() and not list(run.rglob("*.corrupt"))
