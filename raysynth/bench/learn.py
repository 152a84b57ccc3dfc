"""``raysynth bench learn``: the learning half streamed from Parquet into Ray Train (issue 15).

One run measures, side by side, on generated long-tailed tables (``data/generated.py``; half
real, half accepted synthetic, 50/50 batches, balanced softmax):

- ``driver_rss_growth`` / ``worker_rss_growth``: peak RSS of the driver (``ru_maxrss`` of a
  fresh process that starts its own local Ray) and of the largest Train worker (psutil samples
  every 0.1 s of every ``RayTrainWorker`` process) while training one epoch on the small vs the
  large number of images (a tiny CNN on 16-px grey images: memory does not depend on the
  model, time does); the growth is large / small − 1 (target < 0.10).
- ``ratio``: images/s of the streamed loop / images/s of the same loop on in-memory arrays
  shipped in the loop's config (same worker, model, batch and threads), on the small size
  (target ≥ 0.8).
- ``scaling``: images/s of the streamed loop on 2 workers / on 1 worker (target ≥ 1.5 on 2
  idle cores).

The speed runs use the ``stress-lt`` preset's images and model (32-px RGB, 100 classes, the
default small CNN of width 32), where the model's compute is what an epoch costs, as it is at the
papers' scale; a 16-px width-8 CNN trains at ~16k images/s on one core, so any loader looks slow
beside it. They train two epochs and take the second's rate (``images_per_s``): the first also
pays for starting the Ray Data and Train worker processes once per run (``first_epoch_*`` keys
keep it). Images/s is the rows of one epoch (real rows plus as many synthetic draws) over rank
0's epoch time. Each measurement runs in its own subprocess (:func:`_child_main`).
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

from raysynth.bench.harness import PeakRss, load_average, write_result

MARKER = "RAYSYNTH-BENCH-LEARN "


def _train_worker_rss() -> int:
    """Largest RSS of any Ray Train worker process now (0 when none runs)."""
    import psutil

    peak = 0
    for p in psutil.process_iter(["cmdline", "memory_info"]):
        cmd = " ".join(p.info.get("cmdline") or [])
        if "RayTrainWorker" in cmd and p.info.get("memory_info"):
            peak = max(peak, p.info["memory_info"].rss)
    return peak


def _child_main(args: str) -> None:
    """Subprocess entry point: one measurement on a fresh local Ray; prints one JSON line."""
    import ray

    a = json.loads(args)
    ray.init(address="local", num_cpus=a["cpus"], include_dashboard=False, log_to_driver=False)
    sampler = PeakRss(_train_worker_rss, interval=0.1)
    sampler.start()
    started = time.perf_counter()
    try:
        metrics = _train(a)
    finally:
        worker_mb = sampler.stop()
        ray.shutdown()
    scale = 1 if sys.platform == "darwin" else 1024
    epochs = metrics["epoch_s"]
    out = {"driver_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20,
           "worker_rss_mb": worker_mb, "train_s": metrics["train_s"], "epoch_s": epochs,
           "run_s": time.perf_counter() - started,  # reading the tables and starting Train too
           "images_per_s": a["epoch_rows"] / epochs[-1],
           "first_epoch_images_per_s": a["epoch_rows"] / epochs[0]}
    print(MARKER + json.dumps(out), flush=True)


def _train(a: dict[str, Any]) -> dict[str, Any]:
    from raysynth.config import build_config
    from raysynth.data.tables import describe_table
    from raysynth.flows.end_to_end import train_end_to_end

    cfg = build_config(overrides={
        "end_to_end.epochs": a["epochs"], "end_to_end.batch_size": a["batch"],
        "encoder.arch": "small_cnn", "encoder.width": a["width"], "encoder.feat_dim": a["feat"],
        "train.num_workers": a["workers"], "train.cpus_per_worker": 1,
        "train.checkpoint_every": 1000,
    })
    k, ch, size = a["classes"], a["channels"], a["size"]
    real = describe_table(a["real"], k, ch, size)
    syn = describe_table(a["synthetic"], k, ch, size, accepted_only=True)
    test = describe_table(a["test"], k, ch, size)
    if a["mode"] == "memory":
        real, syn, test = (_arrays(t) for t in (real, syn, test))
    root = Path(a["out"])
    return train_end_to_end(cfg, real, syn, test, {}, k, 0, root / "model", root / "ckpt", root,
                            "bench", timing=True)


def _arrays(table: Any) -> Any:
    import numpy as np
    import pyarrow.parquet as pq

    from raysynth import columns as col
    from raysynth.data.images import to_tensor_array
    from raysynth.train.arrays import LabeledArrays

    t = pq.read_table(list(table.files), columns=[col.LABEL, col.IMAGE])
    x = to_tensor_array(t[col.IMAGE].to_pylist(), table.channels)
    return LabeledArrays(x, np.asarray(t[col.LABEL].to_numpy(), np.int64))


def _measure(args: dict[str, Any], timeout: float) -> dict[str, Any]:
    code = f"from raysynth.bench.learn import _child_main; _child_main({json.dumps(args)!r})"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a fresh local Ray
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARKER)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"learn bench child {args['mode']} failed (exit {proc.returncode}):\n"
                           f"{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len(MARKER):])


def _tables(root: Path, images: int, classes: int, size: int, channels: int) -> dict[str, Any]:
    from raysynth.data.generated import long_tail_counts, write_table

    half = images // 2
    real = long_tail_counts(half, classes, 10.0)
    return {
        "real": write_table(root / "real", real, size, channels, 1),
        "synthetic": write_table(root / "syn", long_tail_counts(half, classes, 1.0), size,
                                 channels, 2, prefix="syn", accepted=True),
        "test": write_table(root / "test", [20] * classes, size, channels, 3, prefix="test"),
        "epoch_rows": 2 * sum(real),  # real rows + as many synthetic draws (50/50 batches)
    }


MEMORY = {"classes": 10, "size": 16, "channels": 1, "width": 8, "feat": 32, "epochs": 1}
SPEED = {"classes": 100, "size": 32, "channels": 3, "width": 32, "feat": 128, "epochs": 2}


def run(
    out: str | None = None,
    sizes: tuple[int, int] = (10_000, 100_000),
    batch: int = 128,
    memory: dict[str, int] | None = None,
    speed: dict[str, int] | None = None,
    timeout: float = 3600,
) -> dict[str, Any]:
    """Run the bench; print its JSON and write it to ``out``. Returns the result. ``memory`` /
    ``speed``: the shapes and model of the RSS and the speed runs (:data:`MEMORY`,
    :data:`SPEED`)."""
    mem, fast = {**MEMORY, **(memory or {})}, {**SPEED, **(speed or {})}
    load_before, started = load_average(), time.perf_counter()
    runs: dict[str, dict[str, Any]] = {}
    plan = [("stream-small", mem, sizes[0], "stream", 1), ("stream-large", mem, sizes[1], "stream", 1),
            ("speed-stream", fast, sizes[0], "stream", 1), ("speed-memory", fast, sizes[0], "memory", 1),
            ("speed-stream-2workers", fast, sizes[0], "stream", 2)]
    with tempfile.TemporaryDirectory(prefix="raysynth-bench-learn-") as tmp:
        root = Path(tmp)
        data: dict[tuple[int, int], dict[str, Any]] = {}
        for name, shape, n, mode, workers in plan:
            key = (id(shape), n)
            if key not in data:
                data[key] = _tables(root / f"data-{len(data)}", n, shape["classes"], shape["size"],
                                    shape["channels"])
            # the machine's 2 cores for every run: 2 workers hold every CPU (the tables are read
            # into the object store before the Train run, so no read task waits for one)
            args = {**shape, **data[key], "batch": batch, "mode": mode, "workers": workers,
                    "cpus": max(2, workers), "out": str(root / f"run-{name}")}
            runs[name] = {**_measure(args, timeout), "images": n, "workers": workers,
                          "ray_cpus": args["cpus"]}
    small, large = runs["stream-small"], runs["stream-large"]
    one, mem_run, two = runs["speed-stream"], runs["speed-memory"], runs["speed-stream-2workers"]
    rate = "images_per_s"
    result = {
        "name": "learn",
        "driver_rss_growth": large["driver_rss_mb"] / small["driver_rss_mb"] - 1,
        "worker_rss_growth": large["worker_rss_mb"] / small["worker_rss_mb"] - 1,
        "ratio": one[rate] / mem_run[rate],
        "scaling": two[rate] / one[rate],
        "first_epoch_ratio": one[f"first_epoch_{rate}"] / mem_run[f"first_epoch_{rate}"],
        "first_epoch_scaling": two[f"first_epoch_{rate}"] / one[f"first_epoch_{rate}"],
        "targets": {"driver_rss_growth": "< 0.10", "worker_rss_growth": "< 0.10",
                    "ratio": ">= 0.8", "scaling": ">= 1.5 on 2 idle cores"},
        "runs": runs, "sizes": list(sizes), "batch": batch,
        "memory_runs": {**mem, "model": f"small_cnn width {mem['width']}"},
        "speed_runs": {**fast, "model": f"small_cnn width {fast['width']}", "images": sizes[0]},
        "wall_s": time.perf_counter() - started,
        "load_avg": {"before": load_before, "after": load_average()},
    }
    write_result(result, out, "learn")
    return result
