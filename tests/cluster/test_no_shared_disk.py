"""`ray job submit` of raysynth runs to a cluster whose nodes share no disk (issue #13, "The
proof"; the cluster is ``harness.py``'s: a CPU-less head, two worker raylets in private mount
namespaces with one logical GPU each, token authentication on, a moto S3 server as the only shared
storage). Every run writes to ``--out s3://raysynth/runs/<name>``; each test checks the bucket,
that the head's disk holds no run directory, and that nothing was written in a worker's private
view outside its Ray temp dir and its caches.

The head has no CPUs, so every task, actor, Tune trial and Ray Train worker runs on a worker node;
only the job's driver runs on the head.

One cluster for the whole module, and several proofs per job (the tier's time budget in CI): the
text-to-image recipe is killed mid-search and mid-final-training and resumed each time (the final
run from its checkpoint in the bucket); the unCLIP synthesis (its model only in the head's Hugging
Face cache, so the workers get it through the model store) loses a worker node mid-synthesis; the
digits preset synthesizes with its pixel model (trained by the driver, read from the bucket).
"""

from __future__ import annotations

import json
import time

import pytest
from harness import HarnessError
from jobdir import CLASSES, TEXT2IMAGE, UNCLIP_ID, write_recipe
from train_checkpoints import registered

from raysynth.plan.rows import sample_id

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

CLI = ["python", "-m", "raysynth.cli"]
# `--preset digits` at the smoke budget, shrunk as tests/e2e/test_job_submit.py does (only
# `synthesize` runs it here).
DIGITS = ["--preset", "digits", "--set", "budget=smoke", "--set", "data.classes=0,1,2",
          "--set", "data.k=8", "--set", "synthesis.generator.pixel_train_steps=40",
          "--set", "synthesis.generator.pixel_channels=[8,16]",
          "--set", "synthesis.generator.num_steps=8", "--set", "filter.enabled=false"]
FINAL_RUNS = tuple(f"{m}-r" for m in ("supcon_real", "supcon_mixed", "unicon"))


def _no_local_run_dirs(cluster) -> None:
    assert cluster.local_run_files() == [], "a run directory on the head's (driver's) disk"
    leaks = cluster.worker_run_files()
    assert leaks == {w.index: [] for w in cluster.workers if w.proc.poll() is None}, \
        "files in a worker's private view outside its Ray temp dir"


def _submit(cluster, job_dir, job_id: str, args: list[str], timeout: float = 2400) -> str:
    """Submit, wait for the job to end (the client does not follow it: a run outlives any
    client-side timeout on a busy machine) and check it succeeded; its log."""
    _start(cluster, job_dir, job_id, args)
    status = cluster.wait_for_end(job_id, timeout=timeout)
    logs = cluster.logs(job_id)
    assert status == "SUCCEEDED", logs[-6000:]
    return logs


def _start(cluster, job_dir, job_id: str, args: list[str]) -> None:
    sub = cluster.submit(job_id, job_dir, [*CLI, *args], wait=False)
    assert sub.returncode == 0, sub.stdout[-3000:] + sub.stderr[-3000:]


def _kill_when(cluster, job_id: str, prefix: str, match, what: str) -> None:
    """Stop the job (Ray kills its driver) once an object ``match`` accepts is in the bucket."""
    if not _first_key(cluster, prefix, match, timeout=1800, job_id=job_id):
        raise HarnessError(f"{job_id}: no {what} after 1800 s:\n{cluster.logs(job_id)[-4000:]}")
    cluster.stop_job(job_id)
    assert cluster.wait_for_end(job_id, timeout=600) == "STOPPED", cluster.logs(job_id)[-4000:]


def _final_checkpoints(cluster, name: str) -> dict[str, dict[str, int]]:
    """The final training runs' Ray Train checkpoints in the bucket: run (``supcon_real-r0``, …)
    → checkpoint folder → the epoch its ``state.json`` records (the metrics-only checkpoint of a
    run's last report has none)."""
    out: dict[str, dict[str, int]] = {}
    for k in cluster.s3.keys(f"runs/{name}/train"):
        run, _, rest = k.partition("/")
        folder, _, file = rest.partition("/")
        if run.startswith(FINAL_RUNS) and folder.startswith("checkpoint_") and file == "state.json":
            state = json.loads(cluster.s3.read(f"runs/{name}/train/{k}"))
            out.setdefault(run, {})[folder] = int(state["epoch"])
    return out


