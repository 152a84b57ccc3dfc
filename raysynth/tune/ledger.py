"""The weight search's ledger (``<run>/tune/trials.jsonl``): each finished trial's weights and
result, appended and fsynced by the driver the moment it receives them — what ``--resume`` keeps —
and the copies of each trial's logs into the run directory."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from raysynth.tune.tuner import METRIC

LEDGER = "trials.jsonl"


def weight_keys(num_classes: int) -> list[str]:
    """The search space's keys, one per class: ``w000``, ``w001``, …"""
    return [f"w{c:03d}" for c in range(num_classes)]


def weights_from(config: dict[str, Any], num_classes: int) -> list[float]:
    return [float(config[k]) for k in weight_keys(num_classes)]


def read_ledger(path: str | Path) -> list[dict[str, Any]]:
    """The finished trials recorded in ``path``, in completion order (a line torn by a kill while
    it was being written is ignored; a trial recorded twice counts once)."""
    path = Path(path)
    if not path.is_file():
        return []
    rows, seen = [], set()
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("trial_id") not in seen:
            seen.add(row.get("trial_id"))
            rows.append(row)
    return rows


def ledger_callback(path: Path, num_classes: int):
    from ray.tune import Callback

    class TrialLedger(Callback):
        """Appends each trial's result to the ledger when the driver receives it."""

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if METRIC not in result:
                return
            row = {
                "trial_id": trial.trial_id,
                "weights": weights_from(trial.config, num_classes),
                METRIC: float(result[METRIC]),
                "val_std": float(result["val_std"]),
                "val_nll": float(result.get("val_nll", float("nan"))),
                "finished_at": float(result.get("timestamp", time.time())),
                # the trial's folder in the run directory and its result: a driver killed after
                # this line and before the logs were copied leaves the folder to restore
                "dir": str(trial.path),
                "result": json.loads(json.dumps(result, default=str)),
            }
            with open(path, "a") as f:
                f.write(json.dumps(row) + "\n")
                f.flush()
                os.fsync(f.fileno())

    return TrialLedger()


def _has_result(path: Path) -> bool:
    """``path`` (a trial's ``result.json``) ends in a whole result line with the metric."""
    try:
        last = path.read_text().strip().splitlines()[-1]
        return METRIC in json.loads(last)
    except (OSError, IndexError, json.JSONDecodeError):
        return False


def restore_trial_results(rows: list[dict[str, Any]]) -> int:
    """Write ``result.json`` from the ledger for every recorded trial whose folder in the run
    directory lacks it (the driver was killed between the ledger line and the copy of the
    trial's logs, :func:`trial_logs_callback`); returns how many were written."""
    written = 0
    for row in rows:
        if "dir" not in row or "result" not in row:
            continue
        dest = Path(row["dir"]) / "result.json"
        if not _has_result(dest):
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(json.dumps(row["result"]) + "\n")
            written += 1
    return written


def trial_logs_callback():
    from ray.tune import Callback

    class TrialLogs(Callback):
        """Copies a trial's folder (result.json, progress.csv, TensorBoard events) from the
        driver's staging dir into the run directory at once: when its result has been logged,
        and again when the loggers have closed its files."""

        def _copy(self, trial) -> None:
            local, dest = Path(trial.local_path), Path(trial.path)
            if local.is_dir() and local != dest:
                shutil.copytree(local, dest, dirs_exist_ok=True)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if METRIC in result:
                self._copy(trial)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._copy(trial)

    return TrialLogs()
