"""Stop the driver in the middle of `raysynth synthesize`, start it again: every planned
sample_id ends up in the table exactly once."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq

from raysynth import columns as col
from raysynth.generate.table import read_table

ARGS = ["--set", "budget=smoke", "--set", "data.classes=0,1,2", "--set", "data.k=8",
        "--set", "synthesis.quota=fixed", "--set", "synthesis.per_class=24",
        "--set", "synthesis.pool.batch_size=4", "--set", "synthesis.generator.num_steps=40",
        "--set", "synthesis.generator.pixel_train_steps=40",
        "--set", "synthesis.generator.pixel_channels=[8,16]", "--set", "filter.enabled=false"]


def _cmd(out):
    return [sys.executable, "-m", "raysynth.cli", "synthesize", "--out", str(out), *ARGS]


def _written(out):
    n = 0
    for f in (out / "synthetic").rglob("*.parquet"):
        with contextlib.suppress(Exception):  # a file still being written
            n += pq.ParquetFile(f).metadata.num_rows
    return n


def test_driver_killed_during_synthesis_then_rerun(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(_cmd(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and _written(out) < 8 and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, "synthesis finished before it could be stopped"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = _written(out)
    assert 0 < partial < 72
    again = subprocess.run(_cmd(out), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads((out / "synthesis.json").read_text())
    assert summary["planned"] == 72 and summary["generated_this_run"] < 72
    ids = read_table(out / "synthetic", [col.SAMPLE_ID])[col.SAMPLE_ID].to_pylist()
    assert len(ids) == 72 and len(set(ids)) == 72