def _registered(cluster, name: str, run: str) -> str | None:
    """The newest checkpoint Ray Train has registered for ``run`` (tests/train_checkpoints.py)."""
    prefix = f"runs/{name}/train/{run}"
    return registered(set(cluster.s3.keys(prefix)), lambda k: cluster.s3.read(f"{prefix}/{k}"))


def _kill_mid_final(cluster, job_id: str, name: str, timeout: float = 1800) -> None:
    """Stop the job once Ray Train has registered a checkpoint of a final training run that has
    no result yet (a checkpoint put in the bucket but not yet registered when the driver dies is
    not one Ray Train resumes from: its controller had not recorded it)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        keys = set(cluster.s3.keys(f"runs/{name}/train"))
        runs = {k.split("/")[0] for k in keys if k.startswith(FINAL_RUNS)}
        if any(f"{run}/result.json" not in keys and _registered(cluster, name, run)
               for run in runs):
            cluster.stop_job(job_id)
            assert cluster.wait_for_end(job_id, timeout=600) == "STOPPED", \
                cluster.logs(job_id)[-4000:]
            return
        if cluster.status(job_id) in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        time.sleep(0.5)
    raise HarnessError(f"{job_id}: no registered checkpoint of an unfinished final run:\n"
                       f"{cluster.logs(job_id)[-4000:]}")


def _report(cluster, name: str) -> dict:
    return json.loads(cluster.s3.read(f"runs/{name}/report.json"))


def _stamps(cluster, name: str) -> dict[str, tuple[float, int]]:
    """(mtime, size) of every object of the run, by key."""
    from pyarrow import fs

    base = f"raysynth/runs/{name}"
    infos = cluster.s3.filesystem().get_file_info(fs.FileSelector(base, recursive=True))
    return {i.path[len(base) + 1:]: (i.mtime.timestamp(), i.size)
            for i in infos if i.type == fs.FileType.File}


def _trials(cluster, name: str) -> list[str]:
    return cluster.s3.read(f"runs/{name}/tune/trials.jsonl").decode().splitlines()


def test_text2image_recipe_killed_mid_search_and_mid_final_training(cluster, job_dir):
    """Feedback guidance, the CLIP filter, the UniCon weight search (trials on the worker nodes)
    and final training with train.num_workers=2, all results in the bucket. The driver is killed
    (`ray job stop`) once the search has a finished trial, and again once a final training run
    has a Ray Train checkpoint in the bucket and no result; the same command with --resume on the
    same --out each time: the last one SUCCEEDS, nothing finished is redone, the search ends with
    exactly tune.num_samples trials, and the interrupted final run continues from its checkpoint
    in the bucket (its first epoch after the resume is one after a checkpointed epoch, not 0)."""
    recipe = {**TEXT2IMAGE, "tune": {**TEXT2IMAGE["tune"], "num_samples": 2, "max_concurrent": 1}}
    write_recipe(job_dir, "t2i.yaml", recipe)
    out = cluster.s3.uri("runs/t2i")
    args = ["run", "--config", "t2i.yaml", "--out", out]

    _start(cluster, job_dir, "t2i-1", args)
    _kill_when(cluster, "t2i-1", "runs/t2i", lambda k: k == "tune/trials.jsonl", "finished trial")
    synthesis = {k: v for k, v in _stamps(cluster, "t2i").items()
                 if k.startswith(("real/", "synthetic/", "synthesis.json", "train/real"))}
    assert any(k.startswith("synthetic/") for k in synthesis), synthesis
    first_trials = _trials(cluster, "t2i")
    assert len(first_trials) == 1

    _start(cluster, job_dir, "t2i-2", [*args, "--resume"])
    _kill_mid_final(cluster, "t2i-2", "t2i")
    searched = {k: v for k, v in _stamps(cluster, "t2i").items()
                if k.startswith("tune/") or (k.startswith("train/") and k.endswith("/result.json"))}
    before = _final_checkpoints(cluster, "t2i")
    # unfinished runs → the epoch of the checkpoint Ray Train registered last (resumes from)
    interrupted = {run: ckpts[_registered(cluster, "t2i", run)] for run, ckpts in before.items()
                   if f"train/{run}/result.json" not in searched
                   and _registered(cluster, "t2i", run) in ckpts}
    assert interrupted, f"no unfinished final run had a registered checkpoint: {before}"

    logs = _submit(cluster, job_dir, "t2i-3", [*args, "--resume"])
    after = _stamps(cluster, "t2i")
    # nothing finished was redone: the synthesis before the first kill, the search and the
    # finished final runs before the second
    assert {k: after.get(k) for k in synthesis} == synthesis
    assert {k: after.get(k) for k in searched} == searched
    # the interrupted run resumed from the killed job's checkpoint that Ray Train finds in the
    # bucket: its checkpoints after the resume are of the epochs after that one (none again
    # from epoch 0)
    resumed = _final_checkpoints(cluster, "t2i")
    epochs = recipe["encoder"]["epochs"]
    for run, last in interrupted.items():
        new = sorted(e for f, e in resumed[run].items() if f not in before[run])
        assert new == list(range(last + 1, epochs)), (run, last, before[run], resumed[run])
        assert f"train/{run}/result.json" in after
    trials = _trials(cluster, "t2i")
    assert trials[:1] == first_trials and len(trials) == 2  # exactly tune.num_samples
    assert "[4/6] search" in logs and "[5/6] final" in logs

    keys = set(after)
    assert {"report.json", "report.html", "config.yaml", "synthesis.json"} <= keys, keys
    assert any(k.startswith("tune/") and k.endswith("result.json") for k in keys), keys
    assert any(k.startswith("train/") and "checkpoint" in k for k in keys), keys
    assert any(k.startswith("models/") and k.endswith("manifest.json") for k in keys), keys
    report = _report(cluster, "t2i")
    assert report["classes"] == list(CLASSES)
    assert report["tune"]["trials"] == 2
    assert report["synthesis"]["planned"] == report["synthesis"]["accepted"] == 2 * len(CLASSES)
    for method in ("supcon_real", "supcon_mixed", "unicon"):
        assert f"train/{method}-r0/result.json" in keys
        assert 0.0 <= report["accuracy"][method]["mean"] <= 1.0
    _no_local_run_dirs(cluster)


def test_air_flow_on_nodes_without_a_shared_disk(cluster, job_dir):
    """AiR: pseudo-labels on the worker nodes, the LoRA adapter written to the bucket and read by
    the generator actors there, prototypes and prompt learning; the report in the bucket."""
    _submit(cluster, job_dir, "air", ["run", "--config", "air.yaml",
                                             "--out", cluster.s3.uri("runs/air")])
    keys = set(cluster.s3.keys("runs/air"))
    assert {"report.json", "report.html", "air/lora/pytorch_lora_weights.safetensors",
            "air/test.npz"} <= keys, sorted(keys)
    assert any(k.startswith("synthetic/") and k.endswith(".parquet") for k in keys), keys
    air = _report(cluster, "air")["air"]
    assert air["synthetic"] == 2 * len(CLASSES) and air["unlabeled"] == 6 * len(CLASSES)
    assert set(air["prototypes"]) == set(CLASSES)
    assert [h["iteration"] for h in air["history"]] == [1]
    for key in ("zero_shot", "fused", "prompt", "prompt_fused"):
        assert 0.0 <= air["test_accuracy"][key] <= 1.0
    _no_local_run_dirs(cluster)


def test_digits_preset_on_nodes_without_a_shared_disk(cluster, job_dir):
    """The digits preset's own path: the pixel diffusion model trained by the driver, its folder
    put in the bucket (``generator/``) and read there by the generator actors on the worker
    nodes. `raysynth synthesize` (the search and final training on worker nodes are the
    text-to-image test's)."""
    _submit(cluster, job_dir, "digits", ["synthesize", *DIGITS,
                                         "--out", cluster.s3.uri("runs/digits")])
    keys = cluster.s3.keys("runs/digits")
    assert any(k.startswith("generator/") for k in keys), keys  # the pixel model
    synthesis = json.loads(cluster.s3.read("runs/digits/synthesis.json"))
    assert synthesis["planned"] == 3 * 4, synthesis  # 3 classes, k/2 = 4 images each
    ids = _sample_ids(cluster, "digits")
    assert len(ids) == len(set(ids)) == synthesis["planned"]
    _no_local_run_dirs(cluster)


def test_unclip_synthesis_loses_a_worker_node(cluster, job_dir):
    """unCLIP conditioned on the real images in the bucket, its model only in the head's Hugging
    Face cache (a hub id, offline): each worker copies it from the model store. A worker raylet (and
    everything on it) is killed as its generator actor starts; the synthesis completes on the
    other node, which copies the model itself, and every planned sample_id is in the bucket
    exactly once."""
    per_class = 6
    out = cluster.s3.uri("runs/unclip")
    _start(cluster, job_dir, "unclip", ["synthesize", "--config", "unclip.yaml", "--out", out])
    cluster.wait_for_log("unclip", "[3/6] synthesis")
    # remove the node whose generator actor is starting: the first to copy the model from the
    # store (on an idle machine the 18 images take seconds, so waiting for a first part would
    # often be too late)
    store = f"raysynth-models/{UNCLIP_ID.replace('/', '--')}/"
    lost = _first_copy(cluster, "unclip", store)
    cluster.remove_worker(lost)
    written = _sample_ids(cluster, "unclip")
    assert cluster.wait_for_end("unclip", timeout=2400) == "SUCCEEDED", \
        cluster.logs("unclip")[-6000:]
    planned = {sample_id(0, c, i) for c in CLASSES for i in range(per_class)}
    assert len(written) < len(planned), "the node was removed after the synthesis"
    assert sorted(_sample_ids(cluster, "unclip")) == sorted(planned)  # each exactly once
    keys = cluster.s3.keys("runs/unclip")
    # the model reached the workers through the store: published once in the bucket, and the
    # surviving node holds its own copy of it in its (first empty) HF_HOME
    assert any(k.startswith("models/") and k.endswith("manifest.json") for k in keys), keys
    survivor = cluster.workers[1 - lost].private_files(cluster.root / "hf")
    assert any(store in f and f.endswith("model_index.json") for f in survivor), survivor
    _no_local_run_dirs(cluster)


def _first_copy(cluster, job_id: str, store: str, timeout: float = 600) -> int:
    """The first worker node whose private HF_HOME holds (part of) a copy under ``store``."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for w in cluster.workers:
            if any(store in f for f in w.private_files(cluster.root / "hf")):
                return w.index
        if cluster.status(job_id) in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        time.sleep(0.2)
    raise HarnessError(f"{job_id}: no worker copied {store}:\n{cluster.logs(job_id)[-4000:]}")


def _sample_ids(cluster, name: str) -> list[str]:
    """Every sample_id of the run's synthetic table in the bucket (duplicates kept)."""
    import pyarrow.parquet as pq

    fs = cluster.s3.filesystem()
    return [s for k in cluster.s3.keys(f"runs/{name}")
            if k.startswith("synthetic/") and k.endswith(".parquet")
            for s in pq.read_table(f"raysynth/runs/{name}/{k}", filesystem=fs,
                                   columns=["sample_id"])["sample_id"].to_pylist()]


def _first_key(cluster, prefix: str, match, timeout: float, job_id: str | None = None):
    """The first object key under ``prefix`` that ``match`` accepts, within ``timeout`` (None
    also as soon as job ``job_id`` has ended)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = [k for k in cluster.s3.keys(prefix) if match(k)]
        if found:
            return found[0]
        if job_id and cluster.status(job_id) in ("SUCCEEDED", "FAILED", "STOPPED"):
            return None
        time.sleep(2)
    return None
