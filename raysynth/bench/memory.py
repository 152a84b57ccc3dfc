"""``raysynth bench memory``: peak driver RSS while streaming N synthetic images, for two N.

DESIGN §5 says the driver never holds all images: Ray Data streams them from the generator pool
into Parquet. This bench checks it. Each N runs in a fresh subprocess (:func:`_child_main`) that
starts its own local Ray (``ray.init(address="local", num_cpus=2)``: the library never calls
``ray.init``; a bench's child process may), plans N rows and calls
:func:`raysynth.generate.stage.generate` with the cheapest real generator — the tiny pixel
model (8/16 channels), ``steps`` DDIM steps, batches of ``batch`` on ``actors`` actors of one
CPU each. The driver's peak RSS is ``getrusage(RUSAGE_SELF).ru_maxrss`` (the child's whole life:
imports, ``ray.init``, the plan and the streaming run; Ray's own daemons and workers are other
processes), cross-checked by sampling RSS with psutil every 50 ms during ``generate``.

``growth`` = peak RSS at the largest N / at the smallest N − 1 (target < 0.10). The plan rows
themselves (a few hundred bytes each) are held by the driver by design and are part of what is
measured.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from raysynth.bench.fixtures import train_tiny_pixel_model
from raysynth.bench.harness import PeakRss, load_average, write_result

MARKER = "RAYSYNTH-BENCH-MEMORY "


def _peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux and in bytes on macOS
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def _child_main(args: str) -> None:
    """Subprocess entry point (``python -c``): one N on a fresh local Ray; prints one JSON line
    after :data:`MARKER`. The only function of the benches that calls ``ray.init``."""
    import ray

    from raysynth.bench.fixtures import bench_config, generator_spec, plan_rows
    from raysynth.bench.harness import count_rows
    from raysynth.generate.stage import generate

    a = json.loads(args)
    ray.init(address="local", num_cpus=a["cpus"], include_dashboard=False, log_to_driver=False)
    try:
        cfg = bench_config(
            a["batch"],
            a["steps"],
            **{
                "synthesis.pool.cpus_per_actor": 1,
                "synthesis.pool.min_actors": a["actors"],
                "synthesis.pool.max_actors": a["actors"],
                "synthesis.generator.device": "cpu",
            },
        )
        spec = generator_spec(cfg, a["pixel_folder"])
        rows = plan_rows(cfg, a["images"])
        before = _peak_rss_mb()
        import psutil

        process = psutil.Process()
        sampler = PeakRss(lambda: process.memory_info().rss)
        sampler.start()
        start = time.perf_counter()
        stats = generate(rows, spec, a["out"], cfg.synthesis)
        wall = time.perf_counter() - start
        sampled = sampler.stop()
        result = {
            "images": a["images"],
            "rss_mb": _peak_rss_mb(),
            "rss_before_generate_mb": before,
            "rss_sampled_mb": sampled,
            "wall_s": wall,
            "generated": stats.generated,
            "rows_written": count_rows(a["out"]),
        }
    finally:
        ray.shutdown()
    print(MARKER + json.dumps(result), flush=True)


def _measure(
    images: int, pixel_folder: str, out: Path, batch: int, steps: int, actors: int, timeout: float
) -> dict[str, Any]:
    args = json.dumps(
        {
            "images": images,
            "pixel_folder": pixel_folder,
            "out": str(out),
            "batch": batch,
            "steps": steps,
            "actors": actors,
            "cpus": 2,
        }
    )
    code = f"from raysynth.bench.memory import _child_main; _child_main({args!r})"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a fresh local Ray
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=timeout
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARKER)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"memory bench child for {images} images failed (exit {proc.returncode}):\n"
            f"{proc.stderr[-3000:]}"
        )
    return json.loads(lines[-1][len(MARKER) :])


def run(
    out: str | None = None,
    sizes: tuple[int, ...] = (2000, 20000),
    batch: int = 256,
    steps: int = 1,
    actors: int = 1,
    timeout: float = 1800,
) -> dict[str, Any]:
    """Run the bench (no connected Ray needed: every size gets its own); print its JSON and
    write it to ``out`` (a file, or a folder for ``bench-memory.json``). Returns the result."""
    sizes = tuple(sorted(int(n) for n in sizes))
    if len(sizes) < 2 or sizes[0] < 1:
        raise ValueError(f"sizes needs at least two positive sizes, got {sizes}")
    load_before = load_average()
    per_size = []
    with tempfile.TemporaryDirectory(prefix="raysynth-bench-memory-") as tmp:
        root = Path(tmp)
        folder = train_tiny_pixel_model(root / "model", tiny=True)
        for n in sizes:
            per_size.append(_measure(n, folder, root / f"out-{n}", batch, steps, actors, timeout))
    small, large = per_size[0], per_size[-1]
    result = {
        "name": "memory",
        "growth": large["rss_mb"] / small["rss_mb"] - 1,
        "measures": {
            "growth": "peak driver RSS (ru_maxrss of a fresh process) streaming the largest N / "
            "the smallest N - 1",
            "rss_mb": "peak driver RSS per N, MiB (imports, ray.init, plan and generate)",
            "rss_before_generate_mb": "peak RSS before generate started (imports, ray.init, plan)",
            "rss_sampled_mb": "largest psutil RSS sample during generate",
        },
        "sizes": list(sizes),
        "rss_mb": {str(r["images"]): r["rss_mb"] for r in per_size},
        "rss_before_generate_mb": {str(r["images"]): r["rss_before_generate_mb"] for r in per_size},
        "rss_sampled_mb": {str(r["images"]): r["rss_sampled_mb"] for r in per_size},
        "wall_s": {str(r["images"]): r["wall_s"] for r in per_size},
        "images_per_s": {str(r["images"]): r["rows_written"] / r["wall_s"] for r in per_size},
        "rows_written": {str(r["images"]): r["rows_written"] for r in per_size},
        "batch": batch,
        "steps": steps,
        "actors": actors,
        "cpus_per_actor": 1,
        "ray_cpus": 2,
        "generator": "pixel, 8/16 channels, 8x8, CPU",
        "load_avg": {"before": load_before, "after": load_average()},
    }
    write_result(result, out, "memory")
    return result
