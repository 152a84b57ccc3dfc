"""The latent diffusion sampler shared by Stable Diffusion 1.x/2.x, SDXL (``text2image``) and
Stable unCLIP 2.1 (``unclip``) (DESIGN §1, METHODS §2–3).

All run ONE denoising loop (:meth:`LatentSampler.denoise`) on the pipeline's components rather
than ``pipe(...)``, so feedback guidance can act between the UNet call and the scheduler step.
What differs between pipeline families is only what conditions the UNet besides ``x_t`` and ``t``
— a :class:`~raysynth.generate.latent_conditioning.Conditioning`.

The loop:

- classifier-free guidance ``ε̃ = ε(P_n) + s (ε(P_c) − ε(P_n))`` with ``s = guidance_scale`` and the
  row's negative prompt ``P_n`` (the empty prompt when there is none) as the unconditional branch.
  DiffCoRe-Mix's context guidance ``(1+γ) ε(P_c) − γ ε(P_n)`` is exactly this with ``s = 1+γ``
  (METHODS §3). ``s = 1`` skips the unconditional half (it would cancel);
- feedback guidance (METHODS §2): the criterion is evaluated on the VAE decode of the predicted
  clean latents ``x̂0`` and its gradient flows back through the VAE to the latents;
  ``prediction_type`` (epsilon / v_prediction) is the model's own, read from its scheduler config;
- per-row randomness: every row has its own ``torch.Generator`` seeded with the row's seed (initial
  latents, then unCLIP's dropout draw and embedding noise, then any ancestral step noise), and text
  and image embeddings are computed one prompt / one image at a time and cached, so an image is
  byte-identical whatever batch it is in.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from typing import Any

import torch

from raysynth import columns as col
from raysynth.errors import ConfigError
from raysynth.generate.classifier_free import conditional_half, guided_output
from raysynth.generate.feedback import build_feedback
from raysynth.generate.generators import DTYPES, GeneratedImage, GeneratorSpec, resolve_device
from raysynth.generate.latent_conditioning import Conditioning, TextConditioner
from raysynth.generate.latent_output import LatentOutput, upcast_sdxl_vae
from raysynth.generate.loading import KEY, check_scheduler, load_pipeline

# unCLIP's image conditioning of a batch: rows and their generators → class_labels [B, E]
ImageConditioning = Callable[[Sequence[dict[str, Any]], list[torch.Generator]], torch.Tensor]


def _row_generators(rows: Sequence[dict[str, Any]]) -> list[torch.Generator]:
    return [torch.Generator(device="cpu").manual_seed(int(r[col.SEED])) for r in rows]


def _prompts(rows: Sequence[dict[str, Any]]) -> tuple[list[str], list[str]]:
    return (
        [str(r.get(col.PROMPT) or "") for r in rows],
        [str(r.get(col.NEGATIVE_PROMPT) or "") for r in rows],
    )


def _labels(rows: Sequence[dict[str, Any]], device: torch.device) -> torch.Tensor:
    return torch.tensor([int(r[col.LABEL]) for r in rows], device=device, dtype=torch.long)


def _guidance_frame(scheduler: Any, t: torch.Tensor) -> tuple[float, torch.Tensor]:
    """``(c, ᾱ_t)`` with ``c · latents`` the DDPM-frame ``x_t`` in which x̂0 is defined.

    Euler-type schedulers keep ``latents = x0 + σ ε`` and scale the model input by
    ``c = 1/√(σ²+1) = √ᾱ``; the others keep ``x_t`` itself (``c = 1``).
    """
    from diffusers import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler

    if isinstance(scheduler, (EulerDiscreteScheduler, EulerAncestralDiscreteScheduler)):
        sigma = scheduler.sigmas[scheduler.step_index].float()
        abar = 1.0 / (sigma**2 + 1.0)
        return float(abar.sqrt()), abar
    return 1.0, scheduler.alphas_cumprod[int(t)].float()


class LatentSampler:
    """A loaded latent diffusion pipeline plus everything its generators share: prompt
    conditioning (:attr:`text`), the denoising loop, decoding and output (:attr:`output`) and
    provenance."""

    def __init__(self, spec: GeneratorSpec) -> None:
        g = spec.generator
        self.spec = spec
        self.device = resolve_device(g.device, spec.gpus)
        self.dtype = DTYPES[g.dtype]
        self.pipe = load_pipeline(g, self.device, spec.model_ref, spec.batch_size)
        self.scheduler_config = dict(self.pipe.scheduler.config)  # the swapped-in scheduler's
        try:
            self.new_scheduler().set_timesteps(g.num_steps)
        except ValueError as exc:  # e.g. PNDM's Runge-Kutta warm-up needs num_steps >= 4
            raise ConfigError(
                f"{KEY}.scheduler={g.scheduler} cannot run num_steps={g.num_steps} with this "
                f"model's scheduler config ({exc}); raise num_steps or pick another scheduler"
            ) from exc
        self.prediction_type = self.pipe.scheduler.config.prediction_type
        self.image_size = spec.image_size or g.image_size
        self.use_uncond = g.guidance_scale != 1  # s = 1: the unconditional half would cancel
        unet = self.pipe.unet
        size = unet.config.sample_size
        size = int(size if isinstance(size, int) else size[0])
        self.latent_shape = (unet.config.in_channels, size, size)
        self.text = TextConditioner(
            self.pipe, self.device, self.dtype, self.use_uncond, size, g.model
        )
        self.is_sdxl = self.text.is_sdxl
        self.conditioning = self.text.conditioning  # prompts, negatives[, class_labels] → cond
        if self.is_sdxl:
            upcast_sdxl_vae(self.pipe)
        self.output = LatentOutput(
            self.pipe, spec.channels, self.image_size, g.safety_checker, self.device
        )
        self.vae_decode = self.output.vae_decode  # latents → pixels in about [-1, 1]
        self.feedback = build_feedback(spec, self.device, decode=self.output.decode_for_classifier)
        # the same criterion on already decoded pixels (final images: no second VAE decode)
        self.pixel_feedback = (
            None if self.feedback is None else replace(self.feedback, decode=self.output.adapt_pixels)
        )

    def initial_latents(self, generators: list[torch.Generator]) -> torch.Tensor:
        """Unit Gaussian latents ``[B, C, h, w]``, one row per generator (drawn first)."""
        noise = [torch.randn(self.latent_shape, generator=g) for g in generators]
        return torch.stack(noise).to(self.device)

    def generate(
        self, rows: list[dict[str, Any]], image_conditioning: ImageConditioning | None = None
    ) -> list[GeneratedImage]:
        """One image per row: initial latents, then (unCLIP) ``image_conditioning``'s draws from
        the same per-row generators, the row's prompts, the loop, the output."""
        if not rows:
            return []
        generators = _row_generators(rows)
        noise = self.initial_latents(generators)
        class_labels = None if image_conditioning is None else image_conditioning(rows, generators)
        prompts, negatives = _prompts(rows)
        labels = _labels(rows, self.device)
        cond = self.conditioning(prompts, negatives, class_labels)
        latents = self.denoise(noise, generators, cond, labels)
        return self.finish(latents, labels)

    # -- the denoising loop ---------------------------------------------------------------------

    def new_scheduler(self) -> Any:
        return check_scheduler(self.spec.generator.scheduler).from_config(self.scheduler_config)

    def denoise(
        self,
        noise: torch.Tensor,
        generators: list[torch.Generator],
        cond: Conditioning,
        labels: torch.Tensor,
    ) -> torch.Tensor:
        """Denoise ``noise [B, C, h, w]`` → clean latents ``[B, C, h, w]`` (float32).

        ``cond`` comes from :attr:`conditioning`; ``labels [B]`` are the classes feedback
        guidance scores against.
        """
        g = self.spec.generator
        unet = self.pipe.unet
        scheduler = self.new_scheduler()
        scheduler.set_timesteps(g.num_steps, device=self.device)
        unet_kwargs = cond.unet_kwargs()
        step_kwargs = (
            {"generator": generators}
            if "generator" in inspect.signature(scheduler.step).parameters
            else {}
        )
        if g.eta:  # DDIM only (the config refuses η > 0 with any other scheduler)
            step_kwargs["eta"] = g.eta

        def guided(x_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            def model(inp: torch.Tensor) -> torch.Tensor:
                return unet(inp.to(self.dtype), t, **unet_kwargs).sample.float()

            return guided_output(model, x_in, g.guidance_scale, self.use_uncond, uncond_first=True)

        cond_kwargs = conditional_half(unet_kwargs, self.use_uncond, uncond_first=True)

        def conditional(x_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            """The conditional branch alone (feedback gradient ``conditional_branch``)."""
            return unet(x_in.to(self.dtype), t, **cond_kwargs).sample.float()

        latents = noise.float() * scheduler.init_noise_sigma
        # no_grad, not inference_mode: feedback guidance needs autograd inside the loop
        with torch.no_grad():
            for i, t in enumerate(scheduler.timesteps):
                x_in = scheduler.scale_model_input(latents, t)
                model_output = guided(x_in, t)
                if self.feedback is not None and self.feedback.is_active(i):
                    latents = self._feedback_step(
                        i, scheduler, t, latents, model_output, labels, (guided, conditional)
                    )
                latents = scheduler.step(model_output, t, latents, **step_kwargs).prev_sample
        return latents

    def _feedback_step(
        self,
        i: int,
        scheduler: Any,
        t: torch.Tensor,
        latents: torch.Tensor,
        model_output: torch.Tensor,
        labels: torch.Tensor,
        models: tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor], ...],
    ) -> torch.Tensor:
        """One feedback step on ``latents``; ``models``: the guided model and its conditional
        branch alone, each ``(x, t)``."""
        guided, conditional = models
        c, abar = _guidance_frame(scheduler, t)
        x_t = latents * c
        new, _ = self.feedback.apply(
            i,
            x_t,
            model_output,
            0,
            abar.reshape(1),
            self.prediction_type,
            labels,
            model_fn=lambda z: guided(z, t),
            cond_fn=lambda z: conditional(z, t),
        )
        return latents + (new - x_t) / c

    # -- decoding, output and provenance --------------------------------------------------------

    def finish(self, latents: torch.Tensor, labels: torch.Tensor) -> list[GeneratedImage]:
        """Decode, score (feedback criterion), safety-check and encode the final latents."""
        return self.output.finish(latents, labels, self.pixel_feedback)

    def identity(self) -> dict[str, Any]:
        g = self.spec.generator
        sched = self.new_scheduler()
        config = {k: v for k, v in self.scheduler_config.items() if not k.startswith("_")}
        sdxl: dict[str, Any] = {}
        if self.is_sdxl:
            assert self.text.time_ids is not None
            ids = [int(v) for v in self.text.time_ids[0]]
            sdxl = {
                "micro_conditioning": {
                    "original_size": ids[0:2],
                    "crops_coords_top_left": ids[2:4],
                    "target_size": ids[4:6],
                },
                "force_zeros_for_empty_prompt": self.text.force_zeros,
                "vae_dtype": str(self.pipe.vae.dtype).removeprefix("torch."),
                "watermark": getattr(self.pipe, "watermark", None) is not None,
            }
        negative = "unconditional branch of classifier-free guidance " + (
            "(all-zero embedding when the row has none: force_zeros_for_empty_prompt)"
            if self.is_sdxl and self.text.force_zeros
            else "(empty prompt when the row has none)"
        )
        return {
            "kind": g.kind,
            "model": g.model,
            "pipeline": type(self.pipe).__name__,
            "dtype": g.dtype,
            "scheduler": type(sched).__name__,
            "scheduler_config": json.loads(json.dumps(config, default=str)),
            "prediction_type": self.prediction_type,
            "num_steps": g.num_steps,
            "guidance_scale": g.guidance_scale,
            "eta": g.eta,
            "negative_prompt": negative,
            "image_size": self.image_size,
            "lora": [str(p) for p in g.lora],
            "lora_weights": list(g.lora_weights) or [1.0] * len(g.lora),
            "safety_checker": g.safety_checker,
            "feedback": asdict(self.spec.feedback),
            **sdxl,
        }
