"""AiR LoRA fine-tuning through Ray Train: local mode, resume from a checkpoint, 2 gloo workers.

(Named ``*_ray`` so it does not clash with tests/unit/test_air_lora.py: the test folders are not
packages, so two test modules may not share a basename.)
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import ray.cloudpickle
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
from raysynth.generate.lora.loop import denoising_loss, draw_batch, lora_optimizer
from raysynth.generate.lora.model import AdapterState
from raysynth.generate.lora.spec import PIXEL_SPEC, RESULT_FILE, LoraTrainSpec
from raysynth.generate.lora.tasks import build_sd_task
from raysynth.generate.lora.train import train_pixel_lora, train_sd_lora
from raysynth.generate.pixel import build_unet, save_pixel_model
from raysynth.generate.pixel import sampling_scheduler_config as pixel_scheduler_config

CLASSES = ["cat", "dog"]
# steps of the 2-worker SD adapter: enough for the saved adapter to lower the fixed-batch loss
STEPS = 20

pytestmark = pytest.mark.usefixtures("one_thread")

# The workers unpickle recording_lora_loop below; this test module is not importable there.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


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


def recording_lora_loop(config: dict) -> None:
    """``lora_train_loop``, recording on each rank (in ``<out_dir>/../record/rank<r>.pt``) the
    images it encoded (its shard), the adapter and the batch before step 1, the adapter after
    step 1 and after the last step."""
    import torch

    from raysynth.generate.lora import loop, tasks
    from raysynth.train import session as s

    out = Path(config["out_dir"]).parent / "record"
    out.mkdir(exist_ok=True)
    seen: dict = {}
    encode, draw, end_epoch = tasks._encode_frozen, loop.draw_batch, s.TrainSession.end_epoch

    def adapter(named):
        return {n: p.detach().clone() for n, p in named if p.requires_grad}

    def rec_encode(pipe, pngs, size, prompts, device):
        seen["images"] = list(pngs)
        return encode(pipe, pngs, size, prompts, device)

    def rec_draw(task, batch_size, seed, rank, step):
        batch = draw(task, batch_size, seed, rank, step)
        if step == 0:
            seen["init"] = adapter(task.unet.named_parameters())
            seen["batch"] = batch
        return batch

    def rec_end_epoch(self, epoch, epochs, value, model, *args, **kwargs):
        named = [(k.replace("/", "."), p) for k, p in model.adapter.items()]
        if epoch == 0:
            seen["step1"] = adapter(named)
        if epoch == epochs - 1:
            seen["last"] = adapter(named)
            torch.save(seen, out / f"rank{self.rank}.pt")
        return end_epoch(self, epoch, epochs, value, model, *args, **kwargs)

    tasks._encode_frozen, loop.draw_batch = rec_encode, rec_draw
    s.TrainSession.end_epoch = rec_end_epoch
    try:
        loop.lora_train_loop(config)
    finally:
        tasks._encode_frozen, loop.draw_batch, s.TrainSession.end_epoch = encode, draw, end_epoch


@pytest.mark.slow
def test_sd_lora_on_two_gloo_workers(ray_local, tmp_path, monkeypatch):
    """2 gloo workers: the ranks encode disjoint halves of the images (every 2nd one, with its
    own class prompt) that together cover them, start from the same adapter, and their first step
    equals one AdamW step, taken here in-process, on the mean of the two ranks' gradients (each
    rank's loss on its own batch, as DDP averages them); they end with equal adapters, and the
    saved adapter lowers the loss."""
    import raysynth.generate.lora.train as lora_train

    monkeypatch.setattr(lora_train, "lora_train_loop", recording_lora_loop)
    model = save_sd(tmp_path / "sd")
    images, labels = sd_images()
    spec = LoraTrainSpec(learning_rate=1e-2, steps=STEPS, batch_size=2, checkpoint_every=STEPS // 2)
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
    assert res.world_size == 2 and len(res.losses) == STEPS and all(np.isfinite(res.losses))
    assert (res.folder / "pytorch_lora_weights.safetensors").is_file()
    meta = json.loads((res.folder / RESULT_FILE).read_text())
    assert meta["world_size"] == 2 and meta["prompts"]["dog"] == "Pets: dog"
    ckpt = json.loads((tmp_path / "adapter-checkpoint" / "state.json").read_text())
    assert ckpt["epoch"] == STEPS - 1
    ranks = [torch.load(tmp_path / "record" / f"rank{r}.pt", weights_only=False) for r in (0, 1)]

    # disjoint shards that cover the 4 images: rank 0 the cats (0, 2), rank 1 the dogs (1, 3)
    index = {png: i for i, png in enumerate(images)}
    assert len(index) == 4
    shards = [[index[png] for png in rk["images"]] for rk in ranks]
    assert shards == [[0, 2], [1, 3]], shards
    cpu = torch.device("cpu")
    base = load_pipeline(GeneratorConfig(kind="text2image", model=model), cpu)
    for r, rk in enumerate(ranks):  # each rank's batch is conditioned on its own class's prompt
        text = base.encode_prompt([f"Pets: {CLASSES[r]}"], cpu, 1, False)[0][0]
        for states in rk["batch"][3]["encoder_hidden_states"]:
            torch.testing.assert_close(states, text, msg=f"rank {r}")

    task = build_sd_task(base, images, labels, CLASSES, "Pets:", spec, cpu)  # adapter B = 0
    # the saved adapter, loaded the way synthesis loads it, lowers the loss on a fixed batch
    batch = draw_batch(task, 64, 123, 0, 0)
    adapted = load_pipeline(
        GeneratorConfig(kind="text2image", model=model, lora=(str(res.folder),)), cpu
    )
    with torch.no_grad():
        before = float(denoising_loss(task.unet, task, *batch))
        after = float(denoising_loss(adapted.unet, task, *batch))
    print(f"\nfixed-batch loss: base {before:.4f}, with the 2-worker adapter {after:.4f}")
    assert after < 0.95 * before, (before, after)

    # the first step by hand: mean of the per-rank gradients, one AdamW step from the same init
    state = AdapterState(task.unet)
    params = {k.replace("/", "."): p for k, p in state.adapter.items()}
    for r, rk in enumerate(ranks):
        assert rk["init"].keys() == params.keys()
        for name, p in params.items():
            torch.testing.assert_close(rk["init"][name], p.detach(), msg=f"rank {r} init: {name}")
    grads = [
        torch.autograd.grad(denoising_loss(task.unet, task, *rk["batch"]), list(params.values()))
        for rk in ranks
    ]
    for p, g0, g1 in zip(params.values(), *grads):
        p.grad = (g0 + g1) / 2
    torch.nn.utils.clip_grad_norm_(list(params.values()), spec.max_grad_norm)
    lora_optimizer(state.parameters(), spec).step()
    moved = 0
    for name, p in params.items():
        moved += not torch.equal(p.detach(), ranks[0]["init"][name])
        for r, rk in enumerate(ranks):
            torch.testing.assert_close(
                rk["step1"][name], p.detach(), rtol=1e-5, atol=1e-6, msg=f"rank {r}: {name}"
            )
    assert moved == len(params)  # the step moved every adapter tensor
    for name in params:  # DDP kept the ranks in step to the end
        torch.testing.assert_close(ranks[0]["last"][name], ranks[1]["last"][name], msg=name)
    assert any(not torch.equal(ranks[0]["last"][n], ranks[0]["step1"][n]) for n in params)
