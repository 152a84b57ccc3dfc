"""`ray job submit` of raysynth runs to a cluster whose nodes share no disk (issue #13, "The
proof"; the cluster is ``harness.py``'s: a CPU-less head, two worker raylets in private mount
namespaces with one logical GPU each, token authentication on, a moto S3 server as the only shared
storage). Every run writes to ``--out s3://raysynth/runs/<name>``; each test checks the bucket,
that the head's disk holds no run directory, and that nothing was written in a worker's private
view outside its Ray temp dir.

The head has no CPUs, so every task, actor, Tune trial and Ray Train worker runs on a worker node;
only the job's driver runs on the head.
"""

from __future__ import annotations

import json
import time

import pytest
from harness import HarnessError
from jobdir import CLASSES, TEXT2IMAGE, make_job_dir, write_recipe

from raysynth.plan.rows import sample_id

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

CLI = ["python", "-m", "raysynth.cli"]
# `--preset digits` at the smoke budget, shrunk as tests/e2e/test_job_submit.py does, with the
# Train runs on 2 workers.
DIGITS = ["--preset", "digits", "--set", "budget=smoke", "--set", "data.classes=0,1,2",
          "--set", "data.k=8", "--set", "synthesis.generator.pixel_train_steps=40",
          "--set", "synthesis.generator.pixel_channels=[8,16]",
          "--set", "synthesis.generator.num_steps=8", "--set", "filter.enabled=false",
          "--set", "tune.num_samples=2", "--set", "tune.max_concurrent=2",
          "--set", "encoder.epochs=4", "--set", "encoder.width=8",
          "--set", "classifier.epochs=10", "--set", "train.num_workers=2",
          "--set", "train.max_failures=0"]


@pytest.fixture(scope="module")
def job_dir(cluster):
    return make_job_dir(cluster.root / "job")


def _no_local_run_dirs(cluster) -> None:
    assert cluster.local_run_files() == [], "a run directory on the head's (driver's) disk"
    leaks = cluster.worker_run_files()
    assert leaks == {w.index: [] for w in cluster.workers if w.proc.poll() is None}, \
        "files in a worker's private view outside its Ray temp dir"


def _submit(cluster, job_dir, job_id: str, args: list[str], timeout: float = 2400) -> str:
    """Submit, wait for the job to end (the client does not follow it: a run outlives any
    client-side timeout on a busy machine) and check it succeeded; its log."""
    sub = cluster.submit(job_id, job_dir, [*CLI, *args], wait=False)
    assert sub.returncode == 0, sub.stdout[-3000:] + sub.stderr[-3000:]
    status = cluster.wait_for_end(job_id, timeout=timeout)
    logs = cluster.logs(job_id)
    assert status == "SUCCEEDED", logs[-6000:]
    return logs


def _report(cluster, name: str) -> dict:
    return json.loads(cluster.s3.read(f"runs/{name}/report.json"))


def _stamps(cluster, name: str) -> dict[str, tuple[float, int]]:
    """(mtime, size) of every object of the run, by key."""
    from pyarrow import fs

    base = f"raysynth/runs/{name}"
    infos = cluster.s3.filesystem().get_file_info(fs.FileSelector(base, recursive=True))
    return {i.path[len(base) + 1:]: (i.mtime.timestamp(), i.size)
            for i in infos if i.type == fs.FileType.File}


def test_text2image_recipe_on_nodes_without_a_shared_disk(cluster, job_dir):
    """Feedback guidance, the CLIP filter, the UniCon weight search (trials on the worker nodes)
    and final training with train.num_workers=2, all results in the bucket."""
    logs = _submit(cluster, job_dir, "t2i", ["run", "--config", "t2i.yaml",
                                             "--out", cluster.s3.uri("runs/t2i")])
    keys = cluster.s3.keys("runs/t2i")
    assert {"report.json", "report.html", "config.yaml", "synthesis.json"} <= set(keys), keys
    assert any(k.startswith("synthetic/") and k.endswith(".parquet") for k in keys), keys
    assert any(k.startswith("tune/") and k.endswith("result.json") for k in keys), keys
    assert any(k.startswith("train/") and "checkpoint" in k for k in keys), keys
    report = _report(cluster, "t2i")
    assert report["classes"] == list(CLASSES)
    assert report["tune"]["trials"] == 2
    assert report["synthesis"]["planned"] == 2 * len(CLASSES)
    for method in ("supcon_real", "supcon_mixed", "unicon"):
        assert 0.0 <= report["accuracy"][method]["mean"] <= 1.0
    assert "[3/6] synthesis" in logs
    _no_local_run_dirs(cluster)


