"""FLOP accounting of the GPU benches: model FLOPs per image and the device's FLOP ceiling.

Model FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` — of one generated image
through the product's generator (:func:`gflop_per_image`), or of one UNet forward on the meta
device, shapes only (:func:`unet_tflop`) — and the ceiling is the achieved TFLOP/s of a large
CUDA matmul (:func:`matmul_tflops`).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from raysynth import columns as col
from raysynth.bench.harness import numpy_batches
from raysynth.generate.actor import DiffusionGenerator, plan_table
from raysynth.generate.generators import GeneratorSpec


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
