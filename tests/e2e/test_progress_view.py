"""The progress view on a terminal (issue 17): `raysynth run` at the smoke budget under a
pseudo-terminal draws a bar per step with its count (pixel-model steps, images of the synthesis
round, search trials with the best so far, final runs and each one's epochs), keeps the `[i/n]`
stage lines, and shows none of Ray's own progress or metric lines (those come back with
--verbose)."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

from terminal import read_terminal
from test_job_submit import RUN_ARGS

ROOT = Path(__file__).resolve().parents[2]


def run_in_pty(args: list[str], timeout: float = 900) -> tuple[int, str]:
    """Run ``args`` with stdin/stdout/stderr on a pseudo-terminal; its exit code and output."""
    master, slave = pty.openpty()
    # a terminal 120 columns wide (a fresh pseudo-terminal reports 0 x 0)
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "120"}
    for name in ("RAYSYNTH_PROGRESS", "RAY_ADDRESS"):  # bars by detection; a local Ray instance
        env.pop(name, None)
    proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=ROOT,
                            close_fds=True)
    os.close(slave)
    deadline = time.time() + timeout
    text = read_terminal(master, timeout)
    try:
        code = proc.wait(timeout=max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return code, text.decode(errors="replace")


def final_bar(text: str, desc: str) -> str:
    """The last drawing of bar ``desc`` (tqdm redraws a bar in place with carriage returns)."""
    draws = [d for line in text.splitlines() for d in line.split("\r") if d.startswith(desc + ":")]
    assert draws, f"no {desc!r} bar in:\n{text[-3000:]}"
    return draws[-1]


def test_terminal_shows_a_bar_per_step_with_its_count(tmp_path):
    out = tmp_path / "run"
    code, text = run_in_pty([sys.executable, "-m", "raysynth.cli", "run", *RUN_ARGS,
                             "--out", str(out)])
    assert code == 0, text[-4000:]
    bars = {d: final_bar(text, d) for d in ("pixel model", "synthesis round 0", "search",
                                            "final training", "training unicon-r0")}
    # count, percentage, and the bar's timing [elapsed<left, rate]
    assert re.search(r"100%\|.*\| 40/40 \[", bars["pixel model"]), bars
    assert "loss" in bars["pixel model"]
    assert re.search(r"100%\|.*\| 12/12 \[", bars["synthesis round 0"]), bars  # k/2 × 3 classes
    assert "accepted 12" in bars["synthesis round 0"]  # filter off: every image accepted
    assert re.search(r"100%\|.*\| 2/2 \[.*best 0\.\d{3}", bars["search"]), bars  # 2 trials
    assert re.search(r"100%\|.*\| 3/3 \[.*method unicon", bars["final training"]), bars
    assert re.search(r"100%\|.*\| 4/4 \[.*loss \d", bars["training unicon-r0"]), bars  # epochs
    for i, stage in enumerate(("data", "generator", "synthesis", "search", "final", "report"), 1):
        assert f"[{i}/6] {stage}" in text
    # Ray's own progress and metric lines stay off without --verbose
    assert "Reported metrics" not in text and "Trial status" not in text
    assert "Running Dataset" not in text and "get_trial_id" not in text
