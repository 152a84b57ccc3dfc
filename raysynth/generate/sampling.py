"""DDIM sampling of the pixel model with classifier-free, negative-class and feedback guidance.

Per step, one UNet call on the doubled batch ``[x_t; x_t]`` with labels ``[c; u]`` gives the
conditional and the "unconditional" prediction, combined as ``ε = ε_u + γ (ε_c − ε_u)``; ``u`` is the
null class (classifier-free guidance) or, where a negative label is given, that class — the pixel
model's analogue of a negative prompt (DiffCoRe-Mix's ``(1+γ') ε(P_c) − γ' ε(P_n)`` is this with
``γ = 1+γ'``). Feedback guidance (:mod:`raysynth.generate.guidance`) then moves ``x_t`` before the
scheduler step. ``γ = 1`` without negative labels skips the unconditional half.

Every image's randomness (its initial noise, and its per-step noise when ``eta > 0``) comes from its
own ``torch.Generator().manual_seed(seed)``, so an image does not depend on the batch it is in.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from diffusers import DDIMScheduler, UNet2DModel

from raysynth.errors import ConfigError
from raysynth.generate.classifier_free import guided_output
from raysynth.generate.guidance import FeedbackGuidance


def _check_inputs(
    unet: UNet2DModel,
    labels: Sequence[int],
    seeds: Sequence[int],
    negative_labels: Sequence[int | None] | None,
    num_steps: int,
) -> int:
    """Validate and return the number of real classes (the null class is the last embedding)."""
    num_embeds = unet.config.num_class_embeds
    if not num_embeds:
        raise ConfigError("sample_pixel needs a class-conditional UNet2DModel (num_class_embeds)")
    num_classes = num_embeds - 1
    if len(labels) != len(seeds):
        raise ConfigError(f"{len(labels)} labels but {len(seeds)} seeds; give one seed per image")
    if negative_labels is not None and len(negative_labels) != len(labels):
        raise ConfigError(f"{len(negative_labels)} negative labels for {len(labels)} images")
    for name, values in (("labels", labels), ("negative_labels", negative_labels or ())):
        bad = [v for v in values if v is not None and not 0 <= int(v) < num_classes]
        if bad:
            raise ConfigError(f"{name} {bad[:5]} outside [0, {num_classes}) (the model's classes)")
    if num_steps < 1:
        raise ConfigError(f"num_steps must be >= 1, got {num_steps}")
    return num_classes


def _initial_noise(
    generators: list[torch.Generator], shape: tuple[int, ...], device: torch.device
) -> torch.Tensor:
    return torch.stack([torch.randn(shape, generator=g) for g in generators]).to(device)


def sample_pixel(
    unet: UNet2DModel,
    scheduler_config: Mapping[str, Any],
    labels: Sequence[int],
    seeds: Sequence[int],
    num_steps: int = 30,
    guidance_scale: float = 2.0,
    negative_labels: Sequence[int | None] | None = None,
    feedback: FeedbackGuidance | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    eta: float = 0.0,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Sample one image per (label, seed) → ``(images uint8 [B, H, W, C], criterion [B] or None)``.

    ``guidance_scale`` γ weighs the class against the null class (or ``negative_labels[i]`` when
    not None). ``feedback`` adds feedback guidance; the returned criterion is then its value on
    each final image (before quantisation to uint8), otherwise None. ``device``/``dtype`` default to
    the UNet's; the scheduler arithmetic stays in float32.
    """
    # 1. check inputs, resolve device and dtype
    num_classes = _check_inputs(unet, labels, seeds, negative_labels, num_steps)
    if len(labels) == 0:
        c, s = unet.config.in_channels, _size(unet)
        return np.zeros((0, s, s, c), dtype=np.uint8), (None if feedback is None else np.zeros(0))
    device = torch.device(device) if device is not None else unet.device
    dtype = dtype or unet.dtype

    # 2. scheduler, labels, initial noise (one generator per image)
    scheduler = DDIMScheduler.from_config(dict(scheduler_config))
    scheduler.set_timesteps(num_steps)
    y = torch.tensor([int(v) for v in labels], device=device)
    use_uncond = guidance_scale != 1 or negative_labels is not None
    class_labels = _class_labels(y, num_classes, negative_labels, use_uncond)
    generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
    shape = (unet.config.in_channels, _size(unet), _size(unet))
    x = _initial_noise(generators, shape, device) * scheduler.init_noise_sigma

    def model(inp: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return unet(inp.to(dtype), t, class_labels=labels).sample.float()

    def guided(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        run = functools.partial(model, t=t, labels=class_labels)
        return guided_output(run, x_t, guidance_scale, use_uncond, uncond_first=False)

    # 3. denoising loop (guided model, conditional branch alone), criterion on the final images
    step_noise = (lambda: _initial_noise(generators, shape, device)) if eta > 0 else None
    x = _denoise(scheduler, x, (guided, functools.partial(model, labels=y)), y, feedback,
                 step_noise, eta)
    return _to_images(x, y, feedback)


def _class_labels(
    y: torch.Tensor,
    num_classes: int,
    negative_labels: Sequence[int | None] | None,
    use_uncond: bool,
) -> torch.Tensor:
    """``[y; u]`` (``u`` the negative label, or the null class where there is none) with the
    unconditional half, ``y`` without."""
    uncond = torch.tensor(
        [num_classes if n is None else int(n) for n in (negative_labels or [None] * len(y))],
        device=y.device,
    )
    return torch.cat([y, uncond]) if use_uncond else y


def _denoise(
    scheduler: DDIMScheduler,
    x: torch.Tensor,
    models: tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor], ...],
    y: torch.Tensor,
    feedback: FeedbackGuidance | None,
    step_noise: Callable[[], torch.Tensor] | None,
    eta: float,
) -> torch.Tensor:
    """The DDIM loop from ``x`` (no_grad, not inference_mode: feedback guidance needs autograd);
    ``models``: the guided model and its conditional branch alone, each ``(x_t, t)``;
    ``step_noise()`` draws each step's variance noise when ``eta > 0``."""
    guided, conditional = models
    prediction_type = scheduler.config.prediction_type
    with torch.no_grad():
        for i, t in enumerate(scheduler.timesteps):
            model_output = guided(x, t)
            if feedback is not None:
                x, _ = feedback.apply(
                    i,
                    x,
                    model_output,
                    t,
                    scheduler.alphas_cumprod,
                    prediction_type,
                    y,
                    model_fn=lambda z, t=t: guided(z, t),
                    cond_fn=lambda z, t=t: conditional(z, t),
                )
            noise = step_noise() if step_noise is not None else None
            x = scheduler.step(model_output, t, x, eta=eta, variance_noise=noise).prev_sample
    return x


def _to_images(
    x: torch.Tensor, y: torch.Tensor, feedback: FeedbackGuidance | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Final samples → ``(uint8 [B, H, W, C], criterion [B] or None)``."""
    criterion = None
    if feedback is not None:
        with torch.no_grad():
            criterion = feedback.evaluate(x.clamp(-1, 1), y).float().cpu().numpy()
    images = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return images.permute(0, 2, 3, 1).cpu().numpy(), criterion


def _size(unet: UNet2DModel) -> int:
    size = unet.config.sample_size
    return int(size if isinstance(size, int) else size[0])
