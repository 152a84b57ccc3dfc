"""AiR step 2 (paper 001, METHODS §4): LoRA fine-tuning of the generator on pseudo-labelled images.

A LoRA adapter (peft; rank ``r``, update ``(α/r) B A``) on a frozen base learns the usual denoising
loss ``‖f(x_t, t, c) − y‖²`` with ``x_t = √ᾱ_t x0 + √(1−ᾱ_t) ε``, ``t ~ U{0, …, T−1}`` and the target
``y`` set by the model's own ``prediction_type`` (its scheduler config, read into a
``DDPMScheduler``): ``ε``, ``v = √ᾱ_t ε − √(1−ᾱ_t) x0`` or ``x0``. Two model kinds:

- ``text2image`` (Stable Diffusion 1.x/2.x): ``x0`` = VAE latents × ``scaling_factor`` of the images
  resized and centre-cropped to the model's resolution, a fresh draw from each image's latent
  distribution every step; ``c`` = the text-encoder states of ``"{context} {class}"`` (e.g.
  "Flowers: thorn apple"). Adapter on the UNet attention projections. Output: a
  ``save_lora_weights`` folder (``pytorch_lora_weights.safetensors``), which
  ``synthesis.generator.lora=[folder]`` loads with ``pipe.load_lora_weights``;
- ``pixel`` (the digits preset's class-conditional ``UNet2DModel``): ``x0`` = the images in
  [-1, 1], ``c`` = the class label, replaced by the null class with the base model's
  ``cond_dropout`` so classifier-free guidance keeps working. Adapter on the ResNet convolutions
  and mid-block attention projections (:data:`PIXEL_TARGET_MODULES`). Output: peft's
  ``adapter_config.json`` + ``adapter_model.safetensors``, which the pixel generator loads the
  same way.

Both folders also hold ``air_lora.json``: the spec, base model, prompts and per-step losses.

Training runs as a Ray Train loop (:func:`lora_train_loop`, started by :func:`train_sd_lora` /
:func:`train_pixel_lora` through :func:`~raysynth.train.session.run_trainer`): each worker takes
every ``world_size``-th image, DDP averages the adapter's gradients, and a checkpoint holds the
adapter, the optimizer state and the losses — never the base (:class:`AdapterState`). A rerun on
the same checkpoint folder resumes from the last checkpoint; every step's randomness (images
drawn, latent sample, noise, timesteps, label dropout) is seeded by ``(seed, rank, step)``, so the
resumed run takes exactly the steps an uninterrupted one takes. :func:`build_sd_task`,
:func:`build_pixel_task` and :func:`fit_lora` are the same training without Ray.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from raysynth.config.schema import GeneratorConfig, ScalingConfig
from raysynth.errors import ConfigError, DataError, TrainingError
from raysynth.generate.generators import DTYPES
from raysynth.generate.pixel_generator import PIXEL_ADAPTER_WEIGHTS
from raysynth.seeding import stable_seed

KEY = "air.lora"
ATTENTION_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")
PIXEL_TARGET_MODULES = ("conv1", "conv2", *ATTENTION_PROJECTIONS)
RESULT_FILE = "air_lora.json"
FORMAT = "raysynth-air-lora-v1"


def _check(ok: bool, name: str, what: str) -> None:
    if not ok:
        raise ConfigError(f"{KEY}.{name}: {what}")


@dataclass(frozen=True)
class LoraTrainSpec:
    """How to train one adapter (field names match the ``air.lora`` config section).

    ``steps`` counts optimizer steps; ``batch_size`` is per Ray Train worker (the effective batch
    is ``batch_size × num_workers``); ``checkpoint_every`` is in steps (0: no checkpoints);
    ``dtype`` is the frozen base's (``bfloat16``/``float16`` on a GPU) — the adapter always trains
    in float32. The default targets are the UNet attention projections (Stable Diffusion); the
    pixel model's are :data:`PIXEL_TARGET_MODULES`.
    """

    rank: int = 4
    alpha: float = 4.0
    target_modules: tuple[str, ...] = ATTENTION_PROJECTIONS
    learning_rate: float = 1e-4
    steps: int = 500
    batch_size: int = 4
    seed: int = 0
    checkpoint_every: int = 100
    dtype: str = "float32"
    max_grad_norm: float = 1.0  # 0 disables gradient clipping

    def __post_init__(self) -> None:
        targets = self.target_modules
        _check(
            not isinstance(targets, str),
            "target_modules",
            f"give a list of module names, not the string {targets!r}",
        )
        object.__setattr__(self, "target_modules", tuple(targets))
        _check(self.rank >= 1, "rank", f"must be >= 1, got {self.rank}")
        _check(self.alpha > 0, "alpha", f"must be > 0, got {self.alpha}")
        _check(
            len(self.target_modules) > 0
            and all(isinstance(t, str) and t for t in self.target_modules),
            "target_modules",
            f"needs at least one non-empty module name, got {list(self.target_modules)}",
        )
        _check(self.learning_rate > 0, "learning_rate", f"must be > 0, got {self.learning_rate}")
        _check(self.steps >= 1, "steps", f"must be >= 1, got {self.steps}")
        _check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        _check(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")
        _check(
            self.checkpoint_every >= 0,
            "checkpoint_every",
            f"must be >= 0 (0: no checkpoints), got {self.checkpoint_every}",
        )
        _check(self.dtype in DTYPES, "dtype", f"got {self.dtype!r}; choose one of {list(DTYPES)}")
        _check(self.max_grad_norm >= 0, "max_grad_norm", f"must be >= 0, got {self.max_grad_norm}")

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "target_modules": list(self.target_modules)}


PIXEL_SPEC = LoraTrainSpec(target_modules=PIXEL_TARGET_MODULES)


@dataclass(frozen=True)
class LoraResult:
    """A finished training: the adapter folder, one loss per optimizer step (mean over workers;
    steps done before a resume included) and the number of workers."""

    folder: Path
    losses: list[float]
    world_size: int


def lora_prompt(context: str, class_name: str) -> str:
    """The training prompt of an image: ``"{context} {class}"``, just the class without context."""
    context = context.strip()
    return f"{context} {class_name}" if context else class_name


# 1. the adapter, and what a checkpoint holds -------------------------------------------------------


def add_lora(unet: torch.nn.Module, spec: LoraTrainSpec) -> Any:
    """Freeze ``unet`` and add a fresh LoRA adapter (peft, named ``default``) on
    ``spec.target_modules``; returns its ``LoraConfig``.

    The initialisation is seeded by ``spec.seed`` without touching the global RNG, so every
    worker starts from the same adapter. The adapter's parameters are float32 whatever the base's
    dtype (peft casts the input of each LoRA layer to its weights' dtype).
    """
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(
        r=spec.rank, lora_alpha=spec.alpha, target_modules=list(spec.target_modules)
    )
    unet.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stable_seed("air-lora-init", spec.seed))
        try:
            if hasattr(unet, "add_adapter"):  # diffusers' PeftAdapterMixin (UNet2DConditionModel)
                unet.add_adapter(config)
            else:
                inject_adapter_in_model(config, unet)
        except ValueError as exc:
            raise ConfigError(
                f"{KEY}.target_modules={list(spec.target_modules)} name no layer of this "
                f"{type(unet).__name__} ({exc}); Stable Diffusion UNets take "
                f"{list(ATTENTION_PROJECTIONS)}, the pixel model {list(PIXEL_TARGET_MODULES)}"
            ) from exc
    for p in unet.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    return config


class AdapterState(torch.nn.Module):
    """What an adapter checkpoint holds: the adapter's parameters and the per-step losses.

    The parameters are the very tensors inside the model (names with ``/`` for ``.``), so
    raysynth's checkpoint functions (:func:`~raysynth.train.checkpoint.write_checkpoint`,
    :meth:`~raysynth.train.session.TrainSession.restore`) save the adapter without the frozen
    base, and restoring writes straight into the model. The losses travel as PyTorch "extra
    state" (a float64 tensor) so a resumed run reports every step.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        trainable = {n.replace(".", "/"): p for n, p in model.named_parameters() if p.requires_grad}
        if not trainable:
            raise ValueError("the model has no trainable parameters: call add_lora first")
        self.adapter = torch.nn.ParameterDict(trainable)
        self.losses: list[float] = []

    def get_extra_state(self) -> torch.Tensor:
        return torch.tensor(self.losses, dtype=torch.float64)

    def set_extra_state(self, state: torch.Tensor) -> None:
        self.losses = [float(v) for v in state]


