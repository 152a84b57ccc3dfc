"""The synthesis pools on a several-node cluster (``ray.cluster_utils.Cluster``, all on this
machine): a CPU-only head and two nodes with one logical GPU each, as on a cluster with a CPU head
and one-GPU workers (cluster/). With ``gpus_per_actor=1`` the generator and embedder pools put one
actor per GPU and never two on one; a GPU node removed in the middle of synthesis loses no image
and duplicates none; on a machine without CUDA an actor Ray hands a GPU id (CUDA_VISIBLE_DEVICES)
fails naming the cause unless its device is set to cpu (which the placement tests do).

The module runs its own cluster, so it first disconnects the session's local Ray instance
(conftest's ``ray_local`` starts that one again for whatever test needs it next). The cluster's
session directories and its ``ray_current_cluster`` address file live in a temp dir of their own
(RAY_TMPDIR), so no other ``ray.init()`` on this machine can find and join it.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import torch
from tiny_models import train_pixel_folder

from raysynth import columns as col
from raysynth.config import build_config
from raysynth.filter.stage import EmbedderSpec, ImageEmbedder
from raysynth.generate.generators import GeneratorSpec
from raysynth.generate.stage import generate
from raysynth.generate.table import read_table
from raysynth.plan.quotas import plan_round
from raysynth.ray_data import map_pool
from raysynth.train.checkpoint import write_checkpoint
from raysynth.train.models import build_model, encoder_config

CLASSES = ["0", "1", "2"]
GPU_NODES = 2


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    tmp = Path(tempfile.mkdtemp(prefix="rsmn-", dir="/tmp"))  # short: Unix socket paths
    old_tmpdir = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = str(tmp)
    c = None
    try:
        c = Cluster(initialize_head=True,
                    head_node_args={"num_cpus": 1, "num_gpus": 0, "include_dashboard": False})
        for _ in range(GPU_NODES):
            c.add_node(num_cpus=1, num_gpus=1)
        ray.init(address=c.address, log_to_driver=False)
        yield c
    finally:
        ray.shutdown()
        if c is not None:
            c.shutdown()
        if old_tmpdir is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = old_tmpdir
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def pixel_folder(tmp_path_factory):
    return train_pixel_folder(tmp_path_factory.mktemp("gen"), CLASSES)


@pytest.fixture(scope="module")
def classifier_folder(tmp_path_factory):
    enc = encoder_config("small_cnn", 1, 8, 8, 16)
    model_cfg = {"kind": "classifier", "encoder": enc, "num_classes": 3}
    torch.manual_seed(0)
    return str(write_checkpoint(tmp_path_factory.mktemp("clf") / "model",
                                build_model(model_cfg), model_cfg))


def _config(**over):
    return build_config(overrides={
        "synthesis.generator.num_steps": 30, "synthesis.pool.batch_size": 2,
        "synthesis.pool.min_actors": GPU_NODES, "synthesis.pool.max_actors": GPU_NODES,
        "synthesis.pool.gpus_per_actor": 1.0, "synthesis.pool.cpus_per_actor": 0.5,
        "filter.pool.gpus_per_actor": 1.0, "filter.pool.max_actors": GPU_NODES, "filter.pool.cpus_per_actor": 0.5, "filter.pool.batch_size": 2,
        "filter.embedder": "classifier", "filter.device": "cpu", **over})


def gpu_nodes() -> dict[str, float]:
    """GPUs of each alive node."""
    import ray

    return {n["NodeID"]: n["Resources"].get("GPU", 0.0) for n in ray.nodes() if n["Alive"]}


def actor_spans(class_part: str) -> list[tuple[str, str, float, float]]:
    """(actor id, node id, start ms, end ms) of every actor, alive or dead, whose class name
    contains ``class_part`` — from the GCS actor table, which keeps dead actors. (A restarted
    actor keeps its first start time with its last node: only for pools that lost no actor.)"""
    from ray._private.state import actors

    return [(aid, a["Address"]["NodeID"], a["StartTime"], a["EndTime"] or float("inf"))
            for aid, a in actors().items() if class_part in a["ActorClassName"]]


def alive_actors(class_part: str) -> dict[str, str]:
    """Alive actors whose class name contains ``class_part``: actor id → node id."""
    from ray._private.state import actors

    return {aid: a["Address"]["NodeID"] for aid, a in actors().items()
            if a["State"] == "ALIVE" and class_part in a["ActorClassName"]}


def over_placed(spans, gpus: dict[str, float]) -> list[str]:
    """Moments at which a node held more of these one-GPU actors than it has GPUs."""
    out = []
    for node in {s[1] for s in spans}:
        events = sorted([(s[2], 1) for s in spans if s[1] == node]
                        + [(s[3], -1) for s in spans if s[1] == node], key=lambda e: (e[0], e[1]))
        running = 0
        for t, step in events:
            running += step
            if running > gpus.get(node, 0):
                out.append(f"{running} actors at t={t} on node {node[:8]} with "
                           f"{gpus.get(node, 0)} GPUs")
    return out


def test_an_actor_given_a_gpu_uses_it_or_fails_naming_the_cause(
    cluster, pixel_folder, classifier_folder
):
    """Ray hands the actor its node's logical GPU; without CUDA, device ``auto`` is then an error
    that says why (never a silent CPU); ``cpu`` set explicitly computes on the CPU."""
    import ray

    from raysynth.errors import ConfigError
    from raysynth.filter.stage import _build
    from raysynth.generate.factory import build_generator

    cfg = _config()
    spec = GeneratorSpec(cfg.synthesis.generator, cfg.synthesis.feedback, CLASSES,
                         pixel_folder=pixel_folder, channels=1, gpus=1.0)
    espec = EmbedderSpec(cfg.filter, classifier_folder, channels=1, image_size=8, device="auto")

    @ray.remote(num_gpus=1, num_cpus=0.5)
    def devices(spec, espec):
        out = [os.environ.get("CUDA_VISIBLE_DEVICES"), ray.get_gpu_ids()]
        for build in (lambda: build_generator(spec), lambda: _build(espec)):
            try:
                out.append(str(build().device))
            except ConfigError as e:
                out.append(f"error: {e}")
        return out

    visible, ids, gen, emb = ray.get(devices.remote(spec, espec), timeout=120)
    assert visible == "0" and len(ids) == 1  # Ray gave the task its node's logical GPU
    assert cfg.synthesis.generator.device == "auto"
    if torch.cuda.is_available():
        assert gen.startswith("cuda") and emb.startswith("cuda")
    else:
        for msg, key in ((gen, "synthesis.generator.device"), (emb, "filter.device")):
            assert msg.startswith(f"error: {key}=auto: this process was given 1 GPU(s)"), msg
            assert "CPU-only build" in msg or "no CUDA device is usable" in msg, msg
            assert f"set {key}=cpu" in msg
    g_cpu = dataclasses.replace(spec.generator, device="cpu")
    cpu = ray.get(devices.remote(dataclasses.replace(spec, generator=g_cpu),
                                 dataclasses.replace(espec, device="cpu")), timeout=120)
    assert cpu[2:] == ["cpu", "cpu"]


def test_pools_place_one_actor_per_gpu_and_survive_a_node_loss(
    cluster, pixel_folder, classifier_folder, tmp_path
):
    import ray.data

    cfg = _config()
    spec = GeneratorSpec(cfg.synthesis.generator, cfg.synthesis.feedback, CLASSES,
                         pixel_folder=pixel_folder, channels=1)
    real_ids = {c: [f"real-{c}-{i}" for i in range(3)] for c in range(3)}
    rows = plan_round(cfg.synthesis, CLASSES, real_ids, dict.fromkeys(range(3), 8), cfg.seed, 0)
    out = tmp_path / "synthetic"
    result: dict = {}

    def run():
        try:
            result["stats"] = generate(rows, spec, out, cfg.synthesis)
        except BaseException as e:  # surfaced by the assertion below
            result["error"] = e

    worker = threading.Thread(target=run)
    worker.start()
    both: dict[str, str] = {}
    deadline = time.time() + 180
    while worker.is_alive() and time.time() < deadline and len(both) < GPU_NODES:
        placement = alive_actors("DiffusionGenerator")
        if len(placement) == GPU_NODES:
            both = placement
        time.sleep(0.2)
    assert len(both) == GPU_NODES, "the generator pool never had one actor on each GPU node"
    assert len(set(both.values())) == GPU_NODES  # two actors, two nodes, one GPU each
    assert all(gpu_nodes()[n] == 1 for n in both.values())

    capacity = gpu_nodes()
    time.sleep(1.0)  # let each actor take a batch, then lose one GPU node mid-synthesis
    lost = next(n for n in cluster.worker_nodes if n.node_id in both.values())
    cluster.remove_node(lost)
    crowded = []
    while worker.is_alive() and time.time() < deadline + 120:
        # The killed actor is restarted where a GPU is free: never two generators on one GPU.
        placement = alive_actors("DiffusionGenerator")
        crowded += over_placed([(a, n, 0, 1) for a, n in placement.items()], capacity)
        time.sleep(0.2)
    worker.join(timeout=5)
    assert not worker.is_alive(), "synthesis did not finish after the node loss"
    assert "error" not in result, result.get("error")
    assert result["stats"].generated == len(rows)
    ids = read_table(out, [col.SAMPLE_ID])[col.SAMPLE_ID].to_pylist()
    assert sorted(ids) == sorted(r[col.SAMPLE_ID] for r in rows)  # every planned id, once
    assert not crowded, crowded

    # A replacement node comes up (as the autoscaler would bring one); the embedder pool
    # (filter.pool.gpus_per_actor=1, up to synthesis.pool.max_actors actors) spreads over the GPUs.
    cluster.add_node(num_cpus=1, num_gpus=1)
    cluster.wait_for_nodes()
    capacity = gpu_nodes()
    espec = EmbedderSpec(cfg.filter, classifier_folder, channels=1, image_size=8,
                          device=cfg.filter.device)
    ds = ray.data.read_parquet(str(out)).select_columns([col.SAMPLE_ID, col.IMAGE])
    ds = map_pool(ds, ImageEmbedder, cfg.filter.pool, {"spec": espec})
    embedded = [str(i) for b in ds.iter_batches(batch_format="numpy", batch_size=None)
                for i in b[col.SAMPLE_ID]]
    assert sorted(embedded) == sorted(ids)
    spans = actor_spans("ImageEmbedder")
    assert spans, "no embedder actor was started"
    assert {s[1] for s in spans} <= {n for n, g in capacity.items() if g >= 1}  # GPU nodes only
    assert len(spans) <= cfg.filter.pool.max_actors
    assert not over_placed(spans, capacity)


class NodeOf:
    """Each row → the id of the node its actor runs on."""

    def __call__(self, batch: dict) -> dict:
        import numpy as np
        import ray

        return {"node": np.array([ray.get_runtime_context().get_node_id()] * len(batch["i"]))}


def test_a_pool_pinned_to_the_driver_node_runs_there_only(cluster):
    import pyarrow as pa
    import ray
    import ray.cloudpickle

    from raysynth.config.schema import Resources
    from raysynth.ray_data import from_tables, iter_numpy

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import it
    blocks = [pa.table({"i": list(range(j * 4, j * 4 + 4))}) for j in range(6)]
    here = ray.get_runtime_context().get_node_id()

    def nodes(pinned: bool) -> set[str]:
        ds = map_pool(from_tables(blocks), NodeOf, Resources(min_actors=3, max_actors=3,
                      cpus_per_actor=1), batch_size=None, on_driver_node=pinned)
        return {n for b in iter_numpy(ds) for n in b["node"]}

    assert nodes(pinned=True) == {here}  # 3 actors of the head's share of its 1 CPU, all there
    assert nodes(pinned=False) - {here}  # unpinned, 3 one-CPU actors cannot all fit the head
