"""``raysynth bench synthesis``: the Ray Data generate stage against a plain loop; 2 actors vs 1.

Every path runs the same plan rows through the same :class:`DiffusionGenerator` (the ``digits``
pixel model's architecture, trained a few steps into a temporary folder: speed does not depend on
the weights), with the same batch size, and writes the same Parquet:

- **plain**: one process with ``torch.set_num_threads(cores)``; a fresh ``DiffusionGenerator``
  (model load included) called batch by batch on the plan table, each batch conformed to the
  synthetic schema and written as its own Parquet file with pyarrow — the loop one writes
  without Ray;
- **pool**: :func:`raysynth.generate.stage.generate`, the product's stage, at the same total
  cores as plain: ``cores`` actors of one CPU each (Ray Data's data parallelism; on a GPU, one
  actor with the GPU);
- **wide_actor**: the same stage with one actor of ``cpus_per_actor = cores``. Ray sets
  ``OMP_NUM_THREADS`` to an actor's CPU count, so torch runs ``cores`` threads there as in plain
  (``actor_threads`` reports what a probe actor saw);
- **one_actor**: one actor of one CPU, the base of ``scaling``.

Two figures per path:

- **end to end**: images / wall time of the whole call — model load, actor start, Ray Data
  planning and the write tail included (what one short run costs);
- **steady state**: the least-squares slope of images done against time, over one stamp taken as
  each batch leaves the generator — in the plain loop right after the call, in Ray inside the
  generator actor right after the call
  (:class:`~raysynth.bench.generate_paths.StampedGenerator`: the product's pool with one
  line appended to a file per batch, with the actor's pid). One-time costs fall before the first
  stamp (``first_batch_s``) or after the last (``tail_s``), and for a pool the slope is taken
  while every actor produces (:func:`~raysynth.bench.harness.all_running`: an actor that starts
  later than the others
  is a one-time cost too), so this is the rate of a long run; a slope rather than
  first-to-last also stays unbiased when two actors finish batches in pairs.

``ratio`` = steady-state pool / plain images/s (target ≥ 0.85), ``ratio_end_to_end`` the same
end to end, ``ratio_wide_actor`` = wide_actor / plain, ``scaling`` = pool / one_actor (target ≥
1.6 with 2 cores; null with fewer than 2 CPUs or on a GPU). Every path is warmed once (imports,
Ray Data's first run); repeats are interleaved and every ratio is the median of per-repeat
ratios, so machine noise hits all sides alike. On a GPU ``flop_fraction`` is the model FLOP/s of
the pool over the FLOP/s of a large matmul in the same dtype, and the JSON gets an ``sd15``
section (:func:`raysynth.bench.sd15.run_sd15`): the same stage on a Stable Diffusion 1.5-sized
model at 512 px in bf16, images/s and fraction of the FLOP ceiling (target ≥ 40% at batch ≥ 8).

The stamps, steady state and plain loop are the benches' harness (:mod:`raysynth.bench.harness`),
the tiny model, config and plan their fixtures (:mod:`raysynth.bench.fixtures`), the two
generate paths :mod:`raysynth.bench.generate_paths`; this module is the bench itself.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from raysynth import columns as col
from raysynth.bench.fixtures import bench_config, generator_spec, plan_rows, train_tiny_pixel_model
from raysynth.bench.flops import gflop_per_image, matmul_tflops
from raysynth.bench.generate_paths import plain_generate, ray_generate
from raysynth.bench.harness import Figures, Timed, cluster_cores, load_average, write_result
from raysynth.bench.sd15 import run_sd15
from raysynth.config.schema import RunConfig
from raysynth.generate.generators import DTYPES, GeneratorSpec
from raysynth.generate.table import read_table

MEASURES = {
    "ratio": "steady-state images/s at the same total cores: the product's Ray Data "
    "generate stage with a pool of `cores` one-CPU actors (one one-GPU actor on a GPU) "
    "/ the plain loop with torch threads = cores; slope of images vs per-batch stamps",
    "ratio_end_to_end": "images / wall time of the whole call, pool / plain (model "
    "load, actor start and write tail included)",
    "ratio_wide_actor": "steady state, one actor of `cores` CPUs (torch threads = "
    "cores) / plain loop",
    "scaling": "steady state, the pool of `cores` one-CPU actors / one one-CPU actor",
    "flop_fraction": "GPU only: gflop_per_image x pool steady images/s / TFLOP/s of a "
    "large matmul in the generator's dtype on the same device",
    "first_batch_s": "call start -> first batch out of the generator",
    "tail_s": "last batch out of the generator -> call returned",
}


def actor_threads(num_cpus: float) -> int:
    """``torch.get_num_threads()`` inside a Ray actor given ``num_cpus`` CPUs."""
    from raysynth.ray_data import call_in_actor

    return int(call_in_actor(num_cpus, torch.get_num_threads))


def same_images(a: Path, b: Path) -> bool:
    ta, tb = read_table(a, [col.SAMPLE_ID, col.IMAGE]), read_table(b, [col.SAMPLE_ID, col.IMAGE])
    if ta is None or tb is None:
        return False
    da = dict(zip(ta[col.SAMPLE_ID].to_pylist(), ta[col.IMAGE].to_pylist()))
    db = dict(zip(tb[col.SAMPLE_ID].to_pylist(), tb[col.IMAGE].to_pylist()))
    return da == db


# -- the measured runs -------------------------------------------------------------------------


def _ray_paths(
    folder: str, batch: int, steps: int, cores: int, cuda: bool, scale: bool
) -> dict[str, tuple[GeneratorSpec, RunConfig]]:
    """Spec and config of each Ray path: ``pool`` always, ``wide_actor`` when the pool has
    several actors, ``one_actor`` with ``scale``."""
    gpu = {"synthesis.pool.gpus_per_actor": 1.0} if cuda else {"synthesis.generator.device": "cpu"}
    # the pool: one actor per core on CPU (Ray Data's data parallelism), one per GPU on a GPU
    n_pool = 1 if cuda else cores
    pool = bench_config(
        batch,
        steps,
        **gpu,
        **{
            "synthesis.pool.cpus_per_actor": 1 if n_pool > 1 else cores,
            "synthesis.pool.min_actors": n_pool,
            "synthesis.pool.max_actors": n_pool,
        },
    )
    wide = bench_config(batch, steps, **gpu, **{"synthesis.pool.cpus_per_actor": cores})
    one = bench_config(
        batch, steps, **{"synthesis.pool.cpus_per_actor": 1, "synthesis.generator.device": "cpu"}
    )
    spec = generator_spec(pool, folder)
    cpu_spec = generator_spec(one, folder)
    configs: dict[str, tuple[GeneratorSpec, RunConfig]] = {"pool": (spec, pool)}
    if n_pool > 1:
        configs["wide_actor"] = (spec, wide)
    if scale:
        configs["one_actor"] = (cpu_spec, one)
    return configs


def _measure(
    root: Path,
    folder: str,
    rows: list[dict],
    batch: int,
    steps: int,
    cores: int,
    cuda: bool,
    repeats: int,
    scale: bool,
) -> tuple[dict[str, list[Timed]], int]:
    """Warm every path, then interleave the repeats; returns the runs and the threads a
    ``cores``-CPU actor gets."""
    configs = _ray_paths(folder, batch, steps, cores, cuda, scale)
    spec, pool = configs["pool"]

    # warm-up: imports, torch's thread pools, Ray Data's first execution
    plain_generate(rows[: 2 * batch], spec, batch, cores, root / "warm-plain")
    ray_generate(rows[: 2 * batch], spec, pool, root / "warm-ray")
    threads = actor_threads(cores)

    runs: dict[str, list[Timed]] = {"plain": [], **{k: [] for k in configs}}
    for r in range(repeats):
        runs["plain"].append(plain_generate(rows, spec, batch, cores, root / f"plain-{r}"))
        for name, (sp, cfg) in configs.items():
            runs[name].append(ray_generate(rows, sp, cfg, root / f"{name}-{r}"))
    return runs, threads


@dataclass
class Measured:
    """What one bench run measured, in a temporary folder since gone."""

    runs: dict[str, list[Timed]]  # per path, one call per repeat
    threads: int  # torch threads in an actor of `cores` CPUs
    identical: bool  # the last repeat wrote the same images with and without Ray
    gflop: float  # model GFLOP per image
    ceiling: float | None  # TFLOP/s of a large matmul (GPU only)


def measure(
    images: int, batch: int, steps: int, cores: int, cuda: bool, repeats: int, scale: bool
) -> Measured:
    """Train the tiny model, plan ``images`` rows and run every path in a temporary folder."""
    with tempfile.TemporaryDirectory(prefix="raysynth-bench-synthesis-") as tmp:
        root = Path(tmp)
        folder = train_tiny_pixel_model(root / "model")
        cfg = bench_config(batch, steps)
        rows = plan_rows(cfg, images)
        runs, threads = _measure(root, folder, rows, batch, steps, cores, cuda, repeats, scale)
        last = repeats - 1
        identical = same_images(root / f"plain-{last}", root / f"pool-{last}")
        gflop = gflop_per_image(generator_spec(cfg, folder), rows, batch)
        ceiling = matmul_tflops(DTYPES[cfg.synthesis.generator.dtype]) if cuda else None
    return Measured(runs, threads, identical, gflop, ceiling)


# -- the bench ---------------------------------------------------------------------------------


def _figures(m: Measured, batch: int) -> dict[str, Any]:
    """Ratios (medians of per-repeat ratios; None for a path that did not run), the FLOP
    fraction, per-repeat values and per-path figures of the runs."""
    f = Figures.of(m.runs)
    return {
        "ratio": f.ratio("pool", "plain"),
        "ratio_end_to_end": f.ratio("pool", "plain", end_to_end=True),
        "ratio_wide_actor": f.ratio("wide_actor", "plain"),
        "scaling": f.ratio("pool", "one_actor"),
        "scaling_end_to_end": f.ratio("pool", "one_actor", end_to_end=True),
        "flop_fraction": (
            m.gflop * 1e9 * f.steady_ips("pool") / (m.ceiling * 1e12) if m.ceiling else None
        ),
        "measures": dict(MEASURES),
        "per_repeat": {
            "ratio": f.per_repeat("pool", "plain"),
            "ratio_wide_actor": f.per_repeat("wide_actor", "plain"),
            "scaling": f.per_repeat("pool", "one_actor"),
        },
        **f.paths,
        "overhead_ms_per_batch": f.overhead_ms_per_batch("pool", "plain", batch),
        "rows_written": min(t.rows_written for v in m.runs.values() for t in v),
        "identical_images": m.identical,
        "gflop_per_image": m.gflop,
        "ceiling_tflops": m.ceiling,
    }


def run(
    out: str | None = None,
    images: int = 1536,
    batch: int = 8,
    steps: int = 10,
    cores: int = 2,
    repeats: int = 3,
) -> dict[str, Any]:
    """Run the bench on the connected Ray instance; print its JSON and write it to ``out`` (a
    file, or a folder for ``bench-synthesis.json``). ``cores`` is capped by the cluster's CPUs.
    Returns the result dict."""
    if images < 2 * batch:
        raise ValueError(f"images={images} must be at least 2 batches ({2 * batch}) for a rate")
    cluster_cpus, cores = cluster_cores(cores)
    cuda = torch.cuda.is_available()
    scale = cores >= 2 and not cuda
    load_before = load_average()
    m = measure(images, batch, steps, cores, cuda, repeats, scale)
    result = {
        "name": "synthesis",
        **_figures(m, batch),
        "images": images,
        "batch": batch,
        "steps": steps,
        "cores": cores,
        "pool_actors": 1 if cuda else cores,
        "actor_threads": m.threads,
        "plain_threads": cores,
        "repeats": repeats,
        "cluster_cpus": cluster_cpus,
        "load_avg": {"before": load_before, "after": load_average()},
        "device": "cuda" if cuda else "cpu",
    }
    if cuda:
        result["sd15"] = run_sd15()
    write_result(result, out, "synthesis")
    return result
