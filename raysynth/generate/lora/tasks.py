"""One worker's share of an adapter training, ready for the loss (:class:`LoraTask`), built per
model kind: a Stable Diffusion pipeline (:func:`build_sd_task`: images → VAE latent distributions,
class prompts → text states) or the pixel model (:func:`build_pixel_task`: images in [-1, 1],
class labels with ``cond_dropout``); each worker takes every ``world_size``-th image
(:func:`shard`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raysynth.errors import DataError
from raysynth.generate.lora.model import add_lora
from raysynth.generate.lora.spec import LoraTrainSpec, lora_prompt
from raysynth.generate.pixel_generator import PIXEL_ADAPTER_WEIGHTS


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


def check_labels(n_images: int, labels: Sequence[int], num_classes: int) -> np.ndarray:
    """``labels`` as int64 ``[N]``: one per image, each a class index in ``[0, num_classes)``."""
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


def _encode_frozen(
    pipe: Any, pngs: Sequence[bytes], size: int, prompts: Sequence[str], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(mean, std, text)``: each image's latent distribution under the frozen VAE (run in
    float32) and each prompt's text-encoder states; both encoders go back to the CPU after."""
    vae, text_encoder = pipe.vae, pipe.text_encoder
    vae_dtype = vae.dtype
    vae.requires_grad_(False).to(device, torch.float32)  # float16 VAEs can overflow; small anyway
    text_encoder.requires_grad_(False).to(device)
    with torch.no_grad():
        pixels = _rgb_pixels(pngs, size)
        dists = [vae.encode(chunk.to(device)).latent_dist for chunk in pixels.split(8)]
        mean = torch.cat([d.mean for d in dists])
        std = torch.cat([d.std for d in dists])
        text = torch.cat([pipe.encode_prompt([p], device, 1, False)[0] for p in prompts])
    vae.to("cpu", vae_dtype)  # exact: the weights came from vae_dtype
    text_encoder.to("cpu")
    return mean, std, text


def _sd_saver(unet: torch.nn.Module, config: Any) -> Callable[[Path], None]:
    """``save(folder)`` of a Stable Diffusion adapter: a ``save_lora_weights`` folder."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import get_peft_model_state_dict

    def save(folder: Path) -> None:
        layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
        meta = {k: sorted(v) if isinstance(v, set) else v for k, v in config.to_dict().items()}
        StableDiffusionPipeline.save_lora_weights(
            folder, unet_lora_layers=layers, unet_lora_adapter_metadata=meta
        )

    return save


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
    from diffusers import DDPMScheduler

    y = check_labels(len(images), labels, len(class_names))
    idx = shard(len(images), rank, world_size)
    unet = pipe.unet
    dtype = unet.dtype
    size = unet.config.sample_size
    size = int(size if isinstance(size, int) else size[0]) * pipe.vae_scale_factor
    prompts = [lora_prompt(context, c) for c in class_names]
    mean, std, text = _encode_frozen(pipe, [images[i] for i in idx], size, prompts, device)
    config = add_lora(unet, spec)
    unet.to(device).train()
    y_dev = torch.from_numpy(y[idx]).to(device)

    def cond(i: torch.Tensor, gen: torch.Generator) -> dict[str, torch.Tensor]:
        return {"encoder_hidden_states": text[y_dev[i.to(device)]].to(dtype)}

    return LoraTask(
        kind="text2image",
        unet=unet,
        scheduler=DDPMScheduler.from_config(pipe.scheduler.config),
        dtype=dtype,
        x0=mean,
        x0_std=std,
        scale=float(pipe.vae.config.scaling_factor),
        cond=cond,
        save=_sd_saver(unet, config),
        frozen={"unet": unet, "vae": pipe.vae, "text_encoder": pipe.text_encoder},
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
    y = check_labels(len(images), labels, null)
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


__all__ = [
    "LoraTask",
    "build_pixel_task",
    "build_sd_task",
    "check_labels",
    "pixel_arrays",
    "shard",
]
