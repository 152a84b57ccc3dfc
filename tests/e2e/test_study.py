"""`raysynth study controlled` as a user runs it, including an interrupted search resumed."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

SMOKE = ["--set", "budget=smoke", "--set", "encoder.width=8", "--set", "tune.num_samples=6",
         "--set", "tune.max_concurrent=2", "--set", "classifier.epochs=20"]


def _cmd(out, *extra):
    return [sys.executable, "-m", "raysynth.cli", "study", "controlled", "--classes", "0", "9",
            "--synthetic", "swapped", "--k", "4", "--out", str(out), *SMOKE, *extra]


def _finished_trials(out: Path) -> dict[str, float]:
    done = {}
    for f in (out / "tune" / "search").glob("*/result.json"):
        lines = [ln for ln in f.read_text().splitlines() if ln.strip()]
        if lines and "val_acc" in lines[-1]:
            row = json.loads(lines[-1])
            done[row["trial_id"]] = row["val_acc"]
    return done


def test_study_interrupted_during_search_resumes_without_repeating(tmp_path):
    out = tmp_path / "study"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(_cmd(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and len(_finished_trials(out)) < 2 and proc.poll() is None:
        time.sleep(0.5)
    before = _finished_trials(out)
    assert proc.poll() is None, "the study finished before it could be interrupted"
    assert len(before) >= 2
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray instance it started
    proc.wait()
    assert not (out / "report.json").exists()

    again = subprocess.run(_cmd(out, "--resume"), capture_output=True, text=True, env=env,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["tune"]["trials"] == 6
    after = _finished_trials(out)
    assert len(after) == 6  # nothing lost, nothing run twice
    for trial_id, acc in before.items():  # finished trials were kept, not re-run
        assert after[trial_id] == acc
    assert set(report["weights"]) == {"0", "9"}
    assert all(0.0 <= w <= 1.0 for w in report["weights"].values())
    for method in ("supcon_real", "supcon_mixed", "unicon"):
        acc = report["accuracy"][method]
        assert acc["runs"] == 2 and 0.0 <= acc["mean"] <= 1.0
    assert (out / "report.md").read_text().startswith("# Controlled study: swapped")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["seed"] == 0 and meta["version"]


def test_study_refuses_to_overwrite_without_resume(tmp_path):
    out = tmp_path / "study"
    out.mkdir()
    (out / "meta.json").write_text(json.dumps({"format": 1, "version": "0.1.0"}))
    proc = subprocess.run(_cmd(out), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "--resume" in proc.stderr and "Traceback" not in proc.stderr


def test_incompatible_run_directory_is_refused(tmp_path):
    out = tmp_path / "study"
    out.mkdir()
    (out / "meta.json").write_text(json.dumps({"format": 99, "version": "9.0"}))
    proc = subprocess.run(_cmd(out, "--resume"), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "format 99" in proc.stderr
