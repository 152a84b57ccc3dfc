"""The ``digits`` preset's generator: a small class-conditional pixel-space diffusion model.

A diffusers ``UNet2DModel`` with one class embedding per class plus a *null* class (the last id)
that training substitutes for the label with probability ``cond_dropout``, so the same network
gives the unconditional prediction classifier-free guidance needs. Training uses a ``DDPMScheduler``
for the forward process; sampling (:mod:`raysynth.generate.sampling`) uses a ``DDIMScheduler``
built from the same schedule, so ``prediction_type`` travels with the saved scheduler config.

UNet layout for 8×8 images: ``len(block_out_channels)`` plain ResNet down blocks (no attention at
full resolution: pointless at 8×8 and slow), each but the last halving the size, so the default
``(32, 64)`` works at 8×8 → 4×4 and equally at 16×16; self-attention only in the mid block. No
padding to 16×16 is needed.

A trained model is a folder that the library's own ``from_pretrained`` reads back::

    <folder>/unet/            UNet2DModel.save_pretrained (config.json + safetensors)
    <folder>/scheduler/       DDIMScheduler.save_pretrained (scheduler_config.json)
    <folder>/raysynth.json    PixelDiffusionConfig, class names, cache key

:func:`load_or_train` caches it under ``<cache_root>/<cache_key>/`` (the run directory's
``generator/``), keyed by the training data bytes and the config.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from raysynth.devices import resolve_device
from raysynth.errors import ConfigError, DataError, RunDirError, TrainingError
from raysynth.seeding import stable_hash, stable_seed

UNET_DIR = "unet"
SCHEDULER_DIR = "scheduler"
META_FILE = "raysynth.json"
FORMAT = "raysynth-pixel-diffusion-v1"
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


@dataclass(frozen=True)
class PixelDiffusionConfig:
    """Architecture, schedule and training settings of the pixel diffusion model.

    ``num_classes`` real classes get embedding ids ``0 .. num_classes-1``; id ``num_classes`` is the
    null class. ``ema_decay`` 0 disables the exponential moving average of the weights (which
    otherwise is what gets saved: it samples markedly better after short trainings).
    """

    image_size: int = 8
    in_channels: int = 1
    num_classes: int = 10
    block_out_channels: tuple[int, ...] = (32, 64)
    layers_per_block: int = 2
    norm_num_groups: int = 8
    mid_attention: bool = True
    train_steps: int = 1500
    batch_size: int = 64
    lr: float = 1e-3
    ema_decay: float = 0.995
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    prediction_type: str = "epsilon"
    cond_dropout: float = 0.15
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "block_out_channels", tuple(int(c) for c in self.block_out_channels)
        )
        chans = self.block_out_channels
        _check(self.image_size >= 1, "image_size", "must be >= 1")
        _check(self.in_channels in (1, 3), "in_channels", "must be 1 or 3")
        _check(self.num_classes >= 1, "num_classes", "must be >= 1")
        _check(
            len(chans) >= 1 and min(chans) >= 1, "block_out_channels", "needs >= 1 positive entry"
        )
        _check(
            self.image_size % 2 ** (len(chans) - 1) == 0,
            "image_size",
            f"must be divisible by 2**(len(block_out_channels)-1) = {2 ** (len(chans) - 1)}",
        )
        _check(
            all(c % self.norm_num_groups == 0 for c in chans),
            "norm_num_groups",
            f"must divide every entry of block_out_channels {chans}",
        )
        _check(self.layers_per_block >= 1, "layers_per_block", "must be >= 1")
        _check(self.train_steps >= 0, "train_steps", "must be >= 0")
        _check(self.batch_size >= 1, "batch_size", "must be >= 1")
        _check(self.lr > 0, "lr", "must be > 0")
        _check(0 <= self.ema_decay < 1, "ema_decay", "must lie in [0, 1)")
        _check(self.num_train_timesteps >= 2, "num_train_timesteps", "must be >= 2")
        _check(self.beta_schedule in BETA_SCHEDULES, "beta_schedule", f"one of {BETA_SCHEDULES}")
        _check(
            self.prediction_type in PREDICTION_TYPES,
            "prediction_type",
            f"one of {PREDICTION_TYPES}",
        )
        _check(0 <= self.cond_dropout < 1, "cond_dropout", "must lie in [0, 1)")

    @property
    def null_class(self) -> int:
        """The class-embedding id of "no class" (classifier-free guidance's unconditional branch)."""
        return self.num_classes

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["block_out_channels"] = list(self.block_out_channels)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PixelDiffusionConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown pixel diffusion keys {unknown}; valid: {sorted(known)}")
        return cls(**d)


def _check(ok: bool, key: str, what: str) -> None:
    if not ok:
        raise ConfigError(f"pixel diffusion {key}: {what}")


class PixelModel(NamedTuple):
    """What :func:`load_pixel_model` returns (unpack the first two for :func:`sample_pixel`)."""

    unet: UNet2DModel
    scheduler_config: dict[str, Any]
    config: PixelDiffusionConfig | None
    class_names: list[str] | None


# 1. model and schedulers from the config ----------------------------------------------------------


def build_unet(cfg: PixelDiffusionConfig) -> UNet2DModel:
    """A freshly initialised class-conditional ``UNet2DModel`` (``num_classes + 1`` embeddings)."""
    n = len(cfg.block_out_channels)
    return UNet2DModel(
        sample_size=cfg.image_size,
        in_channels=cfg.in_channels,
        out_channels=cfg.in_channels,
        block_out_channels=cfg.block_out_channels,
        layers_per_block=cfg.layers_per_block,
        down_block_types=("DownBlock2D",) * n,
        up_block_types=("UpBlock2D",) * n,
        norm_num_groups=cfg.norm_num_groups,
        add_attention=cfg.mid_attention,
        attention_head_dim=min(32, cfg.block_out_channels[-1]),
        num_class_embeds=cfg.num_classes + 1,
    )


def _schedule_kwargs(cfg: PixelDiffusionConfig) -> dict[str, Any]:
    return {
        "num_train_timesteps": cfg.num_train_timesteps,
        "beta_schedule": cfg.beta_schedule,
        "prediction_type": cfg.prediction_type,
        "clip_sample": True,  # data live in [-1, 1]
    }


def train_scheduler(cfg: PixelDiffusionConfig) -> DDPMScheduler:
    return DDPMScheduler(**_schedule_kwargs(cfg))


def sampling_scheduler_config(cfg: PixelDiffusionConfig) -> dict[str, Any]:
    """The DDIM config sampling builds its scheduler from (same betas and prediction type).

    ``timestep_spacing="trailing"`` makes the first of few steps start from pure noise (t = T-1).
    """
    sched = DDIMScheduler(**_schedule_kwargs(cfg), timestep_spacing="trailing")
    return dict(sched.config)


# 2. training ---------------------------------------------------------------------------------------


def _check_data(x: np.ndarray, y: np.ndarray, cfg: PixelDiffusionConfig) -> tuple[np.ndarray, ...]:
    x = np.ascontiguousarray(x, dtype=np.float32)
    y = np.ascontiguousarray(y, dtype=np.int64).reshape(-1)
    want = (cfg.in_channels, cfg.image_size, cfg.image_size)
    if x.ndim != 4 or x.shape[1:] != want or len(x) == 0:
        raise DataError(
            f"pixel diffusion needs images [N, {', '.join(map(str, want))}], got {x.shape}"
        )
    if len(y) != len(x):
        raise DataError(f"{len(x)} images but {len(y)} labels")
    if not np.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise DataError("pixel diffusion needs finite pixel values in [0, 1]")
    if y.min() < 0 or y.max() >= cfg.num_classes:
        raise DataError(f"labels must lie in [0, {cfg.num_classes}) (config num_classes)")
    return x, y


def _target(sched: DDPMScheduler, x0, noise, t, prediction_type: str) -> torch.Tensor:
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return sched.get_velocity(x0, noise, t)
    return x0


def train_pixel_model(
    x: np.ndarray,
    y: np.ndarray,
    cfg: PixelDiffusionConfig,
    on_step: Callable[[int, float], None] | None = None,
    device: str | torch.device | None = None,
) -> tuple[UNet2DModel, dict[str, Any]]:
    """Train the class-conditional model on ``x [N, C, H, W]`` in [0, 1] with labels ``y [N]``.

    The usual denoising loss ``‖f(x_t, t, c) − target‖²`` with the target per ``prediction_type``
    (ε, v = √ᾱ ε − √(1−ᾱ) x0, or x0), data scaled to [-1, 1], the label replaced by the null class
    with probability ``cond_dropout``. Batches, noise, timesteps and dropout come from one
    generator seeded by ``cfg.seed``, and so does the initialisation (without touching the global
    RNG). ``on_step(step, loss)`` is called after every optimiser step. Returns the model (EMA
    weights when ``ema_decay`` > 0, eval mode, no grad) and the DDIM scheduler config for sampling.
    """
    x, y = _check_data(x, y, cfg)
    dev = resolve_device(device or "auto")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stable_seed("pixel-init", cfg.seed))
        unet = build_unet(cfg)
    unet.to(dev).train()
    ema = copy.deepcopy(unet).requires_grad_(False) if cfg.ema_decay > 0 else None
    sched = train_scheduler(cfg)
    sched.alphas_cumprod = sched.alphas_cumprod.to(dev)
    gen = torch.Generator().manual_seed(stable_seed("pixel-train", cfg.seed))
    data = torch.from_numpy(x).to(dev) * 2 - 1
    labels = torch.from_numpy(y).to(dev)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=0.0)
    warmup = max(1, min(100, cfg.train_steps // 10))
    lr_at = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
    b = cfg.batch_size
    for step in range(cfg.train_steps):
        idx = torch.randint(len(data), (b,), generator=gen).to(dev)
        noise = torch.randn((b, *data.shape[1:]), generator=gen).to(dev)
        t = torch.randint(cfg.num_train_timesteps, (b,), generator=gen).to(dev)
        drop = (torch.rand(b, generator=gen) < cfg.cond_dropout).to(dev)
        x0, cls = data[idx], torch.where(drop, cfg.null_class, labels[idx])
        pred = unet(sched.add_noise(x0, noise, t), t, class_labels=cls).sample
        loss = F.mse_loss(pred.float(), _target(sched, x0, noise, t, cfg.prediction_type).float())
        if not torch.isfinite(loss):
            raise TrainingError(f"pixel diffusion loss is {float(loss)} at step {step}; lower lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        lr_at.step()
        if ema is not None:
            _ema_update(ema, unet, min(cfg.ema_decay, (1 + step) / (10 + step)))
        if on_step is not None:
            on_step(step, float(loss.detach()))
    model = ema if ema is not None else unet
    model.eval().requires_grad_(False)
    return model, sampling_scheduler_config(cfg)


@torch.no_grad()
def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    ema_p = list(ema.parameters())
    torch._foreach_lerp_(ema_p, [p.detach() for p in model.parameters()], 1.0 - decay)
    for eb, b in zip(ema.buffers(), model.buffers()):
        eb.copy_(b)


# 3. save / load through from_pretrained -----------------------------------------------------------


def save_pixel_model(
    folder: str | Path,
    unet: UNet2DModel,
    scheduler: SchedulerMixin | Mapping[str, Any],
    cfg: PixelDiffusionConfig | None = None,
    class_names: Sequence[str] | None = None,
    cache_key: str | None = None,
) -> Path:
    """Write ``unet/``, ``scheduler/`` (always a DDIM scheduler) and ``raysynth.json`` to ``folder``.

    ``raysynth.json`` is written last, so its presence marks a complete folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not isinstance(scheduler, SchedulerMixin):
        scheduler = DDIMScheduler.from_config(dict(scheduler))
    elif not isinstance(scheduler, DDIMScheduler):
        scheduler = DDIMScheduler.from_config(scheduler.config)
    unet.save_pretrained(folder / UNET_DIR, safe_serialization=True)
    scheduler.save_pretrained(folder / SCHEDULER_DIR)
    meta = {
        "format": FORMAT,
        "config": cfg.to_dict() if cfg is not None else None,
        "class_names": list(class_names) if class_names is not None else None,
        "cache_key": cache_key,
    }
    (folder / META_FILE).write_text(json.dumps(meta, indent=2))
    return folder


def load_pixel_model(
    folder: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> PixelModel:
    """Load a folder written by :func:`save_pixel_model` with diffusers' ``from_pretrained``."""
    folder = Path(folder)
    for part in (UNET_DIR, SCHEDULER_DIR):
        if not (folder / part).is_dir():
            raise RunDirError(
                f"no pixel diffusion model at {folder}: {folder / part} is missing (a model folder "
                f"holds {UNET_DIR}/, {SCHEDULER_DIR}/ and {META_FILE}); train one with "
                "raysynth.generate.load_or_train or point the generator path at such a folder"
            )
    unet = UNet2DModel.from_pretrained(folder / UNET_DIR, torch_dtype=dtype)
    unet.to(device).eval().requires_grad_(False)
    scheduler = DDIMScheduler.from_pretrained(folder / SCHEDULER_DIR)
    cfg, names = None, None
    if (folder / META_FILE).is_file():
        meta = json.loads((folder / META_FILE).read_text())
        cfg = PixelDiffusionConfig.from_dict(meta["config"]) if meta.get("config") else None
        names = meta.get("class_names")
    return PixelModel(unet, dict(scheduler.config), cfg, names)


# 4. cache ------------------------------------------------------------------------------------------


def cache_key(x: np.ndarray, y: np.ndarray, cfg: PixelDiffusionConfig) -> str:
    """A stable key of the training data bytes (float32 images, int64 labels) and the config."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    y = np.ascontiguousarray(y, dtype=np.int64).reshape(-1)
    digest_x = hashlib.sha256(x.tobytes()).hexdigest()
    digest_y = hashlib.sha256(y.tobytes()).hexdigest()
    cfg_json = json.dumps(cfg.to_dict(), sort_keys=True)
    return stable_hash(FORMAT, x.shape, digest_x, digest_y, cfg_json)[:24]


def _is_complete(folder: Path, key: str) -> bool:
    meta = folder / META_FILE
    if not (meta.is_file() and (folder / UNET_DIR).is_dir() and (folder / SCHEDULER_DIR).is_dir()):
        return False
    try:
        return json.loads(meta.read_text()).get("cache_key") == key
    except (OSError, ValueError):
        return False


def load_or_train(
    cache_root: str | Path,
    x: np.ndarray,
    y: np.ndarray,
    cfg: PixelDiffusionConfig,
    class_names: Sequence[str] | None = None,
    on_step: Callable[[int, float], None] | None = None,
    device: str | torch.device | None = None,
) -> Path:
    """The model folder ``<cache_root>/<cache_key(x, y, cfg)>``, trained and saved only if absent.

    Saving goes to a temporary folder renamed into place, so a killed run leaves no half-written
    model under the key; a leftover incomplete folder is replaced.
    """
    root = Path(cache_root)
    key = cache_key(x, y, cfg)
    folder = root / key
    if _is_complete(folder, key):
        return folder
    unet, sched_cfg = train_pixel_model(x, y, cfg, on_step=on_step, device=device)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
    try:
        save_pixel_model(tmp, unet, sched_cfg, cfg, class_names, cache_key=key)
        if folder.exists() and not _is_complete(folder, key):
            shutil.rmtree(folder)
        try:
            os.replace(tmp, folder)
        except OSError:
            if not _is_complete(folder, key):  # not a concurrent writer's finished copy
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
