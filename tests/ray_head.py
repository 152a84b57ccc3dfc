"""A Ray head started by a test as a separate Ray instance (`ray start --head --block`, token
authentication on, its own session, temp dir and free ports), shared by tests/e2e/test_job_submit.py
(a head that runs the job itself) and tests/cluster/harness.py (a CPU-less head with worker raylets
in private mount namespaces).

Token authentication, as Ray 2.60 does it (ray/_private/authentication/): every node and every
client runs with RAY_AUTH_MODE=token; a process reads the token from RAY_AUTH_TOKEN, else the file
named by RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token. The head and the authorised client use a
token file made for the test (RAY_AUTH_TOKEN_PATH), so ~/.ray/auth_token is neither read nor
written.

Every process started here is stopped by killing exactly that process tree, by pid — never with
`ray stop`, which would kill every Ray instance on the machine, other test runs' included.
``tests/`` is on ``sys.path`` (the root conftest's folder), so tests import this as ``ray_head``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil

BIN = Path(sys.executable).parent  # this virtualenv: `ray`, `python`, `raysynth`
# Variables of the test process that must not leak into a head or its clients (another Ray to
# join, another token, another S3 endpoint's profile).
DROPPED = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS",
           "RAY_API_SERVER_ADDRESS", "RAY_TMPDIR", "AWS_PROFILE", "AWS_SESSION_TOKEN",
           "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE")


class HeadError(RuntimeError):
    """The head (or a node) did not start, or a job did not do what was waited for."""


@dataclass
class Head:
    proc: subprocess.Popen  # `ray start --head --block`, its own session
    url: str  # the job server (dashboard), bound to 127.0.0.1
    gcs: str  # host:port of the GCS
    token: str
    env: dict[str, str]  # an authorised client's environment (the token file)
    tmp: Path  # the head's folder: its temp dir, log and token file


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def base_env() -> dict[str, str]:
    """This process's environment without :data:`DROPPED`, with this virtualenv first on PATH."""
    env = {k: v for k, v in os.environ.items() if k not in DROPPED}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def stop_tree(proc: subprocess.Popen | None) -> None:
    """SIGTERM, then SIGKILL, to ``proc`` and every process under it (for a head: GCS, raylet,
    dashboard, workers, the job supervisor and the job's driver), by pid."""
    if proc is None:
        return
    try:
        root = psutil.Process(proc.pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=3)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=10)
    with contextlib.suppress(Exception):
        proc.wait(timeout=5)


def node_ports(ports: list[int]) -> list[str]:
    """Ports Ray would otherwise take from fixed defaults, which two raylets on one machine (or a
    test's head and another Ray) would share."""
    agent, agent_grpc, metrics, runtime_env = ports
    return ["--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port",
            str(agent_grpc), "--metrics-export-port", str(metrics),
            "--runtime-env-agent-port", str(runtime_env)]


def start_head(tmp: Path, env: dict[str, str], num_cpus: int, preexec_fn=None) -> Head:
    """`ray start --head --block` on loopback with token authentication, its temp dir under
    ``tmp`` (short: Ray's Unix socket paths are limited to 107 bytes), ``num_cpus`` CPUs and no
    GPU; returns once its job server answers. ``env``: the head's environment (RAY_AUTH_MODE and
    the token file are added)."""
    token = secrets.token_hex(32)
    token_file = tmp / "auth_token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    env = {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file)}
    gcs_port, dashboard, client, *ports = free_ports(7)
    log = tmp / "head.log"
    cmd = [str(BIN / "ray"), "start", "--head", "--block",
           # Ray resolves a loopback --node-ip-address to the machine's address for its RPC
           # ports; the job server (dashboard) is the one bound to 127.0.0.1 only.
           "--node-ip-address", "127.0.0.1", "--port", str(gcs_port),
           "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
           *node_ports(ports), "--ray-client-server-port", str(client),
           "--num-cpus", str(num_cpus), "--num-gpus", "0", "--temp-dir", str(tmp / "ray-head"),
           "--disable-usage-stats"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=tmp, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=preexec_fn)
    url = f"http://127.0.0.1:{dashboard}"
    try:
        _wait_for_job_server(url, token, proc, log)
    except BaseException:
        stop_tree(proc)
        raise
    from ray._private.services import get_node_ip_address

    # The address Ray put the GCS on: it replaces a loopback --node-ip-address by this one.
    client_env = {**base_env(), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file)}
    return Head(proc, url, f"{get_node_ip_address()}:{gcs_port}", token, client_env, tmp)


def _wait_for_job_server(url: str, token: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.time() + 180
    request = urllib.request.Request(f"{url}/api/jobs/",
                                     headers={"Authorization": f"Bearer {token}"})
    while time.time() < deadline:
        if proc.poll() is not None:
            raise HeadError(f"`ray start --head` exited with {proc.returncode}:\n"
                            f"{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(request, timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(1)
    raise HeadError(f"the job server at {url} did not come up:\n{log.read_text()[-3000:]}")


def ray_job(env: dict[str, str], *args: str, cwd: Path | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
    """`ray job ARGS` (this virtualenv's CLI) with ``env``."""
    return subprocess.run([str(BIN / "ray"), "job", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
