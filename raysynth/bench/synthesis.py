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
  generator actor right after the call (:class:`StampedGenerator`: the product's pool with one
  line appended to a file per batch, with the actor's pid). One-time costs fall before the first
  stamp (``first_batch_s``) or after the last (``tail_s``), and for a pool the slope is taken
  while every actor produces (:func:`all_running`: an actor that starts later than the others
  is a one-time cost too), so this is the rate of a long run; a slope rather than
  first-to-last also stays unbiased when two actors finish batches in pairs.

``ratio`` = steady-state pool / plain images/s (target ≥ 0.85), ``ratio_end_to_end`` the same
end to end, ``ratio_wide_actor`` = wide_actor / plain, ``scaling`` = pool / one_actor (target ≥
1.6 with 2 cores; null with fewer than 2 CPUs or on a GPU). Every path is warmed once (imports,
Ray Data's first run); repeats are interleaved and every ratio is the median of per-repeat
ratios, so machine noise hits all sides alike. On a GPU ``flop_fraction`` is the model FLOP/s of
the pool over the FLOP/s of a large matmul in the same dtype, and the JSON gets an ``sd15``
section (:func:`run_sd15`): the same stage on a Stable Diffusion 1.5-sized model at 512 px in
bf16, images/s and fraction of the FLOP ceiling (target ≥ 40% at batch ≥ 8).

The helpers above ``run`` (tiny model, plan, stamps) are shared by the ``memory`` and ``filter``
benches.
"""

from __future__ import annotations

import io
import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from raysynth import columns as col
from raysynth.config import build_config
from raysynth.config.schema import RunConfig
from raysynth.generate.actor import DiffusionGenerator, plan_table
from raysynth.generate.generators import GeneratorSpec
from raysynth.generate.pixel import PixelDiffusionConfig
from raysynth.generate.pixel_training import load_or_train
from raysynth.generate.schema import conform
from raysynth.generate.stage import generate
from raysynth.generate.table import parquet_files, read_table
from raysynth.plan.quotas import plan_round

CLASSES = [str(c) for c in range(10)]
REAL_PER_CLASS = 4

# -- shared bench helpers ----------------------------------------------------------------------


def train_tiny_pixel_model(root: str | Path, tiny: bool = False, train_steps: int = 3) -> str:
    """A pixel model folder for 8×8 one-channel images of 10 classes, trained ``train_steps``
    steps on random images. ``tiny=False``: the ``digits`` preset's architecture
    (:class:`PixelDiffusionConfig` defaults); ``tiny=True``: 8/16 channels, no attention (the
    cheapest real generator)."""
    rng = np.random.default_rng(0)
    x = rng.random((40, 1, 8, 8)).astype(np.float32)
    y = np.arange(40) % len(CLASSES)
    arch: dict[str, Any] = {}
    if tiny:
        arch = {
            "block_out_channels": (8, 16),
            "layers_per_block": 1,
            "norm_num_groups": 4,
            "mid_attention": False,
        }
    cfg = PixelDiffusionConfig(
        num_classes=len(CLASSES), train_steps=train_steps, batch_size=16, **arch
    )
    return str(load_or_train(root, x, y, cfg, class_names=CLASSES, device="cpu"))


def bench_config(batch: int, steps: int, **overrides: Any) -> RunConfig:
    """The default config with the bench's batch size and sampling steps (dotted overrides)."""
    return build_config(
        overrides={
            "synthesis.batch_size": batch,
            "synthesis.generator.num_steps": steps,
            **overrides,
        }
    )


def generator_spec(cfg: RunConfig, pixel_folder: str) -> GeneratorSpec:
    return GeneratorSpec(
        cfg.synthesis.generator,
        cfg.synthesis.feedback,
        CLASSES,
        pixel_folder=pixel_folder,
        channels=1,
        image_size=8,
    )


def real_ids() -> dict[int, list[str]]:
    """The (fictitious) real images the plan conditions on and the filter compares with."""
    return {c: [f"real-{c}-{i}" for i in range(REAL_PER_CLASS)] for c in range(len(CLASSES))}


def plan_rows(cfg: RunConfig, images: int, round_: int = 0) -> list[dict[str, Any]]:
    """Exactly ``images`` plan rows spread over the classes."""
    c = len(CLASSES)
    counts = {k: images // c + (k < images % c) for k in range(c)}
    counts = {k: n for k, n in counts.items() if n}
    return plan_round(cfg.synthesis, CLASSES, real_ids(), counts, cfg.seed, round_)


def stamp(path: str | Path, rows: int) -> None:
    """Append ``<time> <rows> <pid>`` to ``path``: one batch out of this process (a bench actor
    or loop). One machine only: the file is local to the process."""
    with open(path, "a") as f:  # one short append per batch
        f.write(f"{time.time()!r} {rows} {os.getpid()}\n")


class StampedGenerator(DiffusionGenerator):
    """``DiffusionGenerator`` that stamps each batch (:func:`stamp`) inside the actor, right
    after the call (the Ray side of the steady-state rate)."""

    stamps = ""  # set by :func:`stamped_generator`

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        out = super().__call__(batch)
        stamp(self.stamps, len(batch[col.SAMPLE_ID]))
        return out


def stamped_generator(stamps: str | Path) -> type:
    """A :class:`StampedGenerator` writing to ``stamps`` (``generate`` builds its pool's actors
    from a class and the spec alone)."""
    return type("StampedGenerator", (StampedGenerator,), {"stamps": str(stamps)})


Stamp = tuple[float, int, int]  # (time, rows, source: the pid that stamped; 0 for one loop)


def read_stamps(path: str | Path) -> list[Stamp]:
    if not Path(path).is_file():
        return []
    rows = [line.split() for line in Path(path).read_text().splitlines() if line.strip()]
    return sorted((float(r[0]), int(r[1]), int(r[2]) if len(r) > 2 else 0) for r in rows)


def all_running(stamps: list[Stamp]) -> list[Stamp]:
    """The stamps taken while every source (actor) was producing: from the last source's first
    batch to the first source's last batch. An actor that starts late, or finishes its last batch
    early, is a one-time cost like the model load, so the steady state of a pool is the window
    where all its actors run. The whole list when there is one source or no such window."""
    sources: dict[int, list[float]] = {}
    for t, _, src in stamps:
        sources.setdefault(src, []).append(t)
    if len(sources) < 2:
        return stamps
    start = max(ts[0] for ts in sources.values())
    end = min(ts[-1] for ts in sources.values())
    window = [s for s in stamps if start <= s[0] <= end]
    return window if len(window) >= 2 * len(sources) else stamps


def steady_rate(stamps: list[Stamp]) -> float:
    """Least-squares slope of cumulative images against stamp time (images/s) over the stamps
    taken while every source ran (:func:`all_running`); NaN with fewer than two distinct stamp
    times."""
    window = all_running(sorted(stamps))
    if len(window) < 2:
        return float("nan")
    t = np.array([s[0] for s in window])
    done = np.cumsum([s[1] for s in window]).astype(float)
    if np.ptp(t) <= 0:
        return float("nan")
    return float(np.polyfit(t - t[0], done, 1)[0])


def count_rows(root: str | Path) -> int:
    """Rows in every Parquet file under ``root`` (footers only)."""
    return sum(pq.ParquetFile(f).metadata.num_rows for f in parquet_files(root))


def median_ratio(num: list[float], den: list[float]) -> float:
    """Median over repeats of ``num[i] / den[i]`` (pairs measured side by side)."""
    return float(statistics.median(a / b for a, b in zip(num, den)))


def write_result(result: dict[str, Any], out: str | None, name: str) -> None:
    """Print the JSON and write it to ``out`` (a file, or a folder for ``bench-NAME.json``)."""
    text = json.dumps(result, indent=2)
    print(text)
    if out is not None:
        path = os.path.join(out, f"bench-{name}.json") if os.path.isdir(out) else out
        with open(path, "w") as f:
            f.write(text + "\n")


def load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


# -- one measured run per path -----------------------------------------------------------------


@dataclass
class Timed:
    """One call: wall time from its start, per-batch stamps, rows found on disk afterwards."""

    wall_s: float
    start: float
    stamps: list[Stamp]
    rows_written: int

    @property
    def images(self) -> int:
        return sum(s[1] for s in self.stamps)

    def end_to_end(self) -> float:
        return self.rows_written / self.wall_s

    def steady(self) -> float:
        return steady_rate(self.stamps)

    def first_batch_s(self) -> float:
        """Call start → first batch out of the generator (model load, actor start, one batch)."""
        return self.stamps[0][0] - self.start if self.stamps else float("nan")

    def tail_s(self) -> float:
        """Last batch out of the generator → call returned (the last writes, pool shutdown)."""
        return self.start + self.wall_s - self.stamps[-1][0] if self.stamps else float("nan")


def numpy_batches(table: pa.Table, batch: int):
    """``table`` in slices of ``batch`` rows as dicts of numpy arrays (Ray Data's numpy format)."""
    for i in range(0, table.num_rows, batch):
        chunk = table.slice(i, batch)
        yield {k: chunk[k].to_numpy(zero_copy_only=False) for k in chunk.column_names}


def plain_generate(
    rows: list[dict], spec: GeneratorSpec, batch: int, threads: int, out: Path
) -> Timed:
    """The loop without Ray: load, generate batch by batch, write one Parquet file per batch."""
    out.mkdir(parents=True, exist_ok=True)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        start = time.time()
        generator = DiffusionGenerator(spec)
        stamps = []
        for i, b in enumerate(numpy_batches(plan_table(rows), batch)):
            result = generator(b)
            stamps.append((time.time(), len(b[col.SAMPLE_ID]), 0))
            pq.write_table(conform(pa.table(result)), out / f"part-{i:05d}.parquet")
        wall = time.time() - start
    finally:
        torch.set_num_threads(previous)
    return Timed(wall, start, stamps, count_rows(out))


def ray_generate(
    rows: list[dict], spec: GeneratorSpec, cfg: RunConfig, out: Path, stages: list | None = None
) -> Timed:
    """The product's generate stage, stamped as batches leave the generator pool — or, with
    ``stages``, as those stages stamp into ``out.with_suffix(".stamps")``."""
    out.mkdir(parents=True, exist_ok=True)
    stamps = out.with_suffix(".stamps")
    start = time.time()
    if stages:
        generate(rows, spec, out, cfg.synthesis, stages=stages)
    else:
        generate(rows, spec, out, cfg.synthesis, generator=stamped_generator(stamps))
    wall = time.time() - start
    return Timed(wall, start, read_stamps(stamps), count_rows(out))


def actor_threads(num_cpus: float) -> int:
    """``torch.get_num_threads()`` inside a Ray actor given ``num_cpus`` CPUs."""
    import ray

    class ThreadProbe:
        def threads(self) -> int:
            return torch.get_num_threads()

    probe = ray.remote(num_cpus=num_cpus)(ThreadProbe).remote()
    try:
        return int(ray.get(probe.threads.remote()))
    finally:
        ray.kill(probe)


def same_images(a: Path, b: Path) -> bool:
    ta, tb = read_table(a, [col.SAMPLE_ID, col.IMAGE]), read_table(b, [col.SAMPLE_ID, col.IMAGE])
    if ta is None or tb is None:
        return False
    da = dict(zip(ta[col.SAMPLE_ID].to_pylist(), ta[col.IMAGE].to_pylist()))
    db = dict(zip(tb[col.SAMPLE_ID].to_pylist(), tb[col.IMAGE].to_pylist()))
    return da == db


# -- FLOP ceiling (GPU) ------------------------------------------------------------------------


def gflop_per_image(spec: GeneratorSpec, rows: list[dict], batch: int) -> float:
    """Model FLOPs of generating one image (every sampling step, CFG's doubled batch)."""
    from torch.utils.flop_counter import FlopCounterMode

    generator = DiffusionGenerator(spec)
    b = next(numpy_batches(plan_table(rows[:batch]), batch))
    with FlopCounterMode(display=False) as counter:
        generator(b)
    return counter.get_total_flops() / len(b[col.SAMPLE_ID]) / 1e9


def matmul_tflops(dtype: torch.dtype, n: int = 8192, repeats: int = 10) -> float:
    """Achieved TFLOP/s of a square ``n×n`` CUDA matmul: the practical ceiling."""
    a = torch.randn(n, n, device="cuda", dtype=dtype)
    b = torch.randn(n, n, device="cuda", dtype=dtype)
    a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e12


# -- the bench ---------------------------------------------------------------------------------


def per_path(runs: dict[str, list[Timed]]) -> dict[str, dict[str, dict[str, float]]]:
    """Medians over repeats of each path's figures, keyed by figure then path."""
    med = statistics.median
    done = {k: v for k, v in runs.items() if v}
    return {
        "images_per_s": {
            k: {
                "steady": float(med(t.steady() for t in v)),
                "end_to_end": float(med(t.end_to_end() for t in v)),
            }
            for k, v in done.items()
        },
        "first_batch_s": {k: float(med(t.first_batch_s() for t in v)) for k, v in done.items()},
        "tail_s": {k: float(med(t.tail_s() for t in v)) for k, v in done.items()},
        "wall_s": {k: float(med(t.wall_s for t in v)) for k, v in done.items()},
    }


def overhead_ms_per_batch(ray_ips: float, plain_ips: float, batch: int) -> float:
    """Extra milliseconds per batch of the Ray path at steady state."""
    return 1e3 * batch * (1 / ray_ips - 1 / plain_ips)


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
    gpu = {"synthesis.gpus_per_actor": 1.0} if cuda else {"synthesis.generator.device": "cpu"}
    # the pool: one actor per core on CPU (Ray Data's data parallelism), one per GPU on a GPU
    n_pool = 1 if cuda else cores
    pool = bench_config(
        batch,
        steps,
        **gpu,
        **{
            "synthesis.cpus_per_actor": 1 if n_pool > 1 else cores,
            "synthesis.min_actors": n_pool,
            "synthesis.max_actors": n_pool,
        },
    )
    wide = bench_config(batch, steps, **gpu, **{"synthesis.cpus_per_actor": cores})
    one = bench_config(
        batch, steps, **{"synthesis.cpus_per_actor": 1, "synthesis.generator.device": "cpu"}
    )
    spec = generator_spec(pool, folder)
    cpu_spec = generator_spec(one, folder)
    configs: dict[str, tuple[GeneratorSpec, RunConfig]] = {"pool": (spec, pool)}
    if n_pool > 1:
        configs["wide_actor"] = (spec, wide)
    if scale:
        configs["one_actor"] = (cpu_spec, one)

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
    import ray

    from raysynth.generate.generators import DTYPES

    if images < 2 * batch:
        raise ValueError(f"images={images} must be at least 2 batches ({2 * batch}) for a rate")
    cluster_cpus = int(ray.cluster_resources().get("CPU", 0))
    cores = max(1, min(cores, cluster_cpus))
    cuda = torch.cuda.is_available()
    scale = cores >= 2 and not cuda
    load_before = load_average()
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

    steady = {k: [t.steady() for t in v] for k, v in runs.items()}
    e2e = {k: [t.end_to_end() for t in v] for k, v in runs.items()}
    paths = per_path(runs)
    ips = paths["images_per_s"]
    wide = "wide_actor" in runs

    def ratio(num: str, den: str, figures: dict[str, list[float]]) -> float | None:
        return median_ratio(figures[num], figures[den]) if num in runs and den in runs else None

    result = {
        "name": "synthesis",
        "ratio": ratio("pool", "plain", steady),
        "ratio_end_to_end": ratio("pool", "plain", e2e),
        "ratio_wide_actor": ratio("wide_actor", "plain", steady),
        "scaling": ratio("pool", "one_actor", steady),
        "scaling_end_to_end": ratio("pool", "one_actor", e2e),
        "flop_fraction": (
            gflop * 1e9 * ips["pool"]["steady"] / (ceiling * 1e12) if ceiling else None
        ),
        "measures": {
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
        },
        "per_repeat": {
            "ratio": [a / b for a, b in zip(steady["pool"], steady["plain"])],
            "ratio_wide_actor": (
                [a / b for a, b in zip(steady["wide_actor"], steady["plain"])] if wide else []
            ),
            "scaling": (
                [a / b for a, b in zip(steady["pool"], steady["one_actor"])] if scale else []
            ),
        },
        **paths,
        "overhead_ms_per_batch": overhead_ms_per_batch(
            ips["pool"]["steady"], ips["plain"]["steady"], batch
        ),
        "rows_written": min(t.rows_written for v in runs.values() for t in v),
        "identical_images": identical,
        "gflop_per_image": gflop,
        "ceiling_tflops": ceiling,
        "images": images,
        "batch": batch,
        "steps": steps,
        "cores": cores,
        "pool_actors": 1 if cuda else cores,
        "actor_threads": threads,
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


def unet_tflop(config: dict[str, Any]) -> float:
    """TFLOP of one forward of a ``UNet2DConditionModel`` built from ``config``, for one image at
    its ``sample_size`` with a 77-token text context. Counted by ``FlopCounterMode`` on the meta
    device: shapes only, no weights allocated and nothing computed, so an SD-1.5-sized count
    takes seconds on any machine."""
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
        c = unet.config
        x = torch.empty(1, c.in_channels, c.sample_size, c.sample_size)
        text = torch.empty(1, 77, c.cross_attention_dim)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            unet(x, 500, encoder_hidden_states=text)
    return counter.get_total_flops() / 1e12


def unet_tflop_per_forward(pipe_folder: str) -> float:
    """:func:`unet_tflop` of the UNet of the pipeline saved in ``pipe_folder``."""
    from diffusers import UNet2DConditionModel

    return unet_tflop(dict(UNet2DConditionModel.load_config(pipe_folder, subfolder="unet")))


def run_sd15(
    images: int = 64, batch: int = 8, steps: int = 30, dtype: str = "bfloat16"
) -> dict[str, Any]:
    """The product's generate stage on a Stable Diffusion 1.5-sized model built from config
    (:func:`raysynth.bench.tiny_sd.save_sd15_sized`, 512 px, random weights), one actor with one
    GPU, in ``dtype``: steady-state images/s and the fraction of the FLOP ceiling (model FLOP/s
    — every UNet call with classifier-free guidance, the text tower and the VAE decode, counted
    by ``FlopCounterMode`` — over a large matmul's TFLOP/s in the same dtype). Needs CUDA and a
    connected Ray instance with a GPU."""
    from raysynth.bench.tiny_sd import save_sd15_sized
    from raysynth.generate.generators import DTYPES

    if not torch.cuda.is_available():
        raise RuntimeError("bench synthesis sd15 needs a CUDA device")
    with tempfile.TemporaryDirectory(prefix="raysynth-bench-sd15-") as tmp:
        root = Path(tmp)
        model = save_sd15_sized(root / "sd15", DTYPES[dtype])
        cfg = bench_config(
            batch,
            steps,
            **{
                "synthesis.generator.kind": "text2image",
                "synthesis.generator.model": model,
                "synthesis.generator.dtype": dtype,
                "synthesis.gpus_per_actor": 1.0,
                "synthesis.cpus_per_actor": 1,
            },
        )
        spec = GeneratorSpec(cfg.synthesis.generator, cfg.synthesis.feedback, CLASSES)
        rows = plan_rows(cfg, images)
        ray_generate(rows[:batch], spec, cfg, root / "warm")
        timed = ray_generate(rows, spec, cfg, root / "run")
        table = read_table(root / "run", [col.IMAGE])
        side = Image.open(io.BytesIO(table[col.IMAGE][0].as_py())).size
        gflop = gflop_per_image(spec, rows, batch)
        unet_tflop = unet_tflop_per_forward(model)
        ceiling = matmul_tflops(DTYPES[dtype])
    ips = timed.steady()
    return {
        "model": "SD 1.5-sized UNet (320/640/1280/1280) and VAE from config, random weights",
        "dtype": dtype,
        "image_px": list(side),
        "batch": batch,
        "steps": steps,
        "images": images,
        "rows_written": timed.rows_written,
        "images_per_s": {"steady": ips, "end_to_end": timed.end_to_end()},
        "gflop_per_image": gflop,
        "unet_tflop_per_forward": unet_tflop,
        "ceiling_tflops": ceiling,
        "flop_fraction": gflop * 1e9 * ips / (ceiling * 1e12),
        "target_flop_fraction": 0.4,
    }
