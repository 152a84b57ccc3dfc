"""``raysynth bench filter``: the Ray Data embed + filter stage against a plain loop; overlap.

The embedder is the classifier one (the ``digits`` preset's default): a freshly initialised
small CNN of the default encoder size, written as a raysynth checkpoint into a temporary folder
— nothing is downloaded. The rows are generated once by the pixel model (as in the
``synthesis`` bench) and every filter path reads that same Parquet into the driver first
(both paths time that read).

- ``ratio``: steady-state images/s of a Ray Data pipeline ``from_arrow(one block per batch) →
  map_batches(FilterScorer)`` on a pool of ``cores`` actors of one CPU each (Ray Data's data
  parallelism, as the ``synthesis`` bench's pool; on a GPU one actor with the GPU) / a plain loop
  calling ``FilterScorer(spec)`` on the same rows with ``torch.set_num_threads(cores)``; same
  batch, same total cores, both writing one Parquet file per batch with the synthetic schema.
  ``ratio_wide_actor``: the same stage on one actor of ``cpus_per_actor = cores`` (torch's
  threads inside one actor, like the plain loop) — lower on a small CPU machine, where the
  actor's threads share the cores with the stage's writer and Ray Data's executor. The input is the generated
  rows repeated under new ids to ``batches`` (16) batches of ``batch`` (1024) rows. Steady state
  = slope of images against per-batch stamps, taken in the filter actor itself
  (:class:`StampedFilterScorer`) and right after each call in the plain loop;
  ``ratio_end_to_end`` the same over the whole call (actor start, model load included). Target
  ≥ 0.85. ``ratio_product_batch`` is the same at the product's ``filter.batch_size`` (64): the
  classifier embedder scores 64 8×8 images in ~6 ms, less than Ray Data's own cost per block
  (~9 ms here), so at that batch the stage is bound by the per-block overhead — harmless in the
  product, where it runs next to generation ~50× slower (``overlap``), but the figure to look at
  before choosing a small batch for a cheap embedder.
- ``overlap``: the streaming generate → filter pipeline (``generate`` with the filter as a
  stage, pools as the product configures them: ``synthesis.cpus_per_actor``,
  ``filter.cpus_per_actor``) against generate alone plus the filter alone on its output, on the
  same rows. Headline at steady state: seconds per image of the pipeline / (seconds per image of
  generate alone + of the filter alone), each from per-batch stamps (after the filter in the
  pipeline and the filter alone, after the generator alone). ``overlap_end_to_end`` is the same
  with wall times of the three calls (actor starts and write tails included). Below 1 when the
  two pools run concurrently (target < 1); as the filter gets cheaper next to generation, the
  best possible value approaches 1.

Repeats are interleaved; ratios are medians of per-repeat ratios.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass, field
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
    count_rows,
    generator_spec,
    load_average,
    median_ratio,
    numpy_batches,
    overhead_ms_per_batch,
    per_path,
    plan_rows,
    ray_generate,
    read_stamps,
    real_ids,
    stamp,
    train_tiny_pixel_model,
    write_result,
)
from raysynth.config.schema import RunConfig
from raysynth.data.images import encode_png
from raysynth.filter.stage import EmbedderSpec, FilterScorer, FilterSpec, ImageEmbedder
from raysynth.filter.threshold import class_thresholds
from raysynth.generate.schema import conform
from raysynth.generate.stage import write_synthetic
from raysynth.generate.table import read_table
from raysynth.ray_data import pool_strategy
from raysynth.train.checkpoint import write_checkpoint
from raysynth.train.models import build_model, encoder_config


def write_classifier(folder: Path, cfg: RunConfig) -> Path:
    """A freshly initialised small-CNN classifier checkpoint of the default encoder size."""
    enc = encoder_config("small_cnn", 1, 8, cfg.encoder.width, cfg.encoder.feat_dim)
    model_cfg = {"kind": "classifier", "encoder": enc, "num_classes": len(CLASSES)}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(model_cfg)
    return write_checkpoint(folder, model.eval(), model_cfg)


def filter_spec(cfg: RunConfig, classifier: Path, device: str) -> FilterSpec:
    """Embeddings of random real images (one per real id) and per-class thresholds from their
    pairs, as the product computes them (``filter.threshold=pairs``)."""
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
    thresholds = class_thresholds(
        np.stack(emb), batch[col.LABEL], len(CLASSES), cfg.filter.pairs, cfg.seed
    )
    return FilterSpec(espec, dict(zip(ids, emb)), thresholds)


class StampedFilterScorer(FilterScorer):
    """``FilterScorer`` that stamps each batch (:func:`~raysynth.bench.synthesis.stamp`) inside
    the actor (the Ray side of the steady-state rate)."""

    def __init__(self, spec: FilterSpec, stamps: str) -> None:
        super().__init__(spec)
        self.stamps = stamps

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        out = super().__call__(batch)
        stamp(self.stamps, len(batch[col.SAMPLE_ID]))
        return out


def filter_stage(
    fspec: FilterSpec,
    batch: int,
    cpus: float,
    gpus: float,
    max_actors: int,
    stamps: Path | None = None,
    min_actors: int = 1,
):
    """The filter pool as ``raysynth.filter.rounds`` wires it (a ``generate`` stage);
    with ``stamps``, its actors stamp every batch. ``min_actors = max_actors`` fixes its size."""
    fn, kwargs = FilterScorer, {"spec": fspec}
    if stamps is not None:
        fn, kwargs = StampedFilterScorer, {"spec": fspec, "stamps": str(stamps)}

    def stage(ds: Any) -> Any:
        return ds.map_batches(
            fn,
            fn_constructor_kwargs=kwargs,
            batch_size=batch,
            batch_format="numpy",
            compute=pool_strategy(min_actors, max_actors),
            num_gpus=gpus,
            num_cpus=cpus,
        )

    return stage


def ray_filter(src: Path, stages: list, batch: int, out: Path) -> Timed:
    """The rows of ``src`` → stages → synthetic schema → ``write_parquet(out)``.

    The driver reads ``src`` and hands Ray Data one block per batch (``generate`` likewise hands
    over its plan from the driver): read tasks would need CPUs that a pool of ``cores`` actors
    may hold entirely.
    """
    import ray

    stamps = out.with_suffix(".stamps")
    start = time.time()
    table = read_table(src)
    ds = ray.data.from_arrow([table.slice(i, batch) for i in range(0, table.num_rows, batch)])
    for stage in stages:
        ds = stage(ds)
    write_synthetic(ds, out)  # the same write step as ``generate``
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
            stamps.append((time.time(), len(b[col.SAMPLE_ID]), 0))
            pq.write_table(conform(pa.table(result)), out / f"part-{i:05d}.parquet")
        wall = time.time() - start
    finally:
        torch.set_num_threads(previous)
    return Timed(wall, start, stamps, count_rows(out))


def replicate(src: Path, rows: int, out: Path) -> Path:
    """The rows of ``src`` repeated under new ``sample_id``s up to ``rows`` rows, as one Parquet
    file in ``out``: a long input for the filter (its cost does not depend on which images)."""
    table = read_table(src)
    parts, ids = [], table[col.SAMPLE_ID].to_pylist()
    for r in range(-(-rows // table.num_rows)):
        fresh = pa.array([f"{i}-copy{r}" for i in ids])
        parts.append(
            table.set_column(table.schema.get_field_index(col.SAMPLE_ID), col.SAMPLE_ID, fresh)
        )
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.concat_tables(parts).slice(0, rows), out / "part-00000.parquet")
    return out


@dataclass
class Measured:
    plain: list[Timed] = field(default_factory=list)  # filter alone, plain loop, `batch`
    ray: list[Timed] = field(default_factory=list)  # filter alone, Ray pool of `cores`, `batch`
    ray_wide: list[Timed] = field(default_factory=list)  # one actor of `cores` CPUs (CPU only)
    plain_product: list[Timed] = field(default_factory=list)  # the same at filter.batch_size
    ray_product: list[Timed] = field(default_factory=list)
    generate: list[Timed] = field(default_factory=list)  # product pools from here on
    filter: list[Timed] = field(default_factory=list)
    pipeline: list[Timed] = field(default_factory=list)

    def rows_written(self) -> dict[str, int]:
        """Fewest rows any run wrote: the filter-alone runs on the long input; the rest."""
        long = self.plain + self.ray + self.ray_wide + self.plain_product + self.ray_product
        return {
            "filter_alone": min(t.rows_written for t in long),
            "generate_filter": min(
                t.rows_written for t in self.generate + self.filter + self.pipeline
            ),
        }


def _measure(
    root: Path,
    cfg: RunConfig,
    spec: Any,
    fspec: FilterSpec,
    rows: list[dict],
    batch: int,
    batches: int,
    cores: int,
    gpus: float,
    repeats: int,
) -> Measured:
    """Warm every path, then interleave the repeats."""
    f = cfg.filter

    def product(stamps: Path):
        return filter_stage(
            fspec,
            f.batch_size,
            f.cpus_per_actor,
            f.gpus_per_actor,
            cfg.synthesis.max_actors,
            stamps,
        )

    def wide(stamps: Path, b: int):
        """One actor with every core (and the GPU, when there is one)."""
        return filter_stage(fspec, b, cores, gpus, 1, stamps)

    def alone(stamps: Path, b: int):
        """The filter alone at the same total cores: ``cores`` one-CPU actors (one GPU actor)."""
        if gpus:
            return wide(stamps, b)
        return filter_stage(fspec, b, 1, 0, cores, stamps, min_actors=cores)

    def stamps(out: Path) -> Path:
        return out.with_suffix(".stamps")

    # warm-up: imports, thread pools, Ray Data's first execution (generate, then filter)
    ray_generate(rows[: 2 * f.batch_size], spec, cfg, root / "warm-gen")
    ray_filter(
        root / "warm-gen", [alone(stamps(root / "warm"), f.batch_size)], f.batch_size, root / "warm"
    )
    plain_filter(root / "warm-gen", fspec, f.batch_size, cores, root / "warm-plain")
    # the filter-alone input: `batches` batches of `batch` rows
    long = replicate(root / "warm-gen", batch * batches, root / "long")

    m = Measured()
    for r in range(repeats):
        gen, only, pipe = (root / f"{k}-{r}" for k in ("gen", "filter", "pipe"))
        m.generate.append(ray_generate(rows, spec, cfg, gen))
        m.filter.append(ray_filter(gen, [product(stamps(only))], f.batch_size, only))
        m.pipeline.append(ray_generate(rows, spec, cfg, pipe, [product(stamps(pipe))]))
        for key, b, plain, ray in (
            ("batch", batch, m.plain, m.ray),
            ("product", f.batch_size, m.plain_product, m.ray_product),
        ):
            plain.append(plain_filter(long, fspec, b, cores, root / f"plain-{key}-{r}"))
            out = root / f"ray-{key}-{r}"
            ray.append(ray_filter(long, [alone(stamps(out), b)], b, out))
        if not gpus and cores > 1:
            out = root / f"ray-wide-{r}"
            m.ray_wide.append(ray_filter(long, [wide(stamps(out), batch)], batch, out))
    return m


def _overlaps(m: Measured) -> tuple[list[float], list[float]]:
    """Per repeat: steady-state and end-to-end overlap."""
    steady = [
        (1 / p.steady()) / (1 / g.steady() + 1 / f.steady())
        for p, g, f in zip(m.pipeline, m.generate, m.filter)
    ]
    e2e = [p.wall_s / (g.wall_s + f.wall_s) for p, g, f in zip(m.pipeline, m.generate, m.filter)]
    return steady, e2e


def run(
    out: str | None = None,
    images: int = 384,
    batch: int = 1024,
    batches: int = 16,
    filter_batch: int = 0,
    steps: int = 10,
    cores: int = 2,
    repeats: int = 2,
) -> dict[str, Any]:
    """Run the bench on the connected Ray instance; print its JSON and write it to ``out`` (a
    file, or a folder for ``bench-filter.json``). ``images`` are generated for the overlap;
    the filter-alone paths run ``batches`` batches of ``batch`` rows (and the same rows at
    ``filter_batch``, by default the product's ``filter.batch_size``, which the overlap uses). ``cores`` is capped by the cluster's CPUs. Returns the
    result dict."""
    import ray

    product_batch = filter_batch or RunConfig().filter.batch_size  # the product's default
    if images < 2 * product_batch:
        raise ValueError(
            f"images={images} must be at least 2 batches ({2 * product_batch}) for a rate"
        )
    if batches < 2:
        raise ValueError(f"batches={batches} must be at least 2 for a rate")
    cluster_cpus = int(ray.cluster_resources().get("CPU", 0))
    cores = max(1, min(cores, cluster_cpus))
    cuda = torch.cuda.is_available()
    gpus = 1.0 if cuda else 0.0
    load_before = load_average()
    overrides = {
        "filter.batch_size": product_batch,
        "filter.embedder": "classifier",
        "synthesis.gpus_per_actor": gpus / 2,  # the product's two pools share one GPU
        "filter.gpus_per_actor": gpus / 2,
    }
    cfg = bench_config(RunConfig().synthesis.batch_size, steps, **overrides)
    with tempfile.TemporaryDirectory(prefix="raysynth-bench-filter-") as tmp:
        root = Path(tmp)
        spec = generator_spec(cfg, train_tiny_pixel_model(root / "model"))
        classifier = write_classifier(root / "classifier", cfg)
        fspec = filter_spec(cfg, classifier, "cuda" if cuda else "cpu")
        rows = plan_rows(cfg, images)
        m = _measure(root, cfg, spec, fspec, rows, batch, batches, cores, gpus, repeats)
        accepted = read_table(root / f"pipe-{repeats - 1}", [col.ACCEPTED])
        n_accepted = int(np.asarray(accepted[col.ACCEPTED].fill_null(False)).sum())

    runs = {
        "plain": m.plain,
        "ray": m.ray,
        "plain_product_batch": m.plain_product,
        "ray_product_batch": m.ray_product,
    }
    if m.ray_wide:
        runs["ray_wide_actor"] = m.ray_wide
    steady = {k: [t.steady() for t in v] for k, v in runs.items()}
    e2e = {k: [t.end_to_end() for t in v] for k, v in runs.items()}
    paths = per_path(runs)
    ips = paths["images_per_s"]
    overlap, overlap_e2e = _overlaps(m)
    stages = per_path({"generate": m.generate, "filter": m.filter, "pipeline": m.pipeline})
    result = {
        "name": "filter",
        "ratio": median_ratio(steady["ray"], steady["plain"]),
        "ratio_end_to_end": median_ratio(e2e["ray"], e2e["plain"]),
        "ratio_product_batch": median_ratio(
            steady["ray_product_batch"], steady["plain_product_batch"]
        ),
        "ratio_wide_actor": (
            median_ratio(steady["ray_wide_actor"], steady["plain"]) if m.ray_wide else None
        ),
        "overlap": float(statistics.median(overlap)),
        "overlap_end_to_end": float(statistics.median(overlap_e2e)),
        "measures": {
            "ratio": "steady-state images/s at `batch`, Ray FilterScorer pool (`cores` actors "
            "of 1 CPU; on a GPU 1 actor with it) / plain FilterScorer loop (torch "
            "threads=cores); slope of images vs per-batch stamps",
            "ratio_wide_actor": "the same with 1 actor of cpus_per_actor=cores (CPU only)",
            "ratio_end_to_end": "images / wall time of the whole call, Ray / plain",
            "ratio_product_batch": "the ratio at the product's filter.batch_size",
            "overlap": "steady-state s/image of generate with the filter stage / (s/image of "
            "generate alone + of the filter alone on its output), product pool settings",
            "overlap_end_to_end": "the same with the wall times of the three calls",
            "first_batch_s": "call start -> first batch out of the filter",
            "tail_s": "last batch out of the filter -> call returned",
        },
        "per_repeat": {
            "ratio": [a / b for a, b in zip(steady["ray"], steady["plain"])],
            "ratio_product_batch": [
                a / b for a, b in zip(steady["ray_product_batch"], steady["plain_product_batch"])
            ],
            "overlap": overlap,
            "overlap_end_to_end": overlap_e2e,
        },
        **paths,
        "overhead_ms_per_batch": overhead_ms_per_batch(
            ips["ray"]["steady"], ips["plain"]["steady"], batch
        ),
        "stages": stages,
        "rows_written": m.rows_written(),
        "accepted": n_accepted,
        "images": images,
        "batch": batch,
        "batches": batches,
        "product_batch": product_batch,
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
