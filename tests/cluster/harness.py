"""A Ray cluster whose nodes share no disk, on this one machine (issue #13, "The proof").

- a Ray head on loopback (`ray start --head --block`, token authentication on, as Ray 2.60 does
  for local clusters), with no CPUs of its own: the job's driver runs there, the work elsewhere;
- two worker raylets, each started inside its own mount namespace (`unshare -m`, root only) with
  a private tmpfs mounted over the test's whole folder (``root``). A worker therefore sees none of
  what the head and the driver wrote there (the job's working-dir copy, the tiny models, any local
  run directory), and its own Ray temp dir, ``HOME`` (Ray Train's default ``~/ray_results``) and
  ``HF_HOME`` start empty and stay invisible to the head. Each advertises one logical GPU and a
  ``worker_<i>`` resource;
- shared storage: a bucket on an S3-compatible server on loopback (tests/conftest.py's
  ``s3_server``, moto's ``ThreadedMotoServer``), reached by every node through pyarrow's S3
  filesystem with the standard AWS_* variables, which the nodes and each job's runtime_env get.

Token authentication (ray/_private/authentication/): every process runs with RAY_AUTH_MODE=token
and reads the token from RAY_AUTH_TOKEN, else the file RAY_AUTH_TOKEN_PATH names, else
~/.ray/auth_token. The head and the test's client use a token file in ``root``; the worker
raylets cannot see that file (their tmpfs hides it) and get the same token in RAY_AUTH_TOKEN.

Every process started here is stopped by killing exactly that process tree, by pid — never with
`ray stop`, which would kill every Ray instance on the machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from ray_head import (
    BIN,
    HeadError,
    base_env,
    free_ports,
    node_ports,
    ray_job,
    start_head,
    stop_tree,
)

BUCKET = "raysynth"
# Names in a folder that only a run directory (or Ray Train's local results) puts there.
RUN_MARKS = (".raysynth-run", "stages.json", "report.json", "synthesis.json", "ray_results")


HarnessError = HeadError


@dataclass
class S3:
    """The shared storage: a bucket on an S3-compatible server, as every node reaches it."""

    env: dict[str, str]  # AWS_ENDPOINT_URL, credentials, region: for the nodes and the jobs

    def filesystem(self, **options):
        from pyarrow import fs

        scheme, _, host = self.env["AWS_ENDPOINT_URL"].partition("://")
        return fs.S3FileSystem(endpoint_override=host, scheme=scheme,
                               access_key=self.env["AWS_ACCESS_KEY_ID"],
                               secret_key=self.env["AWS_SECRET_ACCESS_KEY"],
                               region=self.env["AWS_REGION"], **options)

    def uri(self, key: str) -> str:
        return f"s3://{BUCKET}/{key.strip('/')}"

    def keys(self, prefix: str) -> list[str]:
        """Every object under ``s3://BUCKET/prefix/``, as keys relative to that prefix."""
        from pyarrow import fs

        base = f"{BUCKET}/{prefix.strip('/')}"
        try:
            infos = self.filesystem().get_file_info(fs.FileSelector(base, recursive=True))
        except FileNotFoundError:
            return []
        return sorted(i.path[len(base) + 1:] for i in infos if i.type == fs.FileType.File)

    def read(self, key: str) -> bytes:
        with self.filesystem().open_input_stream(f"{BUCKET}/{key.strip('/')}") as f:
            return f.read()


def shared_storage(server_env: dict[str, str]) -> S3:
    """The bucket of the cluster tests on the S3 server ``server_env`` names (tests/conftest.py's
    ``s3_server``: moto on loopback)."""
    region = server_env.get("AWS_REGION") or server_env.get("AWS_DEFAULT_REGION", "us-east-1")
    s3 = S3({**server_env, "AWS_REGION": region, "AWS_DEFAULT_REGION": region})
    s3.filesystem(allow_bucket_creation=True).create_dir(BUCKET)
    return s3


