"""The training itself: one step's seeded batch (:func:`draw_batch`), the denoising loss, the
optimizer step, the loop — in this process (:func:`fit_lora`) or as Ray Train's
``train_loop_per_worker`` with DDP, checkpoints and resume (:func:`lora_train_loop`) — and the
finished adapter's folder (:func:`save_adapter`: the adapter files + ``air_lora.json``)."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from raysynth.config.schema import GeneratorConfig
from raysynth.errors import ConfigError, TrainingError
from raysynth.generate.generators import DTYPES
from raysynth.generate.lora.model import AdapterState
from raysynth.generate.lora.spec import FORMAT, KEY, RESULT_FILE, LoraTrainSpec
from raysynth.generate.lora.tasks import LoraTask, build_pixel_task, build_sd_task
from raysynth.seeding import stable_seed
from raysynth.storage import AnyPath, RemotePath, as_path, upload_dir


def draw_batch(
    task: LoraTask, batch_size: int, seed: int, rank: int, step: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """``(x0, noise, t, cond)`` of one step, every draw from a generator seeded by
    ``(seed, rank, step)`` on the CPU (the same batch on any device, and again after a resume)."""
    gen = torch.Generator().manual_seed(stable_seed("air-lora-step", seed, rank, step))
    dev = task.x0.device
    idx = torch.randint(len(task.x0), (batch_size,), generator=gen)
    x0 = task.x0[idx.to(dev)]
    if task.x0_std is not None:
        x0 = x0 + task.x0_std[idx.to(dev)] * torch.randn(x0.shape, generator=gen).to(dev)
    x0 = x0 * task.scale
    noise = torch.randn(x0.shape, generator=gen).to(dev)
    t = torch.randint(task.scheduler.config.num_train_timesteps, (batch_size,), generator=gen)
    return x0, noise, t.to(dev), task.cond(idx, gen)


def denoising_loss(
    model: torch.nn.Module,
    task: LoraTask,
    x0: torch.Tensor,
    noise: torch.Tensor,
    t: torch.Tensor,
    cond: dict[str, torch.Tensor],
) -> torch.Tensor:
    """Mean ``‖f(x_t, t, c) − y‖²`` (float32); ``model`` is ``task.unet`` or its DDP wrapper."""
    sched = task.scheduler
    kind = sched.config.prediction_type
    if kind == "epsilon":
        target = noise
    elif kind == "v_prediction":
        target = sched.get_velocity(x0, noise, t)
    elif kind == "sample":
        target = x0
    else:
        raise ConfigError(f"prediction_type {kind!r} of the model's scheduler is not supported")
    x_t = sched.add_noise(x0, noise, t)
    pred = model(x_t.to(task.dtype), t, **cond).sample
    return F.mse_loss(pred.float(), target.float())


def lora_optimizer(params: Any, spec: LoraTrainSpec) -> torch.optim.Optimizer:
    """AdamW at ``spec.learning_rate``, weight decay 0.01 (as diffusers' LoRA training script)."""
    return torch.optim.AdamW(params, lr=spec.learning_rate, weight_decay=1e-2)


def lora_step(
    model: torch.nn.Module,
    task: LoraTask,
    optimizer: torch.optim.Optimizer,
    spec: LoraTrainSpec,
    step: int,
    rank: int = 0,
) -> torch.Tensor:
    """One optimizer step on the batch of ``step``; returns this worker's loss (detached)."""
    loss = denoising_loss(model, task, *draw_batch(task, spec.batch_size, spec.seed, rank, step))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if spec.max_grad_norm > 0:
        params = [p for g in optimizer.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, spec.max_grad_norm)
    optimizer.step()
    return loss.detach()


def fit_lora(task: LoraTask, spec: LoraTrainSpec) -> list[float]:
    """``spec.steps`` steps in this process, without Ray or checkpoints; returns the losses."""
    optimizer = lora_optimizer(AdapterState(task.unet).parameters(), spec)
    losses = []
    for step in range(spec.steps):
        losses.append(
            _finite(float(lora_step(task.unet, task, optimizer, spec, step)), task, step, spec)
        )
    return losses


def _finite(loss: float, task: LoraTask, step: int, spec: LoraTrainSpec) -> float:
    if not math.isfinite(loss):
        raise TrainingError(
            f"AiR LoRA ({task.kind}): the loss became {loss} at step {step + 1} of {spec.steps}; "
            f"training stopped. Lower {KEY}.learning_rate, use float32 or bfloat16 rather than "
            "float16, or check the images."
        )
    return loss


def save_adapter(task: LoraTask, folder: str | AnyPath, info: dict[str, Any]) -> AnyPath:
    """Write the adapter files and ``air_lora.json`` (``info`` + the task's own) to ``folder``,
    atomically: a temporary folder renamed into place, replacing an older result."""
    out = as_path(folder)
    if isinstance(out, RemotePath):  # the run directory on an object store: the result file last
        with tempfile.TemporaryDirectory() as tmp:
            task.save(Path(tmp))
            meta = {"format": FORMAT, "kind": task.kind, **task.info, **info}
            (Path(tmp) / RESULT_FILE).write_text(json.dumps(meta, indent=2, default=str))
            (out / RESULT_FILE).unlink(missing_ok=True)
            upload_dir(Path(tmp), out, last=RESULT_FILE)
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        task.save(tmp)
        meta = {"format": FORMAT, "kind": task.kind, **task.info, **info}
        (tmp / RESULT_FILE).write_text(json.dumps(meta, indent=2, default=str))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def load_task(config: dict[str, Any], device: torch.device, rank: int, world: int) -> LoraTask:
    """This worker's :class:`LoraTask` from :func:`lora_train_loop`'s config: the base model is
    loaded on the CPU (in ``spec.dtype``), then built into a task on ``device``."""
    spec: LoraTrainSpec = config["spec"]
    if config["kind"] == "text2image":
        from raysynth.generate.loading import load_pipeline

        g = GeneratorConfig(kind="text2image", model=config["model"], dtype=spec.dtype)
        pipe = load_pipeline(g, torch.device("cpu"), config.get("model_ref"))
        return build_sd_task(
            pipe,
            config["images"],
            config["labels"],
            config["class_names"],
            config["context"],
            spec,
            device,
            rank,
            world,
        )
    from raysynth.generate.pixel import load_pixel_model

    model = load_pixel_model(config["model"], "cpu", DTYPES[spec.dtype])
    return build_pixel_task(model, config["images"], config["labels"], spec, device, rank, world)


def checkpoint_config(config: dict[str, Any]) -> dict[str, Any]:
    """``model.json`` of a checkpoint: what the adapter's shape depends on (checked on resume)."""
    spec: LoraTrainSpec = config["spec"]
    return {
        "format": FORMAT,
        "kind": config["kind"],
        "model": str(config["model"]),
        "rank": spec.rank,
        "alpha": spec.alpha,
        "target_modules": list(spec.target_modules),
    }


def _mean_over_workers(loss: torch.Tensor, world_size: int) -> float:
    if world_size > 1:
        import torch.distributed as dist

        loss = loss.clone()
        dist.all_reduce(loss)
        loss /= world_size
    return float(loss)


def lora_train_loop(config: dict[str, Any]) -> None:
    """Ray Train ``train_loop_per_worker`` of one adapter training.

    Keys: ``kind`` (``text2image`` | ``pixel``), ``model`` (SD folder or cached id; pixel model
    folder), ``images`` (PNG bytes; pixel: float32 ``[N, C, H, W]`` in [0, 1]), ``labels``,
    ``class_names``, ``context``, ``spec`` (:class:`LoraTrainSpec`), ``out_dir``, optional
    ``checkpoint_dir``, ``threads``. Rank 0 writes ``out_dir``; reports ``losses``,
    ``world_size`` and ``folder``.
    """
    from raysynth.train.session import TrainSession

    if config.get("threads"):
        torch.set_num_threads(int(config["threads"]))
    spec: LoraTrainSpec = config["spec"]
    session = TrainSession(config.get("checkpoint_dir"), spec.checkpoint_every)
    task = load_task(config, session.device, session.rank, session.world_size)
    model = session.prepare(task.unet)
    state = AdapterState(task.unet)
    optimizer = lora_optimizer(state.parameters(), spec)
    start = session.restore(state, optimizer)
    ckpt_cfg = checkpoint_config(config)
    for step in range(start, spec.steps):
        loss = lora_step(model, task, optimizer, spec, step, session.rank)
        state.losses.append(_finite(_mean_over_workers(loss, session.world_size), task, step, spec))
        session.end_epoch(
            step,
            spec.steps,
            state.losses[-1],
            state,
            ckpt_cfg,
            optimizer,
            f"AiR LoRA ({task.kind})",
        )
    if session.rank == 0:
        info = {
            "model": str(config["model"]),
            "spec": spec.to_dict(),
            "num_images": len(config["images"]),
            "world_size": session.world_size,
            "losses": state.losses,
        }
        save_adapter(task, config["out_dir"], info)
    session.report(
        {"losses": state.losses, "world_size": session.world_size, "folder": str(config["out_dir"])}
    )


__all__ = [
    "checkpoint_config",
    "denoising_loss",
    "draw_batch",
    "fit_lora",
    "load_task",
    "lora_optimizer",
    "lora_step",
    "lora_train_loop",
    "save_adapter",
]
