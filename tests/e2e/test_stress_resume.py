"""The stress preset's smoke form (issue #15): `raysynth run --preset stress-lt`, small, with the
run directory on S3 (moto's server, tests/conftest.py) and the two Train workers holding every CPU
of a fresh 2-CPU local Ray (the streamed classifier once hung there: the Ray Data tasks that read
its tables could never be scheduled). The driver is killed (SIGKILL, its whole process group: the
local Ray too) once Ray Train has registered a checkpoint of the final classifier run, then the
same command runs with `--resume`:

- the interrupted run continues after its newest checkpoint, the registered one or a later one
  that landed before the kill took effect (new checkpoints only for the epochs after it, not
  from epoch 0);
- every object written before the kill (the real splits, the generator, the synthetic table, the
  finished real-only run) is byte-identical afterwards;
- the report's accuracies are the finished runs' results; few-class accuracy is reported; the run
  trained with 50/50 real/synthetic batches and balanced softmax on real ∪ synthetic rows.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from train_checkpoints import registered

CLASSES, EPOCHS = 4, 3
FINAL = "with_synthetic-r0"  # the final classifier run on real ∪ synthetic (n_contr 1: smoke)
ARGS = ["--preset", "stress-lt", "--set", "budget=smoke",
        "--set", f"data.generated_classes={CLASSES}", "--set", "data.k=24",
        "--set", "data.imbalance_factor=4", "--set", "data.val_per_class=2",
        "--set", "data.test_per_class=4", "--set", "synthesis.top_up_to=24",
        "--set", "synthesis.generator.pixel_train_steps=20",
        "--set", "synthesis.generator.pixel_channels=[8,16]",
        "--set", "synthesis.generator.num_steps=4",
        "--set", "encoder.arch=small_cnn", "--set", "encoder.width=8",
        "--set", f"end_to_end.epochs={EPOCHS}", "--set", "end_to_end.batch_size=8",
        "--set", "train.num_workers=2", "--set", "train.cpus_per_worker=1",
        "--set", "train.checkpoint_every=1"]
# The CLI's own entry point, after a local Ray of exactly 2 CPUs (the CLI keeps a connected Ray):
# the 2 Train workers × 1 CPU hold every CPU whatever the machine has.
DRIVER = ("import sys, ray; ray.init(address='local', num_cpus=2, include_dashboard=False, "
          "log_to_driver=False); from raysynth.cli import main; sys.exit(main(sys.argv[1:]))")
# Objects a resumed run rewrites by design: its log, the stage record, and the interrupted
# Train run's own folder (Ray Train's snapshot, its new checkpoints and the result).
REWRITTEN = ("run.log", "stages.json", f"train/{FINAL}/")


def _cmd(out: str, *extra: str) -> list[str]:
    return [sys.executable, "-c", DRIVER, "run", "--out", out, *ARGS, *extra]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return {**env, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), env.get("PYTHONPATH")]))}


def _objects(root) -> dict[str, bytes]:
    base = str(root).rstrip("/") + "/"
    return {str(p)[len(base):]: p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _keys(root) -> set[str]:
    base = str(root).rstrip("/") + "/"
    return {str(p)[len(base):] for p in root.rglob("*") if p.is_file()}


def _epochs(run, keys) -> dict[str, int]:
    """Checkpoint folder → the epoch its ``state.json`` records."""
    return {k.split("/")[0]: json.loads((run / k).read_text())["epoch"]
            for k in keys if k.startswith("checkpoint_") and k.endswith("/state.json")}


def _settle(run, quiet: float = 3.0, timeout: float = 60) -> None:
    """Wait until nothing new lands in ``run`` for ``quiet`` s: a Train worker of the killed
    driver (not in its process group) may still finish the upload it had begun."""
    last, since, deadline = _keys(run), time.time(), time.time() + timeout
    while time.time() - since < quiet and time.time() < deadline:
        time.sleep(0.5)
        if (keys := _keys(run)) != last:
            last, since = keys, time.time()


def _kill_when_registered(proc: subprocess.Popen, run, timeout: float = 900) -> str:
    """SIGKILL the driver's process group once Ray Train has registered a checkpoint of ``run``
    that holds a training state, before the run has a result; that checkpoint's folder."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        keys = _keys(run) if run.exists() else set()
        folder = registered(keys, lambda k: (run / k).read_bytes())
        assert "result.json" not in keys, "the final run finished before a checkpoint was seen"
        if folder:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            _settle(run)
            return folder
        time.sleep(0.2)
    out = proc.stdout.read() if proc.poll() is not None else ""
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError(f"no registered checkpoint of {run} (exit {proc.poll()}):\n{out[-3000:]}")


@pytest.mark.slow  # ~160-230 s on 2 loaded cores; runs in the plain `python -m pytest -q`
def test_stress_preset_killed_mid_final_run_resumes_from_its_checkpoint(s3_root):
    out = str(s3_root)
    run = s3_root / "train" / FINAL
    proc = subprocess.Popen(_cmd(out), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, env=_env())
    folder = _kill_when_registered(proc, run)
    before = _objects(s3_root)
    at = _epochs(run, before_keys := {k[len(f"train/{FINAL}/"):] for k in before
                                      if k.startswith(f"train/{FINAL}/")})[folder]
    # A later epoch's checkpoint may land between the registration and the kill (in Ray Train's
    # folders, or in the run's own copy, ckpt/): the resume takes the newest of them.
    done = max([at, *_epochs(run, before_keys).values(),
                *(json.loads(before[f"train/{FINAL}/{k}"])["epoch"]
                  for k in ("ckpt/state.json", "ckpt.old/state.json") if k in before_keys)])
    assert not (s3_root / "report.json").exists()
    assert any(k.startswith("synthetic/") for k in before), sorted(before)

    again = subprocess.run(_cmd(out, "--resume"), capture_output=True, text=True, timeout=900,
                           env=_env())
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    after = _objects(s3_root)

    # Continued after a checkpoint written before the kill — the registered one or a later one
    # (a later one the kill caught mid-upload is rightly passed over: both were seen in full
    # suites) — not from epoch 0: new checkpoints are exactly the epochs after that one.
    new = {k: v for k, v in _epochs(run, _keys(run)).items() if k not in _epochs(run, before_keys)}
    assert any(sorted(new.values()) == list(range(e + 1, EPOCHS)) for e in range(at, done + 1)), (
        at, done, new)

    # Nothing written before the kill changed (the finished real-only run included).
    kept = {k for k in before if not k.startswith(REWRITTEN)}
    assert {k for k in kept if after.get(k) != before[k]} == set()
    assert any(k.startswith("real/") for k in kept) and any(k.startswith("train/real_only")
                                                            for k in kept)

    # The report's accuracies are the runs' results; few-class accuracy is among them.
    report = json.loads(after["report.json"])["classifier"]
    for name in ("real_only", "with_synthetic"):
        result = json.loads(after[f"train/{name}-r0/result.json"])
        assert {"overall", "few"} <= set(result), result
        for group in ("overall", "few"):
            assert report[name][group]["mean"] == result[group]
            assert 0 <= result[group] <= 1

    # The run trained on real ∪ accepted synthetic rows, 50/50 batches, balanced softmax.
    cfg = yaml.safe_load(after["config.yaml"])
    assert cfg["end_to_end"]["synthetic_share"] == 0.5 and cfg["end_to_end"]["balanced_softmax"]
    assert cfg["train"]["stream"] == "always"