# 2. one worker's training data ----------------------------------------------------------------------


@dataclass
class LoraTask:
    """One worker's share of an adapter training, ready for the loss.

    ``unet`` holds a fresh adapter on its frozen base (``dtype``); ``x0 [N, C, h, w]`` are the
    clean samples on the training device — for ``text2image`` the latent means, with ``x0_std``
    the latent distribution's std (each draw is ``(mean + std ξ) · scale``); ``cond(idx, gen)``
    gives the UNet conditioning of the samples ``idx``; ``save(folder)`` writes the adapter files;
    ``frozen`` names every frozen module (the base stays bit-identical through training).
    """

    kind: str
    unet: torch.nn.Module
    scheduler: Any
    dtype: torch.dtype
    x0: torch.Tensor
    x0_std: torch.Tensor | None
    scale: float
    cond: Callable[[torch.Tensor, torch.Generator], dict[str, torch.Tensor]]
    save: Callable[[Path], None]
    frozen: dict[str, torch.nn.Module]
    info: dict[str, Any]


def shard(n: int, rank: int, world_size: int) -> np.ndarray:
    """Indices of this worker's images: every ``world_size``-th, equal shards (DDP stays in step)."""
    usable = n - n % world_size
    if usable == 0:
        raise DataError(
            f"{n} training image(s) cannot be shared by {world_size} workers; give at least "
            f"{world_size} images or use fewer train.num_workers"
        )
    return np.arange(rank, usable, world_size)


