"""AiR LoRA training at Stable Diffusion 1.5 size on CUDA (skipped without a GPU).

The UNet has SD 1.5's architecture (block_out_channels 320/640/1280/1280, cross-attention 768,
64×64 latents, ~860M parameters) built from config with random weights — no download; the VAE
and text encoder are tiny (they run once, before training). Prints the step time.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from tiny_models import png, text_encoder, tokenizer, vae

from raysynth.generate.lora.loop import lora_optimizer, lora_step
from raysynth.generate.lora.model import AdapterState
from raysynth.generate.lora.spec import LoraTrainSpec
from raysynth.generate.lora.tasks import build_sd_task

pytestmark = pytest.mark.gpu


SD15_UNET = {
    "sample_size": 64,
    "block_out_channels": (320, 640, 1280, 1280),
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}


def _sd_pipeline(device: torch.device, dtype: torch.dtype, unet_config: dict):
    """The tiny VAE, tokenizer and text encoder of tests/tiny_models.py, scaled to SD 1.5's
    shapes (scale factor 8, 77 tokens, 768 features), around a UNet built from ``unet_config``."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    with device:  # initialise the 860M parameters where they will run
        unet = UNet2DConditionModel(**unet_config).to(dtype)
    return StableDiffusionPipeline(
        vae=vae(  # 4 blocks: scale factor 8, so 512×512 images ↔ 64×64 latents
            block_out_channels=(8, 8, 16, 16),
            down_block_types=["DownEncoderBlock2D"] * 4,
            up_block_types=["UpDecoderBlock2D"] * 4,
        ),
        text_encoder=text_encoder(
            max_position_embeddings=77, hidden_size=768, intermediate_size=64, num_hidden_layers=1
        ),
        tokenizer=tokenizer(model_max_length=77),
        unet=unet,
        scheduler=DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def train_and_check(
    device: torch.device, dtype: str, unet_config: dict, image_size: int
) -> dict[str, float]:
    """20 LoRA steps of batch 4 on ``device``; checks losses and step time are finite, the base is
    bit-identical and the adapter got gradients; prints and returns the step time and sizes."""
    spec = LoraTrainSpec(dtype=dtype, steps=20, batch_size=4, learning_rate=1e-4)
    pipe = _sd_pipeline(device, getattr(torch, dtype), unet_config)
    rng = np.random.default_rng(0)
    shape = (image_size, image_size, 3)
    images = [png(rng.integers(0, 255, shape, dtype=np.uint8)) for _ in range(8)]
    labels = [0, 1] * 4
    task = build_sd_task(pipe, images, labels, ["thorn apple", "rose"], "Flowers:", spec, device)
    latent = unet_config["sample_size"]
    assert task.x0.shape == (8, 4, latent, latent)
    base = {n: p.detach().clone() for n, p in task.unet.named_parameters() if "lora_" not in n}
    assert all(p.dtype == getattr(torch, dtype) for p in base.values())
    state = AdapterState(task.unet)
    assert all(p.dtype == torch.float32 for p in state.parameters())
    n_adapter = sum(p.numel() for p in state.parameters())
    n_base = sum(p.numel() for p in base.values())
    optimizer = lora_optimizer(state.parameters(), spec)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times, losses = [], []
    for step in range(spec.steps):
        sync()
        start = time.perf_counter()
        losses.append(float(lora_step(task.unet, task, optimizer, spec, step)))
        sync()
        times.append(time.perf_counter() - start)
    step_s = float(np.median(times[2:]))  # the first steps include kernel selection
    print(
        f"\nSD UNet {n_base / 1e6:.0f}M base + {n_adapter / 1e6:.2f}M adapter, {dtype}, batch "
        f"{spec.batch_size}, {latent}x{latent} latents: {step_s * 1000:.0f} ms/step, "
        f"loss {losses[0]:.3f} -> {losses[-1]:.3f}"
    )
    assert all(math.isfinite(v) for v in losses), losses
    assert math.isfinite(step_s) and step_s > 0
    now = dict(task.unet.named_parameters())
    assert all(torch.equal(now[n], p) for n, p in base.items())
    assert all(p.grad is not None for p in state.parameters())
    assert any(p.grad.abs().sum() > 0 for p in state.parameters())
    return {"step_s": step_s, "n_base": n_base, "n_adapter": n_adapter}


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_sd15_sized_lora_trains_on_cuda_with_a_frozen_base(dtype):
    stats = train_and_check(torch.device("cuda"), dtype, SD15_UNET, image_size=512)
    assert 800e6 < stats["n_base"] < 900e6  # SD 1.5's UNet: 860M parameters
    assert stats["n_adapter"] < 0.01 * stats["n_base"]
    assert stats["step_s"] < 10
    if torch.cuda.is_available():
        print(f"peak CUDA memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
