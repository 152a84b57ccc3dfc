"""``raysynth bench filter``: the Ray Data embed + filter stage against a plain loop; overlap.

The embedder is the classifier one (the ``digits`` preset's default): a freshly initialised
small CNN of the default encoder size, written as a raysynth checkpoint into a temporary folder
— nothing is downloaded. The rows are generated once by the pixel model (as in the
``synthesis`` bench) and every filter path reads that same Parquet into the driver first
(both paths time that read).

- ``ratio``: steady-state images/s of a Ray Data pipeline ``from_arrow(one block per batch) →
  map_batches(FilterScorer)`` on one actor of ``cpus_per_actor = cores`` / a plain loop calling
  ``FilterScorer(spec)`` on the same rows with ``torch.set_num_threads(cores)``; same batch,
  both writing one Parquet file per batch with the synthetic schema. Steady state = slope of
  images against per-batch stamps (see :mod:`raysynth.bench.synthesis`); ``ratio_end_to_end``
  the same over the whole call (actor start, model load included). Target ≥ 0.85.
- ``overlap``: wall time of the streaming generate → filter pipeline (``generate`` with the
  filter as a stage, pools as the product configures them: ``synthesis.cpus_per_actor``,
  ``filter.cpus_per_actor``) / (wall time of generate alone + wall time of the filter alone on
  its output), each measured end to end on the same rows. Below 1 when the two pools overlap
  (target < 1).

Repeats are interleaved; ratios are medians of per-repeat ratios.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from raysynth import columns as col
from raysynth.bench.synthesis import (
    CLASSES,
    Timed,
    bench_config,
    conform,
    count_rows,
    generator_spec,
    load_average,
    median_ratio,
    numpy_batches,
    plan_rows,
    read_stamps,
    real_ids,
    stamp_stage,
    train_tiny_pixel_model,
    write_result,
)
from raysynth.config.schema import RunConfig
from raysynth.data.images import encode_png
from raysynth.filter.stage import EmbedderSpec, FilterScorer, FilterSpec, ImageEmbedder
from raysynth.synthesis.pipeline import generate
from raysynth.synthesis.table import read_table
from raysynth.train.checkpoint import write_checkpoint
from raysynth.train.models import build_model, encoder_config


def write_classifier(folder: Path, cfg: RunConfig) -> Path:
    """A freshly initialised small-CNN classifier checkpoint of the default encoder size."""
    enc = encoder_config("small_cnn", 1, 8, cfg.encoder.width, cfg.encoder.feat_dim)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model({"kind": "classifier", "encoder": enc, "num_classes": len(CLASSES)})
    model_cfg = {"kind": "classifier", "encoder": enc, "num_classes": len(CLASSES)}
    return write_checkpoint(folder, model.eval(), model_cfg)


def filter_spec(cfg: RunConfig, classifier: Path, device: str) -> FilterSpec:
    """Embeddings of random real images (one per real id), the fixed threshold for every class."""
    espec = EmbedderSpec(cfg.filter, str(classifier), channels=1, image_size=8, device=device)
    rng = np.random.default_rng(0)
    ids = [i for c in sorted(real_ids()) for i in real_ids()[c]]
    pngs = [encode_png(rng.integers(0, 256, (8, 8), dtype=np.uint8)) for _ in ids]
    batch = {
        col.SAMPLE_ID: np.array(ids, dtype=object),
        col.LABEL: np.array([int(i.split("-")[1]) for i in ids]),
        col.IMAGE: np.array(pngs, dtype=object),
    }
    emb = ImageEmbedder(espec)(batch)["embedding"]
    thresholds = np.full(len(CLASSES), cfg.filter.fixed_threshold)
    return FilterSpec(espec, dict(zip(ids, emb)), thresholds)


def filter_stage(fspec: FilterSpec, batch: int, cpus: float, gpus: float, max_actors: int):
    """The filter pool as ``raysynth.pipeline.synthesize`` wires it (a ``generate`` stage)."""

    def stage(ds: Any) -> Any:
        from ray.data import ActorPoolStrategy

        return ds.map_batches(
            FilterScorer,
            fn_constructor_kwargs={"spec": fspec},
            batch_size=batch,
            batch_format="numpy",
            compute=ActorPoolStrategy(min_size=1, max_size=max_actors),
            num_gpus=gpus,
            num_cpus=cpus,
        )

    return stage


def ray_filter(src: Path, stages: list, batch: int, out: Path) -> Timed:
    """The rows of ``src`` → stages → synthetic schema → ``write_parquet(out)``.

    The driver reads ``src`` and hands Ray Data one block per batch, as ``generate`` does with
    its plan: read tasks would need CPUs that a pool of ``cores`` actors may hold entirely.
    """
    import ray

    stamps = out.with_suffix(".stamps")
    start = time.time()
    table = read_table(src)
    ds = ray.data.from_arrow([table.slice(i, batch) for i in range(0, table.num_rows, batch)])
    for stage in stages:
        ds = stage(ds)
    ds = ds.map_batches(conform, batch_format="pyarrow", batch_size=None, num_cpus=0.25)
    ds.write_parquet(str(out), ray_remote_args={"num_cpus": 0.25})
    wall = time.time() - start
    return Timed(wall, start, read_stamps(stamps), count_rows(out))


def plain_filter(src: Path, fspec: FilterSpec, batch: int, threads: int, out: Path) -> Timed:
    """The loop without Ray over the same Parquet rows, one output file per batch."""
    out.mkdir(parents=True, exist_ok=True)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        start = time.time()
        scorer = FilterScorer(fspec)
        stamps = []
        for i, b in enumerate(numpy_batches(read_table(src), batch)):
            result = scorer(b)
            stamps.append((time.time(), len(b[col.SAMPLE_ID])))
            pq.write_table(conform(pa.table(result)), out / f"part-{i:05d}.parquet")
        wall = time.time() - start
    finally:
        torch.set_num_threads(previous)
    return Timed(wall, start, stamps, count_rows(out))


def timed_generate(rows, spec, cfg: RunConfig, out: Path, stages=()) -> float:
    start = time.perf_counter()
    generate(rows, spec, out, cfg.synthesis, stages=list(stages))
    return time.perf_counter() - start


def run(
    out: str | None = None,
    images: int = 128,
    batch: int = 16,
    steps: int = 10,
    cores: int = 2,
    repeats: int = 2,
) -> dict[str, Any]:
    """Run the bench on the connected Ray instance; print its JSON and write it to ``out`` (a
    file, or a folder for ``bench-filter.json``). Returns the result dict."""
    import ray

    if images < 2 * batch:
        raise ValueError(f"images={images} must be at least 2 batches ({2 * batch}) for a rate")
    cluster_cpus = int(ray.cluster_resources().get("CPU", 0))
    cores = max(1, min(cores, cluster_cpus))
    cuda = torch.cuda.is_available()
    gpus = 1.0 if cuda else 0.0
    load_before = load_average()
    cfg = bench_config(
        batch,
        steps,
        **{
            "filter.batch_size": batch,
            "filter.embedder": "classifier",
            "synthesis.gpus_per_actor": gpus / 2,
            "filter.gpus_per_actor": gpus / 2,
        },
    )
    with tempfile.TemporaryDirectory(prefix="raysynth-bench-filter-") as tmp:
        root = Path(tmp)
        spec = generator_spec(cfg, train_tiny_pixel_model(root / "model"))
        fspec = filter_spec(
            cfg, write_classifier(root / "classifier", cfg), "cuda" if cuda else "cpu"
        )
        rows = plan_rows(cfg, images)
        product = filter_stage(
            fspec,
            batch,
            cfg.filter.cpus_per_actor,
            cfg.filter.gpus_per_actor,
            cfg.synthesis.max_actors,
        )
        alone = filter_stage(fspec, batch, cores, gpus, 1)

        def stamped(stage, path: Path) -> list:
            return [stage, stamp_stage(path.with_suffix(".stamps"))]

        # warm-up: imports, thread pools, Ray Data's first execution (generate, then filter)
        timed_generate(rows[: 2 * batch], spec, cfg, root / "warm-gen")
        ray_filter(root / "warm-gen", [alone], batch, root / "warm-filter")
        plain_filter(root / "warm-gen", fspec, batch, cores, root / "warm-plain")

        gen_s, filter_s, pipe_s = [], [], []
        runs: dict[str, list[Timed]] = {"plain": [], "ray": []}
        rows_written = []
        for r in range(repeats):
            gen = root / f"gen-{r}"
            gen_s.append(timed_generate(rows, spec, cfg, gen))
            filter_s.append(ray_filter(gen, [product], batch, root / f"filter-{r}").wall_s)
            pipe = root / f"pipe-{r}"
            pipe_s.append(timed_generate(rows, spec, cfg, pipe, [product]))
            runs["plain"].append(plain_filter(gen, fspec, batch, cores, root / f"plain-{r}"))
            ray_out = root / f"ray-{r}"
            runs["ray"].append(ray_filter(gen, stamped(alone, ray_out), batch, ray_out))
            rows_written += [count_rows(gen), count_rows(pipe), count_rows(root / f"filter-{r}")]
        accepted = read_table(root / f"pipe-{repeats - 1}", [col.ACCEPTED])
        n_accepted = int(np.asarray(accepted[col.ACCEPTED].fill_null(False)).sum())

    steady = {k: [t.steady() for t in v] for k, v in runs.items()}
    e2e = {k: [t.end_to_end() for t in v] for k, v in runs.items()}
    med = statistics.median
    overlaps = [p / (g + f) for p, g, f in zip(pipe_s, gen_s, filter_s)]
    result = {
        "name": "filter",
        "ratio": median_ratio(steady["ray"], steady["plain"]),
        "ratio_end_to_end": median_ratio(e2e["ray"], e2e["plain"]),
        "overlap": float(med(overlaps)),
        "measures": {
            "ratio": "steady-state images/s, Ray FilterScorer pool (1 actor, "
            "cpus_per_actor=cores) / plain FilterScorer loop (torch threads=cores); slope of "
            "images vs per-batch stamps",
            "ratio_end_to_end": "images / wall time of the whole call, Ray / plain",
            "overlap": "wall(generate with the filter stage) / (wall(generate alone) + "
            "wall(filter alone on its output)), product pool settings, end to end",
        },
        "images_per_s": {
            k: {"steady": float(med(steady[k])), "end_to_end": float(med(e2e[k]))} for k in runs
        },
        "overhead_ms_per_batch": 1e3 * batch * (1 / med(steady["ray"]) - 1 / med(steady["plain"])),
        "wall_s": {
            "generate": float(med(gen_s)),
            "filter": float(med(filter_s)),
            "pipeline": float(med(pipe_s)),
            "plain_filter": float(med(t.wall_s for t in runs["plain"])),
            "ray_filter": float(med(t.wall_s for t in runs["ray"])),
        },
        "rows_written": min(rows_written + [t.rows_written for v in runs.values() for t in v]),
        "accepted": n_accepted,
        "images": images,
        "batch": batch,
        "steps": steps,
        "cores": cores,
        "pools": {
            "generator_cpus": cfg.synthesis.cpus_per_actor,
            "filter_cpus": cfg.filter.cpus_per_actor,
            "max_actors": cfg.synthesis.max_actors,
        },
        "embedder": f"classifier small_cnn width {cfg.encoder.width} feat {cfg.encoder.feat_dim}",
        "repeats": repeats,
        "cluster_cpus": cluster_cpus,
        "load_avg": {"before": load_before, "after": load_average()},
        "device": "cuda" if cuda else "cpu",
    }
    write_result(result, out, "filter")
    return result