def _check_labels(n_images: int, labels: Sequence[int], num_classes: int) -> np.ndarray:
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    if n_images == 0:
        raise DataError("LoRA training needs at least one image")
    if len(y) != n_images:
        raise DataError(f"{n_images} training images but {len(y)} labels")
    if y.min() < 0 or y.max() >= num_classes:
        raise DataError(
            f"labels must lie in [0, {num_classes}) (one per class), got {y.min()}..{y.max()}"
        )
    return y


def _rgb_pixels(pngs: Sequence[bytes], size: int) -> torch.Tensor:
    """PNG bytes → ``[N, 3, size, size]`` in [-1, 1], resized (bicubic) and centre-cropped."""
    from PIL import Image, ImageOps

    from raysynth.data.images import decode_png

    out = np.empty((len(pngs), size, size, 3), dtype=np.uint8)
    for i, png in enumerate(pngs):
        img = Image.fromarray(decode_png(png, 3, name=f"LoRA training image {i}"))
        out[i] = np.asarray(ImageOps.fit(img, (size, size), Image.Resampling.BICUBIC))
    return torch.from_numpy(out).permute(0, 3, 1, 2).float() / 127.5 - 1


def build_sd_task(
    pipe: Any,
    images: Sequence[bytes],
    labels: Sequence[int],
    class_names: Sequence[str],
    context: str,
    spec: LoraTrainSpec,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
) -> LoraTask:
    """A Stable Diffusion pipeline (frozen) + a fresh adapter on its UNet + this worker's images.

    The frozen VAE (in float32) and text encoder run once here: each image's latent
    distribution and each class's prompt states are kept, then both encoders go back to the CPU.
    """
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import get_peft_model_state_dict

    y = _check_labels(len(images), labels, len(class_names))
    idx = shard(len(images), rank, world_size)
    unet, vae, text_encoder = pipe.unet, pipe.vae, pipe.text_encoder
    dtype = unet.dtype
    size = unet.config.sample_size
    size = int(size if isinstance(size, int) else size[0]) * pipe.vae_scale_factor
    prompts = [lora_prompt(context, c) for c in class_names]
    vae_dtype = vae.dtype
    vae.requires_grad_(False).to(device, torch.float32)  # float16 VAEs can overflow; small anyway
    text_encoder.requires_grad_(False).to(device)
    with torch.no_grad():
        pixels = _rgb_pixels([images[i] for i in idx], size)
        dists = [vae.encode(chunk.to(device)).latent_dist for chunk in pixels.split(8)]
        mean = torch.cat([d.mean for d in dists])
        std = torch.cat([d.std for d in dists])
        text = torch.cat([pipe.encode_prompt([p], device, 1, False)[0] for p in prompts])
    vae.to("cpu", vae_dtype)  # exact: the weights came from vae_dtype
    text_encoder.to("cpu")
    config = add_lora(unet, spec)
    unet.to(device).train()
    y_dev = torch.from_numpy(y[idx]).to(device)

    def cond(i: torch.Tensor, gen: torch.Generator) -> dict[str, torch.Tensor]:
        return {"encoder_hidden_states": text[y_dev[i.to(device)]].to(dtype)}

    def save(folder: Path) -> None:
        layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
        meta = {k: sorted(v) if isinstance(v, set) else v for k, v in config.to_dict().items()}
        StableDiffusionPipeline.save_lora_weights(
            folder, unet_lora_layers=layers, unet_lora_adapter_metadata=meta
        )

    return LoraTask(
        kind="text2image",
        unet=unet,
        scheduler=DDPMScheduler.from_config(pipe.scheduler.config),
        dtype=dtype,
        x0=mean,
        x0_std=std,
        scale=float(vae.config.scaling_factor),
        cond=cond,
        save=save,
        frozen={"unet": unet, "vae": vae, "text_encoder": text_encoder},
        info={"prompts": dict(zip(class_names, prompts)), "resolution": size},
    )


