"""`ray job submit` of `raysynth run` to a real Ray head with token authentication on
(cluster/README.md "Token authentication"; DESIGN §5); a submission without the cluster's token, or
with another one, is refused, and so is a driver joining the GCS with another token.

The head is a separate Ray instance started by tests/ray_head.py (shared with tests/cluster's
harness): its own session, temp dir and free ports, token authentication on, stopped by killing
exactly the processes it started, never with `ray stop`. The job's driver inherits RAY_AUTH_MODE /
RAY_AUTH_TOKEN_PATH from the head's environment, which is how it connects back to the GCS.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from ray_head import base_env, ray_job, start_head, stop_tree

ROOT = Path(__file__).resolve().parents[2]

# `raysynth run --preset digits` at the smoke budget, shrunk further to ~40 s on 2 busy cores:
# 3 classes, a tiny pixel model, no filter, 2 search trials, short encoders.
RUN_ARGS = ["--preset", "digits", "--set", "budget=smoke", "--set", "data.classes=0,1,2",
            "--set", "data.k=8", "--set", "synthesis.generator.pixel_train_steps=40",
            "--set", "synthesis.generator.pixel_channels=[8,16]",
            "--set", "synthesis.generator.num_steps=8", "--set", "filter.enabled=false",
            "--set", "tune.num_samples=2", "--set", "tune.max_concurrent=2",
            "--set", "encoder.epochs=4", "--set", "encoder.width=8",
            "--set", "classifier.epochs=10"]


@pytest.fixture(scope="module")
def head():
    # A short temp dir: Ray's Unix sockets live under it, and their paths are limited to 107 bytes.
    tmp = Path(tempfile.mkdtemp(prefix="rsjob-", dir="/tmp"))
    head = None
    try:
        head = start_head(tmp, base_env(), num_cpus=2)
        yield head
    finally:
        stop_tree(head.proc if head is not None else None)
        shutil.rmtree(tmp, ignore_errors=True)


def offline_runtime_env(tmp: Path) -> Path:
    """cluster/runtime_env.yaml without its `pip` entry, everything else (excludes, env_vars) as is.

    On a cluster `pip` installs the uploaded tree (and raysynth's dependencies) into a
    virtualenv on each node; here that would build a wheel with setuptools fetched from PyPI
    and take minutes. The head runs from this test's virtualenv instead, which already has the
    dependencies and the `raysynth` console script on PATH; `--working-dir .` still uploads the
    tree and puts the unpacked copy first on the job's PYTHONPATH, so the code the job runs is the
    uploaded code, as on the cluster.
    """
    env = yaml.safe_load((ROOT / "cluster" / "runtime_env.yaml").read_text())
    assert env.pop("pip")["packages"] == ["${RAY_RUNTIME_ENV_CREATE_WORKING_DIR}"]
    path = tmp / "runtime_env.yaml"
    path.write_text(yaml.safe_dump(env))
    return path


def test_submitted_run_succeeds_and_writes_its_report(head):
    out = head.tmp / "runs" / "digits"  # absolute: the job's cwd is its copy of the working dir
    env_file = offline_runtime_env(head.tmp)
    sub = ray_job(head.env, "submit", "--address", head.url, "--submission-id", "rs-digits",
                  "--working-dir", ".", "--runtime-env", str(env_file), "--",
                  "raysynth", "run", *RUN_ARGS, "--out", str(out), cwd=ROOT, timeout=600)
    logs = sub.stdout + sub.stderr
    assert sub.returncode == 0, logs[-4000:]
    assert "Uploading package gcs://_ray_pkg_" in logs  # the working tree went up to the GCS
    status = ray_job(head.env, "status", "--address", head.url, "rs-digits")
    assert "Job 'rs-digits' succeeded" in status.stdout + status.stderr, logs[-4000:]
    assert "[3/6] synthesis" in logs  # the driver's log reached `ray job submit`
    # `ray job logs`: raysynth's lines, not Ray's progress dumps and metric lines (issue 17)
    job_logs = ray_job(head.env, "logs", "--address", head.url, "rs-digits").stdout
    lines = job_logs.splitlines()
    assert len(lines) < 100, job_logs[-6000:]
    for i, stage in enumerate(("data", "generator", "synthesis", "search", "final", "report"), 1):
        assert f"[{i}/6] {stage}" in job_logs
    for step in ("pixel model: 40/40 steps", "synthesis round 0: 12/12 images, accepted 12",
                 "search: 2/2 trials, best 0.", "final training: 3/3 runs",
                 "training unicon-r0: 4/4 epochs, loss "):  # each final run's epochs
        assert step in job_logs, job_logs[-6000:]
    assert "Reported metrics" not in job_logs and "Running Dataset" not in job_logs
    assert "DiffusionGenerator pool: 1 actor(s)" in job_logs  # the chosen pool sizes
    assert "search: 2 trials at a time" in job_logs

    report = json.loads((out / "report.json").read_text())
    assert report["preset"] == "digits" and report["classes"] == ["0", "1", "2"]
    assert report["tune"]["trials"] == 2  # tune.num_samples
    assert report["synthesis"]["planned"] == 12  # k/2 per class
    assert set(report["weights"]) == {"0", "1", "2"}
    for method in ("supcon_real", "supcon_mixed", "unicon"):
        acc = report["accuracy"][method]
        assert acc["runs"] == 2 and 0.0 <= acc["mean"] <= 1.0  # n_contr 1 × n_classif 2
    assert (out / "report.html").is_file() and any((out / "synthetic").rglob("*.parquet"))


@pytest.mark.parametrize("credential", ["missing", "wrong"])
def test_submission_without_the_token_is_refused(head, credential):
    """The job server answers 401 to a request without a token (a client that was not told
    RAY_AUTH_MODE=token sends none) and 403 to one with another token; either way the CLI
    exits non-zero with Ray's AuthenticationError and no job is created."""
    env = {**base_env(), "HOME": str(head.tmp / "empty-home")}  # no ~/.ray/auth_token either
    if credential == "missing":
        expected = "Missing authentication token"
    else:
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
        expected = "Invalid authentication token"
    sub = ray_job(env, "submit", "--address", head.url, "--submission-id", f"rs-{credential}",
                  "--", "echo", "should not run")
    assert sub.returncode != 0
    assert "AuthenticationError" in sub.stderr and expected in sub.stderr, sub.stderr[-3000:]
    listed = ray_job(head.env, "list", "--address", head.url)
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert f"rs-{credential}" not in listed.stdout  # nothing reached the cluster


def test_driver_without_the_token_cannot_join(head):
    """The GCS port (which Ray binds on every interface) asks for the token too: a driver
    connecting with another token is turned away with Ray's AuthenticationError."""
    probe = f"import ray; ray.init(address={head.gcs!r}); print('connected')"
    env = {**base_env(), "HOME": str(head.tmp / "empty-home"), "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "RAY_gcs_server_port_wait_time_s": "2"}  # two attempts, not Ray's default retries
    proc = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0 and "connected" not in proc.stdout
    assert "AuthenticationError" in proc.stderr and "InvalidAuthToken" in proc.stderr, \
        proc.stderr[-3000:]