def test_digits_preset_on_nodes_without_a_shared_disk(cluster, job_dir):
    """The pixel model trained on a worker, its folder read by the generator actors on others."""
    _submit(cluster, job_dir, "digits", ["run", *DIGITS, "--out", cluster.s3.uri("runs/digits")])
    keys = cluster.s3.keys("runs/digits")
    assert {"report.json", "report.html"} <= set(keys), keys
    assert any(k.startswith("generator/") for k in keys), keys  # the pixel model
    report = _report(cluster, "digits")
    assert report["preset"] == "digits" and report["classes"] == ["0", "1", "2"]
    assert report["tune"]["trials"] == 2 and report["synthesis"]["planned"] == 12
    _no_local_run_dirs(cluster)


def test_driver_killed_mid_search_resumes_without_redoing(cluster, job_dir):
    """`ray job stop` kills the driver while the weight search runs; the same command with
    --resume on the same --out completes, keeps every object the finished stages wrote, and the
    search ends with exactly tune.num_samples trials."""
    recipe = {**TEXT2IMAGE, "tune": {**TEXT2IMAGE["tune"], "num_samples": 4, "max_concurrent": 1}}
    write_recipe(job_dir, "t2i-resume.yaml", recipe)
    out = cluster.s3.uri("runs/resume")
    args = ["run", "--config", "t2i-resume.yaml", "--out", out]
    sub = cluster.submit("resume-1", job_dir, [*CLI, *args], wait=False)
    assert sub.returncode == 0, sub.stderr[-3000:]
    cluster.wait_for_log("resume-1", "[4/6] search")
    if not _first_key(cluster, "runs/resume", lambda k: k == "tune/trials.jsonl", timeout=1800):
        raise HarnessError(f"no finished trial after 1800 s:\n{cluster.logs('resume-1')[-4000:]}")
    cluster.stop_job("resume-1")
    cluster.wait_for_end("resume-1", timeout=2400)
    before = _stamps(cluster, "resume")
    finished = {k: v for k, v in before.items()
                if k.startswith(("real/", "synthetic/", "synthesis.json"))}
    assert finished, before
    trials_before = cluster.s3.read("runs/resume/tune/trials.jsonl").decode().splitlines()
    assert 1 <= len(trials_before) < 4

    _submit(cluster, job_dir, "resume-2", [*args, "--resume"])
    after = _stamps(cluster, "resume")
    assert {k: after.get(k) for k in finished} == finished  # nothing finished was redone
    trials = cluster.s3.read("runs/resume/tune/trials.jsonl").decode().splitlines()
    assert trials[:len(trials_before)] == trials_before and len(trials) == 4
    assert _report(cluster, "resume")["tune"]["trials"] == 4
    _no_local_run_dirs(cluster)


def test_worker_node_removed_mid_synthesis(cluster, job_dir):
    """A worker raylet (and everything on it) is killed while the generator actors run; the
    synthesis completes on the other node and every planned sample_id is in the bucket once."""
    per_class = 6
    recipe = {**TEXT2IMAGE, "filter": {**TEXT2IMAGE["filter"], "enabled": False},
              "synthesis": {**TEXT2IMAGE["synthesis"], "per_class": per_class,
                            "feedback": {"criterion": "none"},
                            "pool": {**TEXT2IMAGE["synthesis"]["pool"], "batch_size": 1}}}
    write_recipe(job_dir, "t2i-lose-node.yaml", recipe)
    out = cluster.s3.uri("runs/lose-node")
    sub = cluster.submit("lose-node", job_dir, [*CLI, "synthesize", "--config",
                                                "t2i-lose-node.yaml", "--out", out], wait=False)
    assert sub.returncode == 0, sub.stderr[-3000:]
    cluster.wait_for_log("lose-node", "[3/6] synthesis")
    # the generator actors are sampling once a first part is in the bucket (or give it 30 s)
    _first_key(cluster, "runs/lose-node", lambda k: k.startswith("synthetic/"), timeout=30)
    cluster.remove_worker(1)
    try:
        cluster.wait_for_end("lose-node", timeout=2400)
        assert cluster.status("lose-node") == "SUCCEEDED", cluster.logs("lose-node")[-6000:]
        import pyarrow.parquet as pq

        parts = [k for k in cluster.s3.keys("runs/lose-node") if k.endswith(".parquet")
                 and k.startswith("synthetic/")]
        fs = cluster.s3.filesystem()
        ids = [s for k in parts for s in pq.read_table(f"raysynth/runs/lose-node/{k}",
                                                       filesystem=fs,
                                                       columns=["sample_id"])["sample_id"]
               .to_pylist()]
        planned = {sample_id(0, c, i) for c in CLASSES for i in range(per_class)}
        assert sorted(ids) == sorted(planned)  # each exactly once
        _no_local_run_dirs(cluster)
    finally:
        cluster.restart_worker(1)


def _first_key(cluster, prefix: str, match, timeout: float) -> str | None:
    """The first object key under ``prefix`` that ``match`` accepts, within ``timeout``."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = [k for k in cluster.s3.keys(prefix) if match(k)]
        if found:
            return found[0]
        time.sleep(2)
    return None
