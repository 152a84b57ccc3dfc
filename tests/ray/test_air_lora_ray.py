"""AiR LoRA fine-tuning through Ray Train: local mode, resume from a checkpoint, 2 gloo workers.

(Named ``*_ray`` so it does not clash with tests/unit/test_air_lora.py: the test folders are not
packages, so two test modules may not share a basename.)
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_models import (
    one_thread,  # noqa: F401
    pixel_config,
    save_sd,
    sd_images,
)

from raysynth.config.schema import GeneratorConfig, ScalingConfig
from raysynth.errors import ConfigError
from raysynth.generate.loading import load_pipeline
from raysynth.generate.lora.loop import denoising_loss, draw_batch
from raysynth.generate.lora.spec import PIXEL_SPEC, RESULT_FILE, LoraTrainSpec
from raysynth.generate.lora.tasks import build_sd_task
from raysynth.generate.lora.train import train_pixel_lora, train_sd_lora
from raysynth.generate.pixel import build_unet, save_pixel_model
from raysynth.generate.pixel import sampling_scheduler_config as pixel_scheduler_config

CLASSES = ["cat", "dog"]

pytestmark = pytest.mark.usefixtures("one_thread")


def _digits() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    y = np.arange(12) % 3
    x = rng.uniform(0, 0.2, size=(12, 1, 8, 8)).astype(np.float32)
    for i, c in enumerate(y):
        x[i, 0, 3 + c, :] = 1.0
    return x, y


@pytest.fixture(scope="module")
def pixel_model(tmp_path_factory):
    cfg = pixel_config()
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("air_ray") / "pixel"
    save_pixel_model(folder, build_unet(cfg), pixel_scheduler_config(cfg), cfg, ["a", "b", "c"])
    return str(folder)


# resume ------------------------------------------------------------------------------------------


def test_pixel_resume_repeats_the_uninterrupted_steps(pixel_model, tmp_path):
    """6 steps straight == 3 steps (checkpoint at 3) then a rerun asking for 6: bit-identical
    adapter and losses, because every step's batch is seeded by (seed, rank, step) and the
    checkpoint holds the adapter and AdamW state exactly (float32)."""
    x, y = _digits()
    spec = replace(PIXEL_SPEC, steps=6, checkpoint_every=3, learning_rate=1e-2, batch_size=4)
    straight = train_pixel_lora(pixel_model, x, y, tmp_path / "straight", spec, threads=1)
    assert len(straight.losses) == 6 and straight.world_size == 1
    part = train_pixel_lora(pixel_model, x, y, tmp_path / "resumed", replace(spec, steps=3))
    ckpt = tmp_path / "resumed-checkpoint"
    assert json.loads((ckpt / "state.json").read_text())["epoch"] == 2
    # the checkpoint holds the adapter (and the losses so far), not the base
    saved = load_file(str(ckpt / "model.safetensors"))
    assert all("lora_" in k for k in saved if k != "_extra_state")
    assert saved["_extra_state"].tolist() == part.losses == straight.losses[:3]
    # mark the recorded losses: a rerun that resumes keeps them, one from scratch would not
    save_file({**saved, "_extra_state": -saved["_extra_state"]}, str(ckpt / "model.safetensors"))
    resumed = train_pixel_lora(pixel_model, x, y, tmp_path / "resumed", spec)
    assert resumed.losses == [-v for v in straight.losses[:3]] + straight.losses[3:]
    a = load_file(str(straight.folder / "adapter_model.safetensors"))
    b = load_file(str(resumed.folder / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((resumed.folder / RESULT_FILE).read_text())["losses"] == resumed.losses
    # a checkpoint of another adapter is refused before anything runs
    with pytest.raises(ConfigError, match="checkpoint of another adapter.*rank"):
        train_pixel_lora(pixel_model, x, y, tmp_path / "resumed", replace(spec, rank=8))
    with pytest.raises(ConfigError, match="after 6 steps but air.lora.steps=4"):
        train_pixel_lora(pixel_model, x, y, tmp_path / "resumed", replace(spec, steps=4))


# data parallel -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sd_lora_on_two_gloo_workers(ray_local, tmp_path):
    model = save_sd(tmp_path / "sd")
    images, labels = sd_images()
    spec = LoraTrainSpec(learning_rate=1e-2, steps=40, batch_size=2, checkpoint_every=20)
    scaling = ScalingConfig(num_workers=2, cpus_per_worker=1)
    res = train_sd_lora(
        model,
        images,
        labels,
        CLASSES,
        "Pets:",
        tmp_path / "adapter",
        spec,
        scaling=scaling,
        threads=1,
    )
    assert res.world_size == 2 and len(res.losses) == 40 and all(np.isfinite(res.losses))
    assert (res.folder / "pytorch_lora_weights.safetensors").is_file()
    meta = json.loads((res.folder / RESULT_FILE).read_text())
    assert meta["world_size"] == 2 and meta["prompts"]["dog"] == "Pets: dog"
    assert json.loads((tmp_path / "adapter-checkpoint" / "state.json").read_text())["epoch"] == 39
    # the saved adapter, loaded the way synthesis loads it, lowers the loss on a fixed batch
    cpu = torch.device("cpu")
    base = load_pipeline(GeneratorConfig(kind="text2image", model=model), cpu)
    task = build_sd_task(base, images, labels, CLASSES, "Pets:", spec, cpu)  # adapter B = 0
    batch = draw_batch(task, 64, 123, 0, 0)
    adapted = load_pipeline(
        GeneratorConfig(kind="text2image", model=model, lora=(str(res.folder),)), cpu
    )
    with torch.no_grad():
        before = float(denoising_loss(task.unet, task, *batch))
        after = float(denoising_loss(adapted.unet, task, *batch))
    print(f"\nfixed-batch loss: base {before:.4f}, with the 2-worker adapter {after:.4f}")
    assert after < 0.95 * before, (before, after)