def pixel_arrays(images: np.ndarray | Sequence[bytes], in_channels: int, size: int) -> np.ndarray:
    """Training images for the pixel model as float32 ``[N, C, H, W]`` in [0, 1]: arrays are
    checked, PNG bytes decoded (and resized) to the model's channels and size."""
    if not isinstance(images, np.ndarray):
        from raysynth.data.images import to_tensor_array

        return to_tensor_array(list(images), in_channels, size)
    x = np.ascontiguousarray(images, dtype=np.float32)
    want = (in_channels, size, size)
    if x.ndim != 4 or x.shape[1:] != want:
        raise DataError(
            f"the pixel model needs images [N, {', '.join(map(str, want))}], got {x.shape}"
        )
    if not np.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise DataError("the pixel model needs finite pixel values in [0, 1]")
    return x


def build_pixel_task(
    model: Any,
    images: np.ndarray,
    labels: Sequence[int],
    spec: LoraTrainSpec,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
) -> LoraTask:
    """A loaded pixel model (:class:`~raysynth.generate.pixel.PixelModel`, frozen) + a fresh
    adapter + this worker's images (``[N, C, H, W]`` in [0, 1])."""
    from diffusers import DDPMScheduler
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    unet = model.unet
    dtype = unet.dtype
    null = unet.config.num_class_embeds - 1
    y = _check_labels(len(images), labels, null)
    idx = shard(len(images), rank, world_size)
    x0 = torch.from_numpy(np.asarray(images, dtype=np.float32)[idx]).to(device) * 2 - 1
    y_dev = torch.from_numpy(y[idx]).to(device)
    dropout = model.config.cond_dropout if model.config is not None else 0.0
    config = add_lora(unet, spec)
    unet.to(device).train()

    def cond(i: torch.Tensor, gen: torch.Generator) -> dict[str, torch.Tensor]:
        drop = (torch.rand(len(i), generator=gen) < dropout).to(device)
        return {"class_labels": torch.where(drop, null, y_dev[i.to(device)])}

    def save(folder: Path) -> None:
        weights = {
            k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(unet).items()
        }
        save_file(weights, str(folder / PIXEL_ADAPTER_WEIGHTS))
        config.save_pretrained(str(folder))  # adapter_config.json

    return LoraTask(
        kind="pixel",
        unet=unet,
        scheduler=DDPMScheduler.from_config(model.scheduler_config),
        dtype=dtype,
        x0=x0,
        x0_std=None,
        scale=1.0,
        cond=cond,
        save=save,
        frozen={"unet": unet},
        info={"cond_dropout": dropout, "class_names": model.class_names},
    )


