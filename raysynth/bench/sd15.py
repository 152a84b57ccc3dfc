"""The ``sd15`` section of ``raysynth bench synthesis`` (GPU only): SD 1.5-sized generation.

The product's generate stage on a Stable Diffusion 1.5-sized model built from config
(:func:`raysynth.bench.tiny_sd.save_sd15_sized`: 512 px, random weights, nothing downloaded),
one actor with one GPU: steady-state images/s and the fraction of the device's FLOP ceiling.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from raysynth import columns as col
from raysynth.bench.fixtures import CLASSES, bench_config, plan_rows
from raysynth.bench.flops import gflop_per_image, matmul_tflops, unet_tflop_per_forward
from raysynth.bench.generate_paths import ray_generate
from raysynth.config.schema import RunConfig
from raysynth.generate.generators import DTYPES, GeneratorSpec
from raysynth.generate.table import read_table


def sd15_config(model: str, batch: int, steps: int, dtype: str) -> RunConfig:
    """The bench's config for the text-to-image ``model``: one actor of one CPU and one GPU."""
    return bench_config(
        batch,
        steps,
        **{
            "synthesis.generator.kind": "text2image",
            "synthesis.generator.model": model,
            "synthesis.generator.dtype": dtype,
            "synthesis.pool.gpus_per_actor": 1.0,
            "synthesis.pool.cpus_per_actor": 1,
        },
    )


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

    if not torch.cuda.is_available():
        raise RuntimeError("bench synthesis sd15 needs a CUDA device")
    with tempfile.TemporaryDirectory(prefix="raysynth-bench-sd15-") as tmp:
        root = Path(tmp)
        model = save_sd15_sized(root / "sd15", torch.float32)  # loaded in dtype: checked
        cfg = sd15_config(model, batch, steps, dtype)
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
