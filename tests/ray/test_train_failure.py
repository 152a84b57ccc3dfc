"""A Ray Train worker that dies in the middle of training: the run is retried under
``FailureConfig(max_failures=train.max_failures)`` and the retry continues from the last
checkpoint Ray Train holds, not from epoch 0 (DESIGN §2, raysynth.train.session.run_trainer).

The loop is raysynth's own ``contrastive_run_loop`` on two gloo workers; a wrapper makes rank 1
raise once (a marker file remembers it did) and records, per attempt and rank, the epoch the
session's ``restore`` returned. No ``checkpoint_dir`` is given, so the only way to resume is
Ray Train's checkpoint. The epochs the workers report reach the driver's progress counter
(``train/epoch_relay.py``), across the retry.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from pathlib import Path

import pytest
import ray.cloudpickle
from tiny_models import digits3_protocol

from raysynth.config import build_config
from raysynth.train.protocol import model_config
from raysynth.train.session import run_trainer

# The workers unpickle the wrapper below; this test module is not importable there.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

EPOCHS, EVERY = 6, 3  # checkpoints at the end of epochs 2 and 5 (0-based)


def flaky_loop(config: dict) -> None:
    from raysynth.train import session as s
    from raysynth.train.loops import contrastive_run_loop

    marker, journal, fail_at = Path(config["marker"]), Path(config["journal"]), config["fail_at"]
    cls = s.TrainSession
    restore, end_epoch = cls.restore, cls.end_epoch

    def recording_restore(self, model, optimizer):
        start = restore(self, model, optimizer)
        with open(journal, "a") as f:
            f.write(json.dumps({"rank": self.rank, "start": start}) + "\n")
        return start

    def failing_end_epoch(self, epoch, *args, **kwargs):
        if epoch == fail_at and self.rank == 1 and not marker.exists():
            # Give the controller (it polls every 2 s) time to take in the last checkpoint.
            time.sleep(config["grace_s"])
            marker.touch()
            raise RuntimeError("injected worker failure")
        return end_epoch(self, epoch, *args, **kwargs)

    cls.restore, cls.end_epoch = recording_restore, failing_end_epoch
    try:
        contrastive_run_loop(config)
    finally:
        cls.restore, cls.end_epoch = restore, end_epoch


@pytest.fixture(scope="module")
def digits3():
    return digits3_protocol()


def _run(data, tmp_path, max_failures: int, fail_at: int):
    cfg = build_config(overrides={
        "encoder.epochs": EPOCHS, "encoder.width": 8, "encoder.feat_dim": 32,
        "classifier.epochs": 10, "train.num_workers": 2, "train.cpus_per_worker": 1,
        "train.checkpoint_every": EVERY, "train.max_failures": max_failures})
    loop_cfg = {
        "data": data, "method": "unicon", "weights": [0.5, 0.5, 0.5], "encoder": cfg.encoder,
        "classifier": cfg.classifier, "model_cfg": model_config(cfg, data), "aug_kind": "small",
        "seed": 3, "n_classif": 2, "threads": 1, "checkpoint_every": EVERY,
        "marker": str(tmp_path / "failed-once"), "journal": str(tmp_path / "restores.jsonl"),
        "fail_at": fail_at, "grace_s": 3.0 if max_failures else 0.0,
    }
    metrics = run_trainer(flaky_loop, loop_cfg, cfg.train, "flaky", tmp_path)
    journal = [json.loads(ln) for ln in (tmp_path / "restores.jsonl").read_text().splitlines()]
    return metrics, journal


def _epoch_lines(caplog) -> list[tuple[int, int]]:
    """The ``training flaky: i/n epochs`` counts the driver's progress counter logged."""
    return [(int(m[1]), int(m[2])) for r in caplog.records
            if (m := re.search(r"training flaky: (\d+)/(\d+) epochs", r.getMessage()))]


@pytest.fixture
def progress_lines(monkeypatch, caplog):
    monkeypatch.setenv("RAYSYNTH_PROGRESS", "lines")
    caplog.set_level(logging.INFO, logger="raysynth.progress")
    return caplog


def test_worker_failure_is_retried_from_the_last_checkpoint(
    ray_local, digits3, tmp_path, progress_lines
):
    metrics, journal = _run(digits3, tmp_path, max_failures=1, fail_at=4)
    assert (tmp_path / "failed-once").exists()  # the failure did happen
    first, retry = journal[:2], journal[2:]
    assert sorted(r["rank"] for r in first) == [0, 1] and all(r["start"] == 0 for r in first)
    # The retry resumed after the checkpoint of epoch 2, the last one before the failure.
    assert sorted(r["rank"] for r in retry) == [0, 1] and all(r["start"] == 3 for r in retry)
    assert metrics["world_size"] == 2 and len(metrics["accs"]) == 2
    assert all(0.0 <= a <= 1.0 for a in metrics["accs"])
    # every epoch of rank 0 reached the driver's counter through the Train controller, once, in
    # order (epoch 3, run again by the retry, is not counted twice); the last line is 6/6
    lines = _epoch_lines(progress_lines)
    assert [d for d, _ in lines] == list(range(1, EPOCHS + 1)) and {n for _, n in lines} == {EPOCHS}


def test_without_retries_the_failure_ends_the_run(ray_local, digits3, tmp_path):
    with pytest.raises(Exception, match="injected worker failure"):
        _run(digits3, tmp_path, max_failures=0, fail_at=0)