# 3. the denoising loss and the optimizer step ----------------------------------------------------


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


def save_adapter(task: LoraTask, folder: str | Path, info: dict[str, Any]) -> Path:
    """Write the adapter files and ``air_lora.json`` (``info`` + the task's own) to ``folder``,
    atomically: a temporary folder renamed into place, replacing an older result."""
    out = Path(folder)
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


# 4. the Ray Train loop and the driver-side entry points ------------------------------------------


def _load_task(config: dict[str, Any], device: torch.device, rank: int, world: int) -> LoraTask:
    spec: LoraTrainSpec = config["spec"]
    if config["kind"] == "text2image":
        from raysynth.generate.loading import load_pipeline

        g = GeneratorConfig(kind="text2image", model=config["model"], dtype=spec.dtype)
        pipe = load_pipeline(g, torch.device("cpu"))
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


def _checkpoint_config(config: dict[str, Any]) -> dict[str, Any]:
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
    task = _load_task(config, session.device, session.rank, session.world_size)
    model = session.prepare(task.unet)
    state = AdapterState(task.unet)
    optimizer = lora_optimizer(state.parameters(), spec)
    start = session.restore(state, optimizer)
    ckpt_cfg = _checkpoint_config(config)
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


def _check_checkpoint(checkpoint_dir: Path, expected: dict[str, Any], steps: int) -> None:
    """A checkpoint left in ``checkpoint_dir`` must be of this very adapter and not past ``steps``."""
    model_json, state_json = checkpoint_dir / "model.json", checkpoint_dir / "state.json"
    if not (model_json.is_file() and state_json.is_file()):
        return
    found = json.loads(model_json.read_text())
    diff = sorted(k for k in expected if found.get(k) != expected[k])
    if diff:
        raise ConfigError(
            f"{checkpoint_dir} holds the checkpoint of another adapter (differs in "
            f"{', '.join(diff)}: {[found.get(k) for k in diff]} vs {[expected[k] for k in diff]}); "
            "delete it or pass another checkpoint folder"
        )
    done = json.loads(state_json.read_text())["epoch"] + 1
    if done > steps:
        raise ConfigError(
            f"{checkpoint_dir} holds a checkpoint after {done} steps but {KEY}.steps={steps}; "
            "raise steps or delete the checkpoint"
        )


def _run(
    config: dict[str, Any],
    scaling: ScalingConfig | None,
    checkpoint_dir: str | Path | None,
    storage_path: str | Path | None,
) -> LoraResult:
    from raysynth.train.session import run_trainer

    out = Path(config["out_dir"]).expanduser().resolve()
    ckpt = Path(checkpoint_dir) if checkpoint_dir else out.with_name(f"{out.name}-checkpoint")
    _check_checkpoint(ckpt, _checkpoint_config(config), config["spec"].steps)
    config = {**config, "out_dir": str(out), "checkpoint_dir": str(ckpt)}
    metrics = run_trainer(
        lora_train_loop,
        config,
        scaling or ScalingConfig(),
        f"air-lora-{out.name}",
        storage_path or out.parent,
    )
    return LoraResult(out, [float(v) for v in metrics["losses"]], int(metrics["world_size"]))


