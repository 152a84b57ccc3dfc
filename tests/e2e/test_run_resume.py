"""Stop the driver of `raysynth run` in the middle of the weight search, then in the middle of the
final training, and continue with `--resume` each time: the run completes, and nothing finished
before a kill is done again — search trials are kept, finished training runs are kept, the
interrupted training run continues from its last checkpoint.

The pattern of test_synthesize_resume.py: the CLI in a subprocess of its own session, the run
directory watched for the stage, SIGKILL to the whole process group (the driver and the local Ray
instance it started), then the same command with `--resume`.

Which trials had finished when the driver died is read from an independent witness: the results
Ray Tune's logger callback wrote in the killed driver's staging directory (under its Ray session
directory, which this test puts in a temp dir of its own with RAY_TMPDIR). Tune copies those into
the run directory only every ≥ 10 s, so the run directory alone would miss the last ones.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TRIALS = 4
ARGS = ["--set", "budget=smoke", "--set", "data.classes=0,1,2", "--set", "data.k=8",
        "--set", "synthesis.generator.pixel_train_steps=40",
        "--set", "synthesis.generator.pixel_channels=[8,16]",
        "--set", "synthesis.generator.num_steps=8", "--set", "filter.enabled=false",
        "--set", f"tune.num_samples={TRIALS}", "--set", "tune.max_concurrent=1",
        "--set", "encoder.width=8", "--set", "encoder.epochs=60", "--set", "encoder.batch_size=8",
        "--set", "classifier.epochs=10", "--set", "train.checkpoint_every=5"]
METHODS = ("supcon_real", "supcon_mixed", "unicon")


def _cmd(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "raysynth.cli", "run", "--out", str(out), *ARGS, *extra]


def _results(files) -> dict[str, dict]:
    """Trial directory name → its last reported result, for trials that reported ``val_acc``."""
    out = {}
    for f in files:
        lines = [ln for ln in Path(f).read_text().splitlines() if ln.strip()]
        rows = []
        for ln in lines:
            try:
                rows.append(json.loads(ln))
            except json.JSONDecodeError:  # a line still being written
                break
        if rows and "val_acc" in rows[-1]:
            out[Path(f).parent.name] = rows[-1]
    return out


def run_dir_trials(out: Path) -> dict[str, dict]:
    return _results((out / "tune" / "search").glob("*/result.json"))


def driver_trials(ray_tmp: Path) -> dict[str, dict]:
    """Trials whose result the driver had received: Tune's staging copy in its session dir."""
    return _results(ray_tmp.glob("ray/session_*/artifacts/*/search/driver_artifacts/*/result.json"))


def weights(result: dict) -> tuple[float, ...]:
    return tuple(v for k, v in sorted(result["config"].items()))


def checkpoint_epoch(run_dir: Path) -> int | None:
    f = run_dir / "ckpt" / "state.json"
    try:
        return json.loads(f.read_text())["epoch"]
    except (OSError, json.JSONDecodeError, KeyError):
        return None


def start(out: Path, ray_tmp: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(_cmd(out, *extra), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "RAY_TMPDIR": str(ray_tmp)})


def kill_when(proc: subprocess.Popen, ready, what: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.1)
    assert proc.poll() is None, f"the run ended before {what}"
    assert ready(), f"timed out waiting for {what}"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_driver_killed_in_search_and_in_final_training_resumes_without_redoing(tmp_path):
    out = tmp_path / "run"
    train = out / "train"
    # Ray's session dirs: short paths (Unix sockets), one per driver run, removed at the end.
    ray_tmp = [Path(tempfile.mkdtemp(prefix="rsr-", dir="/tmp")) for _ in range(3)]
    try:
        _interrupt_twice_then_finish(out, train, ray_tmp)
    finally:
        for d in ray_tmp:
            shutil.rmtree(d, ignore_errors=True)


def _interrupt_twice_then_finish(out: Path, train: Path, ray_tmp: list[Path]) -> None:
    # 1. Killed during the search, after two trials finished and before the last one did.
    proc = start(out, ray_tmp[0])
    kill_when(proc, lambda: len(driver_trials(ray_tmp[0])) >= 2, "two search trials finished")
    finished = driver_trials(ray_tmp[0])  # everything the driver had received
    assert 2 <= len(finished) < TRIALS
    assert not (out / "tune" / "summary.json").exists()

    # 2. Resumed; killed again inside the second final training run, after it checkpointed.
    proc = start(out, ray_tmp[1], "--resume")

    def mid_final() -> bool:
        return ((train / "supcon_real-r0" / "result.json").is_file()
                and (checkpoint_epoch(train / "supcon_mixed-r0") or -1) >= 4
                and not (train / "supcon_mixed-r0" / "result.json").exists())

    kill_when(proc, mid_final, "the second final run checkpointed")
    summary = json.loads((out / "tune" / "summary.json").read_text())
    assert summary["trials"] == TRIALS
    history = {tuple(h["weights"]): h["val_acc"] for h in summary["history"]}
    assert len(history) == TRIALS  # TRIALS different weight vectors: none evaluated twice
    for name, result in finished.items():  # trials finished before the kill were kept...
        assert history[weights(result)] == result["val_acc"], name
    rerun = driver_trials(ray_tmp[1])  # ...and only the others ran after the resume
    assert len(finished) + len(rerun) <= TRIALS
    assert not {weights(r) for r in rerun.values()} & {weights(r) for r in finished.values()}
    first_final = (train / "supcon_real-r0" / "result.json").stat().st_mtime_ns
    interrupted_at = checkpoint_epoch(train / "supcon_mixed-r0")
    assert not (out / "report.json").exists()

    # 3. Resumed again: completes, without running a trial or a finished training run again.
    log_before = (out / "run.log").read_text()
    again = subprocess.run(_cmd(out, "--resume"), capture_output=True, text=True, timeout=600,
                           env={**os.environ, "RAY_TMPDIR": str(ray_tmp[2])})
    assert again.returncode == 0, again.stderr[-3000:]
    resumed_log = (out / "run.log").read_text()[len(log_before):]
    assert not driver_trials(ray_tmp[2])
    assert json.loads((out / "tune" / "summary.json").read_text()) == summary
    assert len(run_dir_trials(out)) == TRIALS  # every trial's results in the run directory
    assert (train / "supcon_real-r0" / "result.json").stat().st_mtime_ns == first_final
    # The interrupted run continued from its checkpoint, not from epoch 0; no other resumed.
    resumed = re.findall(r"resuming training at epoch (\d+) from (\S+)", resumed_log)
    assert len(resumed) == 1, resumed_log[-3000:]
    assert int(resumed[0][0]) == interrupted_at + 1 and "supcon_mixed-r0" in resumed[0][1]

    report = json.loads((out / "report.json").read_text())
    assert report["tune"]["trials"] == TRIALS
    for method in METHODS:
        acc = report["accuracy"][method]
        assert acc["runs"] == 2 and 0.0 <= acc["mean"] <= 1.0  # n_contr 1 × n_classif 2
        assert (train / f"{method}-r0" / "model").is_dir()
    assert set(report["weights"]) == {"0", "1", "2"}
