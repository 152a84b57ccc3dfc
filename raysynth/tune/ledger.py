"""The weight search's ledger (``<run>/tune/trials.jsonl``): each finished trial's weights and
result, appended and fsynced by the driver the moment it receives them — what ``--resume`` keeps —
and the copies of each trial's logs into the run directory.

A ledger line names its trial's folder relative to the tune root (``search/_trial_…``), so a
run directory copied or moved elsewhere still finds its own folders; every folder a line names is
resolved under the *current* tune root and refused when it leaves it (an absolute path elsewhere,
``../``, a symlink out): a copied or tampered ledger never makes the run write outside itself.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow.fs as pafs

from raysynth.files import atomic_write_text
from raysynth.storage import AnyPath, RemotePath, local_or_remote
from raysynth.tune.tuner import METRIC

log = logging.getLogger("raysynth.tune")

LEDGER = "trials.jsonl"


def weight_keys(num_classes: int) -> list[str]:
    """The search space's keys, one per class: ``w000``, ``w001``, …"""
    return [f"w{c:03d}" for c in range(num_classes)]


def weights_from(config: dict[str, Any], num_classes: int) -> list[float]:
    return [float(config[k]) for k in weight_keys(num_classes)]


def read_ledger(path: str | AnyPath) -> list[dict[str, Any]]:
    """The finished trials recorded in ``path``, in completion order (a line torn by a kill while
    it was being written is ignored; a trial recorded twice counts once)."""
    path = local_or_remote(path)
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


def relative_dir(folder: str | Path, tune_root: str | AnyPath) -> str:
    """``folder`` as the ledger stores it: relative to the tune root when it lies inside it
    (on an object store ``folder`` is Tune's path on the store's filesystem)."""
    if isinstance(tune_root, RemotePath):
        folder, root = PurePosixPath(str(folder)), PurePosixPath(tune_root.path)
        return str(folder.relative_to(root)) if folder.is_relative_to(root) else str(folder)
    folder, root = Path(folder).resolve(), Path(tune_root).resolve()
    return str(folder.relative_to(root)) if folder.is_relative_to(root) else str(folder)


def confined_dir(entry: Any, tune_root: str | AnyPath) -> AnyPath | None:
    """The trial folder a ledger entry names, resolved under ``tune_root``; None (with a warning)
    when it is not a string or resolves outside the root — an absolute path elsewhere (a ledger
    copied from another run directory, or tampered), ``..`` components or a symlink out."""
    root = local_or_remote(tune_root)
    if not isinstance(entry, str) or not entry:
        log.warning("ignoring a ledger entry without a trial folder: %r", entry)
        return None
    if isinstance(root, RemotePath):  # no symlinks on a store: a plain relative path, no ..
        rel = PurePosixPath(entry)
        inside = not rel.is_absolute() and ".." not in rel.parts and rel.parts != ()
        folder: AnyPath = root / entry if inside else root
    else:
        folder = (root / entry).resolve()  # an absolute entry replaces the root here
        inside = folder != root and folder.is_relative_to(root)
    if not inside:
        log.warning(
            "ignoring the ledger's trial folder %r: it lies outside this run's tune folder %s "
            "(a ledger copied from another run directory, or edited); nothing is written there",
            entry, root,
        )
        return None
    return folder


def ledger_callback(path: AnyPath, num_classes: int):
    """The Tune callback appending each result to the ledger ``path`` (in the tune root)."""
    from ray.tune import Callback

    root = path.parent

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
                "started_at": float(result.get("started_at", float("nan"))),
                "finished_at": float(result.get("ended_at", result.get("timestamp", time.time()))),
                # the trial's folder (relative to the tune root) and its result: a driver killed
                # after this line and before the logs were copied leaves the folder to restore
                "dir": relative_dir(trial.path, root),
                "result": json.loads(json.dumps(result, default=str)),
            }
            _append(path, json.dumps(row) + "\n")

    return TrialLedger()


def _append(path: AnyPath, line: str) -> None:
    """One line more, durably: appended and fsynced on a local disk; on an object store (no
    appends) the whole ledger put again — a reader sees the old ledger or the new one."""
    if isinstance(path, RemotePath):
        atomic_write_text(path, (path.read_text() if path.is_file() else "") + line)
        return
    with open(path, "a") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def _has_result(path: AnyPath) -> bool:
    """``path`` (a trial's ``result.json``) ends in a whole result line with the metric."""
    try:
        last = path.read_text().strip().splitlines()[-1]
        return METRIC in json.loads(last)
    except (OSError, IndexError, json.JSONDecodeError):
        return False


def restore_trial_results(rows: list[dict[str, Any]], tune_root: str | AnyPath) -> int:
    """Write ``result.json`` from the ledger for every recorded trial whose folder under
    ``tune_root`` lacks it (the driver was killed between the ledger line and the copy of the
    trial's logs, :func:`trial_logs_callback`); returns how many were written. Only folders
    under ``tune_root`` are written (:func:`confined_dir`); any other entry is ignored with a
    warning."""
    written = 0
    for row in rows:
        if "dir" not in row or "result" not in row:
            continue
        folder = confined_dir(row["dir"], tune_root)
        if folder is None or _has_result(folder / "result.json"):
            continue
        atomic_write_text(folder / "result.json", json.dumps(row["result"]) + "\n")
        written += 1
    return written


def trial_logs_callback():
    from ray.tune import Callback

    class TrialLogs(Callback):
        """Copies a trial's folder (result.json, progress.csv, TensorBoard events) from the
        driver's staging dir into the run directory at once: when its result has been logged,
        and again when the loggers have closed its files."""

        def _copy(self, trial) -> None:
            local, fs = Path(trial.local_path), trial.storage.storage_filesystem
            if not local.is_dir():
                return
            if isinstance(fs, pafs.LocalFileSystem) or fs is None:
                if local != Path(trial.path):
                    shutil.copytree(local, trial.path, dirs_exist_ok=True)
                return
            # the run directory on an object store: each file one whole-object put
            pafs.copy_files(str(local), trial.path, source_filesystem=pafs.LocalFileSystem(),
                            destination_filesystem=fs)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if METRIC in result:
                self._copy(trial)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._copy(trial)

    return TrialLogs()
