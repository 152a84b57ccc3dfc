"""The ``digits`` preset's generator model: a small class-conditional pixel-space diffusion model —
its config, UNet and schedulers, and its model folder (save / load).

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

Training and the cache of trained folders are :mod:`raysynth.generate.pixel_training`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from raysynth.errors import ConfigError, RunDirError

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


# 2. save / load through from_pretrained -----------------------------------------------------------


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