@dataclass
class Worker:
    index: int
    proc: subprocess.Popen
    log: Path

    def private_files(self, root: Path) -> list[str]:
        """Every file under ``root`` as this worker's mount namespace sees it (its tmpfs)."""
        out = subprocess.run(["nsenter", "-t", str(self.proc.pid), "-m", "--", "find",
                              str(root), "-type", "f"], capture_output=True, text=True,
                             timeout=60)
        if out.returncode != 0:
            raise HarnessError(f"nsenter into worker {self.index}: {out.stderr[-2000:]}")
        return sorted(line for line in out.stdout.splitlines() if line)


@dataclass
class Cluster:
    root: Path  # the head's (and driver's) view of the test's folder
    url: str  # the job server, bound to 127.0.0.1
    gcs: str  # host:port of the GCS
    env: dict[str, str]  # an authorised client's environment (token, AWS_*)
    s3: S3
    token: str
    head: subprocess.Popen
    worker_env: dict[str, str]
    cpus_per_worker: int
    workers: list[Worker] = field(default_factory=list)

    def job(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return ray_job(self.env, *args, cwd=self.root, timeout=timeout)

    def submit(self, job_id: str, working_dir: Path, entrypoint: list[str],
               env_vars: dict[str, str] | None = None, wait: bool = True,
               timeout: float = 900) -> subprocess.CompletedProcess:
        """`ray job submit` (``wait``: and follow its logs to the end) with ``working_dir``
        uploaded and the S3 variables in the job's runtime_env."""
        runtime_env = {"env_vars": {**self.s3.env, **(env_vars or {})}}
        args = ["submit", "--address", self.url, "--submission-id", job_id,
                "--working-dir", str(working_dir), "--runtime-env-json", json.dumps(runtime_env)]
        if not wait:
            args.append("--no-wait")
        return self.job(*args, "--", *entrypoint, timeout=timeout)

    def _api(self, path: str, method: str = "GET") -> dict:
        """The job server's REST API (what `ray job status/logs/stop` call), with the token."""
        request = urllib.request.Request(f"{self.url}/api/jobs/{path}", method=method,
                                         headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, timeout=30) as r:
            return json.loads(r.read() or b"{}")

    def status(self, job_id: str) -> str:
        """PENDING, RUNNING, STOPPED, SUCCEEDED or FAILED."""
        return self._api(job_id)["status"]

    def logs(self, job_id: str) -> str:
        return self._api(f"{job_id}/logs")["logs"]

    def stop_job(self, job_id: str) -> None:
        """Stop the job: Ray kills its driver (SIGTERM, then SIGKILL)."""
        self._api(f"{job_id}/stop", method="POST")

    def wait_for_end(self, job_id: str, timeout: float = 900) -> str:
        deadline = time.time() + timeout
        while time.time() < deadline:
            status = self.status(job_id)
            if status in ("SUCCEEDED", "FAILED", "STOPPED"):
                return status
            time.sleep(2)
        raise HarnessError(f"job {job_id} still running after {timeout:.0f} s")

    def wait_for_log(self, job_id: str, text: str, timeout: float = 1800) -> str:
        """Poll the job's log until ``text`` appears; the log so far."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            logs = self.logs(job_id)
            if text in logs:
                return logs
            if self.status(job_id) in ("SUCCEEDED", "FAILED", "STOPPED"):
                raise HarnessError(f"job {job_id} ended before {text!r}:\n{logs[-4000:]}")
            time.sleep(2)
        raise HarnessError(f"no {text!r} in job {job_id}'s log after {timeout:.0f} s")

    def remove_worker(self, index: int) -> None:
        stop_tree(self.workers[index].proc)

    def restore_workers(self) -> None:
        """Start again every worker node that was removed or died."""
        for w in self.workers:
            if w.proc.poll() is not None:
                self.restart_worker(w.index)

    def restart_worker(self, index: int) -> None:
        """A fresh worker node (empty private view) in place of a removed one."""
        stop_tree(self.workers[index].proc)
        shutil.rmtree(self.workers[index].log.parent, ignore_errors=True)
        self.workers[index] = _start_worker(index, self.root, self.gcs, self.worker_env,
                                            self.cpus_per_worker)
        _wait_for_nodes(self)

    def local_run_files(self) -> list[str]:
        """Files under ``root`` on the head's disk that only a run directory (or Ray Train's
        local results) would write, or that sit in a folder a URI became (``s3:``)."""
        return _run_like(str(p) for p in self.root.rglob("*") if p.is_file())

    def worker_run_files(self) -> dict[int, list[str]]:
        """The same on each live worker's private view, and any file there outside its Ray temp
        dir and its caches (HF_HOME, ~/.cache, ~/.config)."""
        allowed = tuple(f"{self.root / d}/" for d in ("ray", "hf", "home/.cache", "home/.config"))
        found = {}
        for w in self.workers:
            if w.proc.poll() is not None:
                continue
            files = w.private_files(self.root)
            outside = [f for f in files if not f.startswith(allowed)]
            found[w.index] = sorted(set(_run_like(files)) | set(outside))
        return found


def _run_like(paths) -> list[str]:
    hits = []
    for p in paths:
        parts = Path(p).parts
        if any(part in RUN_MARKS or part.endswith(":") for part in parts):
            hits.append(p)
    return sorted(hits)


def _alive_nodes(url: str, token: str) -> int:
    """How many nodes the state API (`ray list nodes`'s endpoint) reports alive."""
    request = urllib.request.Request(f"{url}/api/v0/nodes?limit=100",
                                     headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            rows = json.loads(r.read())["data"]["result"]["result"]
    except (urllib.error.URLError, OSError, KeyError, TypeError, ValueError):
        return 0
    return sum(row.get("state") == "ALIVE" for row in rows)


def _wait_for_nodes(cluster: Cluster, retries: int = 4) -> None:
    """Until the head and every worker are alive in the state API; a worker whose `ray start`
    exited is started again (``retries`` times each)."""
    n = 1 + len(cluster.workers)
    left = {w.index: retries for w in cluster.workers}
    deadline = time.time() + 420  # generous: on a busy 2-core machine a raylet takes minutes
    while time.time() < deadline:
        if cluster.head.poll() is not None:
            raise HarnessError(f"the head's `ray start` exited with {cluster.head.returncode}:\n"
                               f"{(cluster.root / 'head.log').read_text()[-3000:]}")
        if _alive_nodes(cluster.url, cluster.token) >= n:
            return
        for i, w in enumerate(cluster.workers):
            if w.proc.poll() is not None:
                if not left[w.index]:
                    raise HarnessError(f"worker {w.index} did not start:\n"
                                       f"{w.log.read_text()[-3000:]}")
                left[w.index] -= 1
                shutil.rmtree(w.log.parent, ignore_errors=True)
                cluster.workers[i] = _start_worker(w.index, cluster.root, cluster.gcs,
                                                   cluster.worker_env, cluster.cpus_per_worker)
        time.sleep(2)
    logs = "\n".join(f"--- worker {w.index} (exit {w.proc.poll()}):\n{w.log.read_text()[-2000:]}"
                     for w in cluster.workers)
    raise HarnessError(f"{n} nodes did not join the cluster at {cluster.url}:\n{logs}")


def can_run() -> str | None:
    """Why this machine cannot run the harness, or None."""
    if os.geteuid() != 0:
        return "needs root: the worker raylets run in their own mount namespace (unshare -m)"
    for tool in ("unshare", "nsenter", "mount"):
        if shutil.which(tool) is None:
            return f"needs `{tool}` (util-linux) for the workers' private mount namespaces"
    try:
        import moto.server  # noqa: F401
    except ImportError:
        return "needs moto[server] (pip install -e '.[dev]') for the local S3 server"
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs tmpfs /mnt"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot mount a tmpfs in a new mount namespace here: {probe.stderr.strip()}"
    return None


def start_cluster(s3: S3, workers: int = 2, cpus_per_worker: int = 2,
                  attempts: int = 5) -> Cluster:
    """The head and ``workers`` worker raylets in private mount namespaces, sharing ``s3``; the
    caller stops it with :func:`stop_cluster`.

    `ray start` gives its raylet a fixed 30 s to register with the GCS (ray/_private/node.py) and
    exits when it takes longer, as it does on a machine whose cores are all busy; so a node that
    exits while starting is started again, and a head that does starts the cluster again.
    """
    for attempt in range(1, attempts + 1):
        try:
            return _start_cluster_once(s3, workers, cpus_per_worker)
        except HarnessError:
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")


def _start_cluster_once(s3: S3, workers: int, cpus_per_worker: int) -> Cluster:
    # Short: Ray's Unix sockets live under the temp dirs, their paths are limited to 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="rsc-", dir="/tmp"))
    head = cluster = None
    try:
        common = {**base_env(), **s3.env, "HF_HUB_OFFLINE": "1",
                  # the work (every Ray worker process) at the lowest priority; see _daemon
                  "RAY_worker_niceness": "19",
                  "RAY_TRAIN_V2_ENABLED": "1", "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}
        (root / "home").mkdir()
        head = start_head(root, {**common, "HOME": str(root / "home"), "HF_HOME": str(root / "hf")},
                          num_cpus=0, preexec_fn=_daemon)
        worker_env = {**common, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": head.token,
                      "HOME": str(root / "home"), "HF_HOME": str(root / "hf")}
        cluster = Cluster(root, head.url, head.gcs, head.env, s3, head.token, head.proc,
                          worker_env, cpus_per_worker)
        for i in range(workers):
            cluster.workers.append(_start_worker(i, root, head.gcs, worker_env, cpus_per_worker))
        _wait_for_nodes(cluster)
        return cluster
    except BaseException:
        if cluster is not None:
            stop_cluster(cluster)
        else:
            stop_tree(head.proc if head is not None else None)
            shutil.rmtree(root, ignore_errors=True)
        raise


def _daemon() -> None:
    """Ray's daemons (GCS, raylet, dashboard) at normal priority, even when the tests run under
    `nice -n 19`: `ray start` gives its raylet a fixed 30 s to register, which a niced raylet on a
    busy machine misses. The heavy part, every worker process, runs at niceness 19
    (RAY_worker_niceness) all the same."""
    os.setpriority(os.PRIO_PROCESS, 0, 0)


def _start_worker(i: int, root: Path, gcs: str, env: dict[str, str], cpus: int) -> Worker:
    private = root  # the tmpfs hides everything the head wrote under root
    ray_cmd = [str(BIN / "ray"), "start", "--block", "--address", gcs,
               "--node-ip-address", "127.0.0.1", *node_ports(free_ports(4)),
               "--num-cpus", str(cpus), "--num-gpus", "1",
               "--resources", json.dumps({f"worker_{i}": 1}),
               "--temp-dir", str(root / "ray"), "--disable-usage-stats"]
    script = (f"mount -t tmpfs tmpfs {private} && mkdir -p {root}/ray {root}/home {root}/hf "
              f"&& exec {' '.join(_quote(a) for a in ray_cmd)}")
    log = Path(tempfile.mkdtemp(prefix=f"rsc-w{i}-", dir="/tmp")) / "worker.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                                env=env, cwd="/", stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=_daemon)
    return Worker(i, proc, log)


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


def stop_cluster(cluster: Cluster) -> None:
    for w in cluster.workers:
        stop_tree(w.proc)
        shutil.rmtree(w.log.parent, ignore_errors=True)
    stop_tree(cluster.head)
    shutil.rmtree(cluster.root, ignore_errors=True)
