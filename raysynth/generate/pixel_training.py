"""Training of the ``digits`` preset's pixel diffusion model (:mod:`raysynth.generate.pixel`), and
the cache that trains it only once per training data and config.

Training is the usual denoising loss with the label replaced by the null class with probability
``cond_dropout`` (so the same network gives classifier-free guidance's unconditional prediction),
seeded by the config. :func:`load_or_train` caches the saved model under
``<cache_root>/<cache_key>/`` (the run directory's ``generator/``), keyed by the training data
bytes and the config.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel

from raysynth.devices import resolve_device, threads_for, torch_threads
from raysynth.errors import DataError, TrainingError
from raysynth.generate.pixel import (
    FORMAT,
    META_FILE,
    SCHEDULER_DIR,
    UNET_DIR,
    PixelDiffusionConfig,
    build_unet,
    sampling_scheduler_config,
    save_pixel_model,
    train_scheduler,
)
from raysynth.seeding import stable_hash, stable_seed
from raysynth.storage import AnyPath, RemotePath, as_path, upload_dir

# 1. training ---------------------------------------------------------------------------------------


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
    threads: int = 0,
) -> tuple[UNet2DModel, dict[str, Any]]:
    """Train the class-conditional model on ``x [N, C, H, W]`` in [0, 1] with labels ``y [N]``.

    The usual denoising loss ``‖f(x_t, t, c) − target‖²`` with the target per ``prediction_type``
    (ε, v = √ᾱ ε − √(1−ᾱ) x0, or x0), data scaled to [-1, 1], the label replaced by the null class
    with probability ``cond_dropout``. Batches, noise, timesteps and dropout come from one
    generator seeded by ``cfg.seed``, and so does the initialisation (without touching the global
    RNG). ``on_step(step, loss)`` is called after every optimiser step. Returns the model (EMA
    weights when ``ema_decay`` > 0, eval mode, no grad) and the DDIM scheduler config for sampling.
    It trains on ``threads`` torch threads (0: every core of this process), restored afterwards.
    """
    with torch_threads(threads_for(threads)):
        return _train(x, y, cfg, on_step, device)


def _train(
    x: np.ndarray,
    y: np.ndarray,
    cfg: PixelDiffusionConfig,
    on_step: Callable[[int, float], None] | None,
    device: str | torch.device | None,
) -> tuple[UNet2DModel, dict[str, Any]]:
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
    for step in range(cfg.train_steps):
        loss = _batch_loss(unet, sched, data, labels, cfg, gen)
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


def _batch_loss(
    unet: UNet2DModel,
    sched: DDPMScheduler,
    data: torch.Tensor,
    labels: torch.Tensor,
    cfg: PixelDiffusionConfig,
    gen: torch.Generator,
) -> torch.Tensor:
    """The denoising loss of one batch: images, noise, timesteps and label dropout drawn from
    ``gen`` in that order."""
    b, dev = cfg.batch_size, data.device
    idx = torch.randint(len(data), (b,), generator=gen).to(dev)
    noise = torch.randn((b, *data.shape[1:]), generator=gen).to(dev)
    t = torch.randint(cfg.num_train_timesteps, (b,), generator=gen).to(dev)
    drop = (torch.rand(b, generator=gen) < cfg.cond_dropout).to(dev)
    x0, cls = data[idx], torch.where(drop, cfg.null_class, labels[idx])
    pred = unet(sched.add_noise(x0, noise, t), t, class_labels=cls).sample
    return F.mse_loss(pred.float(), _target(sched, x0, noise, t, cfg.prediction_type).float())


@torch.no_grad()
def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    ema_p = list(ema.parameters())
    torch._foreach_lerp_(ema_p, [p.detach() for p in model.parameters()], 1.0 - decay)
    for eb, b in zip(ema.buffers(), model.buffers()):
        eb.copy_(b)



# 2. cache ------------------------------------------------------------------------------------------


def cache_key(x: np.ndarray, y: np.ndarray, cfg: PixelDiffusionConfig) -> str:
    """A stable key of the training data bytes (float32 images, int64 labels) and the config."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    y = np.ascontiguousarray(y, dtype=np.int64).reshape(-1)
    digest_x = hashlib.sha256(x.tobytes()).hexdigest()
    digest_y = hashlib.sha256(y.tobytes()).hexdigest()
    cfg_json = json.dumps(cfg.to_dict(), sort_keys=True)
    return stable_hash(FORMAT, x.shape, digest_x, digest_y, cfg_json)[:24]


def _is_complete(folder: AnyPath, key: str) -> bool:
    meta = folder / META_FILE
    if not (meta.is_file() and (folder / UNET_DIR).is_dir() and (folder / SCHEDULER_DIR).is_dir()):
        return False
    try:
        return json.loads(meta.read_text()).get("cache_key") == key
    except (OSError, ValueError):
        return False


def load_or_train(
    cache_root: str | AnyPath,
    x: np.ndarray,
    y: np.ndarray,
    cfg: PixelDiffusionConfig,
    class_names: Sequence[str] | None = None,
    on_step: Callable[[int, float], None] | None = None,
    device: str | torch.device | None = None,
    threads: int = 0,
) -> AnyPath:
    """The model folder ``<cache_root>/<cache_key(x, y, cfg)>``, trained and saved only if absent.

    Saving goes to a temporary folder renamed into place, so a killed run leaves no half-written
    model under the key; a leftover incomplete folder is replaced.
    """
    root = as_path(cache_root)
    key = cache_key(x, y, cfg)
    folder = root / key
    if _is_complete(folder, key):
        return folder
    unet, sched_cfg = train_pixel_model(x, y, cfg, on_step=on_step, device=device,
                                         threads=threads)
    if isinstance(root, RemotePath):  # the run directory on an object store: meta.json last
        with tempfile.TemporaryDirectory() as tmp:
            save_pixel_model(Path(tmp), unet, sched_cfg, cfg, class_names, cache_key=key)
            upload_dir(Path(tmp), folder, last=META_FILE)
        return folder
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