def train_sd_lora(
    model: str,
    images: Sequence[bytes],
    labels: Sequence[int],
    class_names: Sequence[str],
    context: str,
    out_dir: str | Path,
    spec: LoraTrainSpec = LoraTrainSpec(),
    *,
    scaling: ScalingConfig | None = None,
    checkpoint_dir: str | Path | None = None,
    storage_path: str | Path | None = None,
    threads: int = 0,
) -> LoraResult:
    """Train a LoRA adapter of the Stable Diffusion 1.x/2.x ``model`` (a local pipeline folder
    or a Hugging Face id in the local cache) on ``images`` (PNG bytes) with ``labels`` indexing
    ``class_names``; prompt ``"{context} {class}"``. Writes ``out_dir`` (the adapter, loadable
    with ``synthesis.generator.lora=[out_dir]``, and ``air_lora.json``).

    Runs as a Ray Train job on ``scaling`` (``num_workers=0``, the default: in this process).
    Checkpoints go to ``checkpoint_dir`` (default ``<out_dir>-checkpoint``) every
    ``spec.checkpoint_every`` steps and a rerun resumes from there; Ray Train's own files go under
    ``storage_path`` (default ``out_dir``'s parent). On a cluster ``out_dir`` and the checkpoint
    folder must be storage the rank-0 worker can write.
    """
    from raysynth.generate.loading import check_model_available

    info = check_model_available(GeneratorConfig(kind="text2image", model=model, dtype=spec.dtype))
    if "XL" in info.get("_class_name", ""):
        raise ConfigError(
            f"synthesis.generator.model={model!r} is an SDXL pipeline; AiR LoRA training drives "
            "Stable Diffusion 1.x/2.x (one text encoder, no added conditioning); pass such a model"
        )
    _check_labels(len(images), labels, len(class_names))
    local = Path(model).expanduser()
    config = {
        "kind": "text2image",
        "model": str(local.resolve()) if local.exists() else model,
        "images": list(images),
        "labels": [int(v) for v in labels],
        "class_names": list(class_names),
        "context": context,
        "spec": spec,
        "out_dir": out_dir,
        "threads": threads,
    }
    return _run(config, scaling, checkpoint_dir, storage_path)


def train_pixel_lora(
    model_folder: str | Path,
    images: np.ndarray | Sequence[bytes],
    labels: Sequence[int],
    out_dir: str | Path,
    spec: LoraTrainSpec = PIXEL_SPEC,
    *,
    scaling: ScalingConfig | None = None,
    checkpoint_dir: str | Path | None = None,
    storage_path: str | Path | None = None,
    threads: int = 0,
) -> LoraResult:
    """Train a LoRA adapter of the pixel model in ``model_folder`` (written by
    :func:`~raysynth.generate.pixel.save_pixel_model`) on ``images`` (float ``[N, C, H, W]`` in
    [0, 1], or PNG bytes) with class ``labels``. Writes ``out_dir`` (``adapter_config.json`` +
    ``adapter_model.safetensors``, loadable with ``synthesis.generator.lora=[out_dir]``, and
    ``air_lora.json``). The default spec targets :data:`PIXEL_TARGET_MODULES`; Ray Train,
    checkpoints and resume as in :func:`train_sd_lora`.
    """
    from raysynth.generate.pixel import UNET_DIR

    folder = Path(model_folder).expanduser().resolve()
    unet_json = folder / UNET_DIR / "config.json"
    if not unet_json.is_file():
        raise ConfigError(
            f"{folder} is not a pixel diffusion model ({unet_json} is missing); pass a folder "
            "written by raysynth.generate.save_pixel_model or load_or_train"
        )
    unet_cfg = json.loads(unet_json.read_text())
    size = unet_cfg["sample_size"]
    x = pixel_arrays(
        images, unet_cfg["in_channels"], int(size if isinstance(size, int) else size[0])
    )
    _check_labels(len(x), labels, unet_cfg["num_class_embeds"] - 1)
    config = {
        "kind": "pixel",
        "model": str(folder),
        "images": x,
        "labels": [int(v) for v in labels],
        "class_names": [],
        "context": "",
        "spec": spec,
        "out_dir": out_dir,
        "threads": threads,
    }
    return _run(config, scaling, checkpoint_dir, storage_path)


__all__ = [
    "ATTENTION_PROJECTIONS",
    "PIXEL_SPEC",
    "PIXEL_TARGET_MODULES",
    "RESULT_FILE",
    "AdapterState",
    "LoraResult",
    "LoraTask",
    "LoraTrainSpec",
    "add_lora",
    "build_pixel_task",
    "build_sd_task",
    "denoising_loss",
    "draw_batch",
    "fit_lora",
    "lora_prompt",
    "lora_step",
    "lora_train_loop",
    "pixel_arrays",
    "save_adapter",
    "train_pixel_lora",
    "train_sd_lora",
]
