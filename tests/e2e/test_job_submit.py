"""`ray job submit` of `raysynth run` to a real Ray head with token authentication on
(cluster/README.md "Token authentication"; DESIGN §5); a submission without the cluster's token, or
with another one, is refused, and so is a driver joining the GCS with another token.

The head is a separate Ray instance, started here with `ray start --head --block` in its own
session, its own temp dir and free ports, so it never meets the `ray_local` instance of the other
tests. It is stopped by killing exactly the processes it started (the `ray start` process and its
descendants), never with `ray stop`, which kills every Ray process on the machine — other test
runs' instances included.

Token authentication, as Ray 2.60 does it (ray/_private/authentication/): every node and every
client runs with RAY_AUTH_MODE=token; a process reads the token from RAY_AUTH_TOKEN, else the
file named by RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token. The head and the authorised client
here use a token file made for this test (RAY_AUTH_TOKEN_PATH), so ~/.ray/auth_token is neither
read nor written. The job's driver inherits RAY_AUTH_MODE / RAY_AUTH_TOKEN_PATH from the head's
environment, which is how it connects back to the GCS.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the virtualenv of this test run: `ray`, `raysynth`
AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS",
             "RAY_API_SERVER_ADDRESS")

# `raysynth run --preset digits` at the smoke budget, shrunk further to ~40 s on 2 busy cores:
# 3 classes, a tiny pixel model, no filter, 2 search trials, short encoders.
RUN_ARGS = ["--preset", "digits", "--set", "budget=smoke", "--set", "data.classes=0,1,2",
            "--set", "data.k=8", "--set", "synthesis.generator.pixel_train_steps=40",
            "--set", "synthesis.generator.pixel_channels=[8,16]",
            "--set", "synthesis.generator.num_steps=8", "--set", "filter.enabled=false",
            "--set", "tune.num_samples=2", "--set", "tune.max_concurrent=2",
            "--set", "encoder.epochs=4", "--set", "encoder.width=8",
            "--set", "classifier.epochs=10"]


@dataclass
class Head:
    url: str  # the job server (dashboard), bound to 127.0.0.1
    gcs: str  # host:port of the GCS
    env: dict[str, str]  # an authorised client's environment
    tmp: Path


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in AUTH_VARS}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def _stop(proc: subprocess.Popen) -> None:
    """Stop the head: SIGTERM, then SIGKILL, to `ray start` and every process under it (GCS,
    raylet, dashboard, workers, the job supervisor and the job's driver), by pid."""
    try:
        root = psutil.Process(proc.pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=2)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=10)


def _wait_for_job_server(url: str, token: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.time() + 180
    request = urllib.request.Request(f"{url}/api/jobs/", headers={"Authorization": f"Bearer {token}"})
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"`ray start --head` exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(request, timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(1)
    pytest.fail(f"the job server at {url} did not come up:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def head():
    # A short temp dir: Ray's Unix sockets live under it, and their paths are limited to 107 bytes.
    tmp = Path(tempfile.mkdtemp(prefix="rsjob-", dir="/tmp"))
    token = secrets.token_hex(32)
    token_file = tmp / "auth_token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    env = {**_base_env(), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file)}
    gcs, dashboard, agent, client, metrics, agent_grpc = _free_ports(6)
    log = tmp / "head.log"
    cmd = [str(BIN / "ray"), "start", "--head", "--block",
           # Ray resolves a loopback --node-ip-address to the machine's address for its RPC
           # ports; the job server (dashboard) is the one bound to 127.0.0.1 only.
           "--node-ip-address", "127.0.0.1", "--port", str(gcs),
           "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
           "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port",
           str(agent_grpc), "--ray-client-server-port", str(client),
           "--metrics-export-port", str(metrics), "--num-cpus", "2", "--num-gpus", "0",
           "--temp-dir", str(tmp / "ray"), "--disable-usage-stats"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=tmp, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        url = f"http://127.0.0.1:{dashboard}"
        _wait_for_job_server(url, token, proc, log)
        from ray._private.services import get_node_ip_address

        # The address Ray put the GCS on: it replaces a loopback --node-ip-address by this one.
        yield Head(url, f"{get_node_ip_address()}:{gcs}", env, tmp)
    finally:
        _stop(proc)
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


def ray_job(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ray"), "job", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_submitted_run_succeeds_and_writes_its_report(head):
    out = head.tmp / "runs" / "digits"  # absolute: the job's cwd is its copy of the working dir
    env_file = offline_runtime_env(head.tmp)
    sub = ray_job(head.env, "submit", "--address", head.url, "--submission-id", "rs-digits",
                  "--working-dir", ".", "--runtime-env", str(env_file), "--",
                  "raysynth", "run", *RUN_ARGS, "--out", str(out), timeout=600)
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
                 "search: 2/2 trials, best 0.", "final training: 3/3 runs"):
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
    env = {**_base_env(), "HOME": str(head.tmp / "empty-home")}  # no ~/.ray/auth_token either
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
    env = {**_base_env(), "HOME": str(head.tmp / "empty-home"), "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "RAY_gcs_server_port_wait_time_s": "2"}  # two attempts, not Ray's default retries
    proc = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0 and "connected" not in proc.stdout
    assert "AuthenticationError" in proc.stderr and "InvalidAuthToken" in proc.stderr, \
        proc.stderr[-3000:]
