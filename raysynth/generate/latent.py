"""Latent diffusion generators: Stable Diffusion 1.x/2.x and SDXL (``text2image``) and Stable
unCLIP 2.1 (``unclip``), loaded with diffusers' own ``from_pretrained`` (DESIGN §1, METHODS §2–3).

All run ONE denoising loop (:meth:`LatentSampler.denoise`) on the pipeline's components rather
than ``pipe(...)``, so feedback guidance can act between the UNet call and the scheduler step.
What differs between pipeline families is only what conditions the UNet besides ``x_t`` and ``t``
— a :class:`Conditioning` built by :meth:`LatentSampler.conditioning`:

- SD 1.x/2.x: the text encoder's states (``encoder_hidden_states``);
- SDXL (``StableDiffusionXLPipeline``, recognised by ``model_index.json``'s class name; the kind
  stays ``text2image``): both text encoders' states concatenated, plus ``added_cond_kwargs`` —
  the second encoder's pooled projection (``text_embeds``) and the micro-conditioning
  ``time_ids`` = (original size, crop top-left (0, 0), target size), both sizes the resolution
  actually sampled (the model's own, as ``pipe(...)`` does by default; ``image_size`` only resizes
  the output). With ``force_zeros_for_empty_prompt`` (the SDXL base config) an empty negative
  prompt is the all-zero embedding, as in ``pipe(...)`` without a negative prompt. The VAE
  decodes with its own scaling factor, in float32 when the model runs in float16 and the VAE
  config says ``force_upcast``; SDXL ships no safety checker (asking for one is a config error);
- unCLIP: the text states plus ``class_labels`` (below).

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

unCLIP conditioning (``StableUnCLIPImg2ImgPipeline``): the UNet's ``class_labels`` are the CLIP image
embedding of the real image named by the row's ``cond_id`` (noised at ``noise_level`` 0 by the
pipeline's own normaliser and noising scheduler) concatenated with the sinusoidal noise-level
embedding; the unconditional branch is the all-zero vector, as in the diffusers pipeline. With
probability ``image_dropout`` (a per-row draw) the conditional vector is zeroed too — the same
"no image" input the model saw in training — so only the prompt conditions that row (paper 002's
dual conditioning with dropout for diversity).
"""

from __future__ import annotations

import inspect
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from raysynth import columns as col
from raysynth.config.schema import GeneratorConfig
from raysynth.errors import ConfigError, DataError
from raysynth.generate.generators import (
    DTYPES,
    GeneratedImage,
    Generator,
    GeneratorSpec,
    build_feedback,
    png_bytes,
    resolve_device,
)

KEY = "synthesis.generator"
SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "pndm": "PNDMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_ancestral": "EulerAncestralDiscreteScheduler",
    "dpm_solver": "DPMSolverMultistepScheduler",
}
SDXL = "StableDiffusionXLPipeline"
PIPELINES = {
    "text2image": ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", SDXL),
    "unclip": ("StableUnCLIPImg2ImgPipeline",),
}
_EMBED_CACHE_SIZE = 4096


# 1. driver-side checks (cheap: no model is loaded) -----------------------------------------------


def check_scheduler(name: str) -> type:
    """The diffusers scheduler class a config name stands for; unknown names list the valid ones."""
    if name not in SCHEDULERS:
        raise ConfigError(
            f"{KEY}.scheduler={name!r} is not a scheduler raysynth knows; "
            f"choose one of {', '.join(SCHEDULERS)}"
        )
    import diffusers

    return getattr(diffusers, SCHEDULERS[name])


def _is_local_path(model: str) -> bool:
    return (
        Path(model).expanduser().exists()
        or model.startswith(("/", ".", "~"))
        or model.count("/") > 1
        or "\\" in model
    )


def check_model_available(cfg: GeneratorConfig) -> dict[str, Any]:
    """Check that ``cfg.model`` can be loaded offline and is a pipeline ``cfg.kind`` can drive.

    A local folder must hold ``model_index.json``; a Hugging Face id must already be in the local
    cache. Returns the parsed ``model_index.json``. Raises :class:`ConfigError` saying what to pass.
    """
    model = cfg.model
    if not model:
        raise ConfigError(f"{KEY}.model is empty; pass a Hugging Face id or a local folder")
    if _is_local_path(model):
        index = Path(model).expanduser() / "model_index.json"
        if not index.is_file():
            raise ConfigError(
                f"{KEY}.model={model!r}: no diffusers pipeline there ({index} is missing); pass a "
                "folder written by DiffusionPipeline.save_pretrained or a Hugging Face id"
            )
    else:
        index = _cached_model_index(model)
    info = json.loads(Path(index).read_text())
    _check_pipeline_class(cfg, info.get("_class_name", ""))
    if cfg.safety_checker and info.get("_class_name") == SDXL:
        raise ConfigError(
            f"{KEY}.safety_checker=true but {cfg.model!r} is an SDXL pipeline, and SDXL ships no "
            "safety checker; set it to false or use a Stable Diffusion 1.x/2.x model that has one"
        )
    check_scheduler(cfg.scheduler)
    return info


def _cached_model_index(model: str) -> str:
    from huggingface_hub import try_to_load_from_cache

    try:
        path = try_to_load_from_cache(model, "model_index.json")
    except Exception as exc:  # HFValidationError: not a valid repo id
        raise ConfigError(
            f"{KEY}.model={model!r} is neither an existing folder nor a Hugging Face id ({exc})"
        ) from exc
    if not isinstance(path, str):
        raise ConfigError(
            f"{KEY}.model={model!r} is not in the local Hugging Face cache and cannot be loaded "
            f"offline; download it first (`hf download {model}`) or pass a local folder"
        )
    return path


def _check_pipeline_class(cfg: GeneratorConfig, name: str) -> None:
    if name in PIPELINES[cfg.kind]:
        return
    other = next((k for k, names in PIPELINES.items() if name in names), None)
    if other is None and "XL" in name:
        raise ConfigError(
            f"{KEY}.model={cfg.model!r} is an SDXL {name}, which raysynth does not drive; "
            f"pass an SDXL base model ({SDXL}, kind text2image), a Stable Diffusion 1.x/2.x "
            "model (kind text2image) or Stable unCLIP (kind unclip)"
        )
    hint = f"; set {KEY}.kind={other}" if other else ""
    raise ConfigError(
        f"{KEY}.model={cfg.model!r} is a {name or 'unknown'} pipeline but {KEY}.kind={cfg.kind} "
        f"needs one of {', '.join(PIPELINES[cfg.kind])}{hint}"
    )


def check_adapters(cfg: GeneratorConfig) -> None:
    """Every LoRA entry is a folder with a weights file (or a ``.safetensors`` file).

    Whether an adapter fits the model is only known once it is loaded; :func:`load_pipeline`
    then raises :class:`ConfigError` naming the adapter.
    """
    for i, entry in enumerate(cfg.lora):
        path = Path(entry).expanduser()
        if path.is_dir():
            ok = any(path.glob("*.safetensors")) or any(path.glob("*.bin"))
        else:
            ok = path.is_file() and path.suffix in (".safetensors", ".bin")
        if not ok:
            raise ConfigError(
                f"{KEY}.lora[{i}]={entry!r} is not a LoRA adapter: pass a folder written by "
                "save_lora_weights (pytorch_lora_weights.safetensors) or that .safetensors file"
            )


# 2. loading ------------------------------------------------------------------------------------


def load_pipeline(cfg: GeneratorConfig, device: torch.device) -> Any:
    """Load the diffusers pipeline of ``cfg`` (offline), swap in the configured scheduler, load
    the LoRA adapters, move it to ``device``."""
    import diffusers

    info = check_model_available(cfg)
    check_adapters(cfg)
    name = info["_class_name"]
    if cfg.kind == "text2image" and name != SDXL:
        name = "StableDiffusionPipeline"  # also for an img2img folder: same components
    cls = getattr(diffusers, name)
    kwargs: dict[str, Any] = {"dtype": DTYPES[cfg.dtype], "local_files_only": True}
    if name == "StableDiffusionPipeline" and not cfg.safety_checker:
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    try:
        pipe = cls.from_pretrained(
            str(Path(cfg.model).expanduser()) if _is_local_path(cfg.model) else cfg.model, **kwargs
        )
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"{KEY}.model={cfg.model!r} could not be loaded: {exc}") from exc
    has_checker = getattr(pipe, "safety_checker", None) is not None
    if cfg.safety_checker and not (has_checker and getattr(pipe, "feature_extractor", None)):
        raise ConfigError(
            f"{KEY}.safety_checker=true but {cfg.model!r} ships no safety checker; set it to "
            "false or use a model folder that has one (safety_checker/ + feature_extractor/)"
        )
    pipe.scheduler = check_scheduler(cfg.scheduler).from_config(pipe.scheduler.config)
    _load_adapters(pipe, cfg)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _load_adapters(pipe: Any, cfg: GeneratorConfig) -> None:
    if not cfg.lora:
        return
    names = []
    for i, entry in enumerate(cfg.lora):
        name, path = f"a{i}", Path(entry).expanduser()
        where = {"weight_name": path.name} if path.is_file() else {}
        folder = path.parent if path.is_file() else path
        try:
            pipe.load_lora_weights(str(folder), adapter_name=name, **where)
        except (ValueError, RuntimeError, KeyError, OSError) as exc:
            raise ConfigError(
                f"{KEY}.lora[{i}]={entry!r} does not fit {cfg.model!r}: {_brief(exc)}; pass an "
                "adapter trained for this model"
            ) from exc
        loaded = {n for names_ in pipe.get_list_adapters().values() for n in names_}
        if name not in loaded:
            raise ConfigError(
                f"{KEY}.lora[{i}]={entry!r} has no layer that fits {cfg.model!r} (nothing was "
                "loaded); pass an adapter trained for this model"
            )
        names.append(name)
    weights = list(cfg.lora_weights) or [1.0] * len(names)
    pipe.set_adapters(names, adapter_weights=weights)


def _brief(exc: Exception, lines: int = 3, chars: int = 600) -> str:
    """The head of a long library message (a shape mismatch lists every layer)."""
    text = "\n".join(str(exc).strip().splitlines()[:lines])
    return text if len(text) <= chars else text[:chars] + " …"


def build_latent_generator(spec: GeneratorSpec) -> Generator:
    """The generator of ``spec.generator.kind`` (``text2image``: SD or SDXL; ``unclip``)."""
    if spec.generator.kind == "text2image":
        return Text2ImageGenerator(spec)
    if spec.generator.kind == "unclip":
        return UnclipGenerator(spec)
    raise ConfigError(f"{KEY}.kind={spec.generator.kind!r} is not a latent diffusion generator")


# 3. the shared sampler ---------------------------------------------------------------------------


def _row_generators(rows: Sequence[dict[str, Any]]) -> list[torch.Generator]:
    return [torch.Generator(device="cpu").manual_seed(int(r[col.SEED])) for r in rows]


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


@dataclass
class Conditioning:
    """What conditions the UNet besides ``x_t`` and ``t``, for a batch of rows — stacked
    ``[unconditional; conditional]`` along the batch when classifier-free guidance is on.

    ``encoder_hidden_states [B', S, D]`` (every family); ``class_labels [B', E]`` (unCLIP's image
    embedding); ``added_cond_kwargs`` (SDXL: ``text_embeds [B', P]`` pooled text projection and
    ``time_ids [B', 6]`` micro-conditioning).
    """

    encoder_hidden_states: torch.Tensor
    class_labels: torch.Tensor | None = None
    added_cond_kwargs: dict[str, torch.Tensor] | None = None

    def to(self, dtype: torch.dtype) -> Conditioning:
        return Conditioning(
            self.encoder_hidden_states.to(dtype),
            None if self.class_labels is None else self.class_labels.to(dtype),
            None
            if self.added_cond_kwargs is None
            else {k: v.to(dtype) for k, v in self.added_cond_kwargs.items()},
        )

    def unet_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"encoder_hidden_states": self.encoder_hidden_states}
        if self.class_labels is not None:
            kwargs["class_labels"] = self.class_labels
        if self.added_cond_kwargs is not None:
            kwargs["added_cond_kwargs"] = self.added_cond_kwargs
        return kwargs


class LatentSampler:
    """A loaded latent diffusion pipeline plus everything its generators share: prompt
    embeddings and conditioning, the denoising loop, decoding, safety checking and provenance."""

    def __init__(self, spec: GeneratorSpec) -> None:
        g = spec.generator
        self.spec = spec
        self.device = resolve_device(g.device)
        self.dtype = DTYPES[g.dtype]
        self.pipe = load_pipeline(g, self.device)
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
        self._text_cache: dict[str, tuple[torch.Tensor, ...]] = {}
        unet = self.pipe.unet
        size = unet.config.sample_size
        size = int(size if isinstance(size, int) else size[0])
        self.latent_shape = (unet.config.in_channels, size, size)
        self.is_sdxl = type(self.pipe).__name__ == SDXL
        self.time_ids: torch.Tensor | None = None
        self.force_zeros = False
        if self.is_sdxl:
            self._setup_sdxl(size * int(self.pipe.vae_scale_factor))
        self.feedback = build_feedback(spec, self.device, decode=self.decode_for_classifier)
        # the same criterion on already decoded pixels (final images: no second VAE decode)
        self.pixel_feedback = (
            None if self.feedback is None else replace(self.feedback, decode=self.adapt_pixels)
        )

    def _setup_sdxl(self, side: int) -> None:
        """SDXL's micro-conditioning and VAE precision (as ``StableDiffusionXLPipeline``)."""
        pipe = self.pipe
        # (original size, crop top-left, target size): the resolution sampled, no crop
        self.time_ids = torch.tensor([[side, side, 0, 0, side, side]], dtype=torch.float32)
        unet = pipe.unet
        pooled_dim = int(pipe.text_encoder_2.config.projection_dim)
        text_time = unet.config.addition_embed_type == "text_time"
        expected = unet.add_embedding.linear_1.in_features if text_time else None
        passed = (unet.config.addition_time_embed_dim or 0) * self.time_ids.shape[1] + pooled_dim
        if expected != passed:
            raise ConfigError(
                f"{KEY}.model={self.spec.generator.model!r}: its UNet's added embedding "
                f"(addition_embed_type={unet.config.addition_embed_type!r}, {expected} inputs) "
                f"does not take SDXL's 6 time ids and text_encoder_2's pooled projection "
                f"({passed} values); the pipeline folder's configs do not fit together"
            )
        self.force_zeros = bool(pipe.config.get("force_zeros_for_empty_prompt", False))
        # the SDXL VAE overflows in float16: decode in float32 (its config says force_upcast)
        if pipe.vae.dtype == torch.float16 and pipe.vae.config.get("force_upcast", False):
            pipe.vae.to(torch.float32)

    # -- conditioning ---------------------------------------------------------------------------

    def encode_prompt(self, prompt: str) -> tuple[torch.Tensor, ...]:
        """One prompt through the pipeline's own ``encode_prompt`` (cached): ``(states [S, D],)``
        for SD / unCLIP, ``(states [S, D1+D2], pooled [P])`` for SDXL."""
        if prompt not in self._text_cache:
            if len(self._text_cache) >= _EMBED_CACHE_SIZE:
                self._text_cache.clear()
            with torch.no_grad():
                if self.is_sdxl:
                    states, _, pooled, _ = self.pipe.encode_prompt(
                        prompt=[prompt],
                        device=self.device,
                        num_images_per_prompt=1,
                        do_classifier_free_guidance=False,
                    )
                    parts: tuple[torch.Tensor, ...] = (states[0], pooled[0])
                else:
                    states, _ = self.pipe.encode_prompt([prompt], self.device, 1, False)
                    parts = (states[0],)
            self._text_cache[prompt] = parts
        return self._text_cache[prompt]

    def negative_embedding(self, prompt: str) -> tuple[torch.Tensor, ...]:
        """The unconditional branch of one row: its negative prompt, or the empty prompt —
        all zeros instead where the SDXL config sets ``force_zeros_for_empty_prompt``."""
        parts = self.encode_prompt(prompt)
        if not prompt and self.is_sdxl and self.force_zeros:
            return tuple(torch.zeros_like(p) for p in parts)
        return parts

    def conditioning(
        self,
        prompts: Sequence[str],
        negative_prompts: Sequence[str],
        class_labels: torch.Tensor | None = None,
    ) -> Conditioning:
        """The :class:`Conditioning` of a batch (unconditional half first when CFG is on).

        ``class_labels [B, E]`` (unCLIP) condition the UNet; their unconditional branch is zero.
        """
        parts = [torch.stack(p) for p in zip(*(self.encode_prompt(p) for p in prompts))]
        if self.use_uncond:
            negatives = [self.negative_embedding(p) for p in negative_prompts]
            parts = [torch.cat([torch.stack(n), c]) for n, c in zip(zip(*negatives), parts)]
            if class_labels is not None:
                class_labels = torch.cat([torch.zeros_like(class_labels), class_labels])
        added = None
        if self.is_sdxl:
            assert self.time_ids is not None
            time_ids = self.time_ids.to(self.device).repeat(len(parts[1]), 1)
            added = {"text_embeds": parts[1], "time_ids": time_ids}
        return Conditioning(parts[0], class_labels, added).to(self.dtype)

    def initial_latents(self, generators: list[torch.Generator]) -> torch.Tensor:
        """Unit Gaussian latents ``[B, C, h, w]``, one row per generator (drawn first)."""
        noise = [torch.randn(self.latent_shape, generator=g) for g in generators]
        return torch.stack(noise).to(self.device)

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

        ``cond`` comes from :meth:`conditioning`; ``labels [B]`` are the classes feedback
        guidance scores against.
        """
        g = self.spec.generator
        unet = self.pipe.unet
        scheduler = self.new_scheduler()
        scheduler.set_timesteps(g.num_steps, device=self.device)
        use_uncond = self.use_uncond
        unet_kwargs = cond.unet_kwargs()
        step_kwargs = (
            {"generator": generators}
            if "generator" in inspect.signature(scheduler.step).parameters
            else {}
        )
        if g.eta:  # DDIM only (the config refuses η > 0 with any other scheduler)
            step_kwargs["eta"] = g.eta

        def guided_output(x_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            inp = torch.cat([x_in, x_in]) if use_uncond else x_in
            out = unet(inp.to(self.dtype), t, **unet_kwargs).sample.float()
            if not use_uncond:
                return out
            unc, cond_out = out.chunk(2)
            return unc + g.guidance_scale * (cond_out - unc)

        latents = noise.float() * scheduler.init_noise_sigma
        # no_grad, not inference_mode: feedback guidance needs autograd inside the loop
        with torch.no_grad():
            for i, t in enumerate(scheduler.timesteps):
                x_in = scheduler.scale_model_input(latents, t)
                model_output = guided_output(x_in, t)
                if self.feedback is not None and self.feedback.is_active(i):
                    latents = self._feedback_step(
                        i, scheduler, t, latents, model_output, labels, guided_output
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
        guided_output: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
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
            model_fn=lambda z: guided_output(z, t),
        )
        return latents + (new - x_t) / c

    # -- decoding and output --------------------------------------------------------------------

    def vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents ``[B, C, h, w]`` → images ``[B, 3, H, W]`` in about [-1, 1] (differentiable).

        Unscaled by the VAE's own ``scaling_factor`` (0.18215 SD, 0.13025 SDXL), or
        denormalised with its ``latents_mean`` / ``latents_std`` where the config has them.
        """
        vae = self.pipe.vae
        cfg = vae.config
        mean, std = cfg.get("latents_mean"), cfg.get("latents_std")
        if mean is not None and std is not None:
            shape = (1, len(mean), 1, 1)
            mean_t = torch.tensor(mean, device=latents.device).view(shape)
            std_t = torch.tensor(std, device=latents.device).view(shape)
            latents = latents * std_t / cfg.scaling_factor + mean_t
        else:
            latents = latents / cfg.scaling_factor
        return vae.decode(latents.to(vae.dtype)).sample.float()

    def adapt_pixels(self, images: torch.Tensor) -> torch.Tensor:
        """Model-resolution RGB in [-1, 1] → what the classifier sees: the output size and
        channels of the stored images (differentiable twin of :meth:`to_png`)."""
        if self.spec.channels == 1:
            w = torch.tensor([0.299, 0.587, 0.114], device=images.device, dtype=images.dtype)
            images = (images * w.view(1, 3, 1, 1)).sum(1, keepdim=True)
        if self.image_size and images.shape[-1] != self.image_size:
            size = (self.image_size, self.image_size)
            images = F.interpolate(images, size=size, mode="bilinear", antialias=True)
        return images

    def decode_for_classifier(self, latents: torch.Tensor) -> torch.Tensor:
        return self.adapt_pixels(self.vae_decode(latents))

    def finish(self, latents: torch.Tensor, labels: torch.Tensor) -> list[GeneratedImage]:
        """Decode, score (feedback criterion), safety-check and encode the final latents."""
        with torch.no_grad():
            pixels = self.vae_decode(latents)
            watermark = getattr(self.pipe, "watermark", None)
            if watermark is not None:  # SDXL's invisible watermark, where the pipeline adds it
                pixels = watermark.apply_watermark(pixels).to(pixels.device, pixels.dtype)
            pixels = pixels.clamp(-1, 1)
            crit: list[float | None] = [None] * len(latents)
            if self.pixel_feedback is not None:
                values = self.pixel_feedback.evaluate(pixels, labels).float().cpu()
                crit = [float(v) for v in values]
        arrays = ((pixels + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        flags = self.safety_flags(arrays)
        return [
            GeneratedImage(None if flagged else self.to_png(a), c, flagged)
            for a, c, flagged in zip(arrays, crit, flags)
        ]

    def to_png(self, image: np.ndarray) -> bytes:
        """``uint8 [H, W, 3]`` → PNG at the output size (PIL bicubic, antialiased) and channels."""
        from PIL import Image

        img = Image.fromarray(image)
        if self.image_size and img.size != (self.image_size, self.image_size):
            img = img.resize((self.image_size, self.image_size), Image.Resampling.BICUBIC)
        if self.spec.channels == 1:
            return png_bytes(np.asarray(img.convert("L"))[..., None])
        return png_bytes(np.asarray(img))

    def safety_flags(self, images: np.ndarray) -> list[bool]:
        """The pipeline's safety checker on ``uint8 [B, H, W, 3]``; all False when it is off."""
        checker = getattr(self.pipe, "safety_checker", None)
        if not self.spec.generator.safety_checker or checker is None:
            return [False] * len(images)
        from PIL import Image

        inputs = self.pipe.feature_extractor(
            [Image.fromarray(a) for a in images], return_tensors="pt"
        )
        clip_input = inputs.pixel_values.to(self.device, checker.dtype)
        with torch.no_grad():
            _, flags = checker(clip_input=clip_input, images=images.astype(np.float32) / 255)
        return [bool(f) for f in flags]

    def identity(self) -> dict[str, Any]:
        g = self.spec.generator
        sched = self.new_scheduler()
        config = {k: v for k, v in self.scheduler_config.items() if not k.startswith("_")}
        sdxl: dict[str, Any] = {}
        if self.is_sdxl:
            assert self.time_ids is not None
            ids = [int(v) for v in self.time_ids[0]]
            sdxl = {
                "micro_conditioning": {
                    "original_size": ids[0:2],
                    "crops_coords_top_left": ids[2:4],
                    "target_size": ids[4:6],
                },
                "force_zeros_for_empty_prompt": self.force_zeros,
                "vae_dtype": str(self.pipe.vae.dtype).removeprefix("torch."),
                "watermark": getattr(self.pipe, "watermark", None) is not None,
            }
        negative = "unconditional branch of classifier-free guidance " + (
            "(all-zero embedding when the row has none: force_zeros_for_empty_prompt)"
            if self.is_sdxl and self.force_zeros
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


def _prompts(rows: Sequence[dict[str, Any]]) -> tuple[list[str], list[str]]:
    return (
        [str(r.get(col.PROMPT) or "") for r in rows],
        [str(r.get(col.NEGATIVE_PROMPT) or "") for r in rows],
    )


def _labels(rows: Sequence[dict[str, Any]], device: torch.device) -> torch.Tensor:
    return torch.tensor([int(r[col.LABEL]) for r in rows], device=device, dtype=torch.long)


# 4. the generators -------------------------------------------------------------------------------


class Text2ImageGenerator:
    """Stable Diffusion 1.x/2.x or SDXL: the row's prompt, negative prompt and seed → one image."""

    def __init__(self, spec: GeneratorSpec) -> None:
        self.sampler = LatentSampler(spec)

    def identity(self) -> dict[str, Any]:
        return self.sampler.identity()

    def generate(self, rows: list[dict[str, Any]]) -> list[GeneratedImage]:
        if not rows:
            return []
        s = self.sampler
        generators = _row_generators(rows)
        noise = s.initial_latents(generators)
        prompts, negatives = _prompts(rows)
        labels = _labels(rows, s.device)
        latents = s.denoise(noise, generators, s.conditioning(prompts, negatives), labels)
        return s.finish(latents, labels)


class UnclipGenerator:
    """Stable unCLIP 2.1: the row's prompt plus the CLIP image embedding of its ``cond_id`` image."""

    def __init__(self, spec: GeneratorSpec) -> None:
        if not spec.real_images:
            raise ConfigError(
                f"{KEY}.kind=unclip conditions on real images: the generator spec needs "
                "real_images (the real split's Parquet path)"
            )
        self.sampler = LatentSampler(spec)
        self.real_images = spec.real_images
        self._embeds: dict[str, torch.Tensor] = {}

    def identity(self) -> dict[str, Any]:
        return {
            **self.sampler.identity(),
            "image_dropout": self.sampler.spec.generator.image_dropout,
            "noise_level": 0,
            "image_conditioning": "CLIP image embedding of cond_id; dropped → zero vector",
        }

    def generate(self, rows: list[dict[str, Any]]) -> list[GeneratedImage]:
        if not rows:
            return []
        s = self.sampler
        generators = _row_generators(rows)
        noise = s.initial_latents(generators)
        class_labels = self.image_conditioning(rows, generators)
        prompts, negatives = _prompts(rows)
        labels = _labels(rows, s.device)
        cond = s.conditioning(prompts, negatives, class_labels)
        latents = s.denoise(noise, generators, cond, labels)
        return s.finish(latents, labels)

    def image_conditioning(
        self, rows: Sequence[dict[str, Any]], generators: list[torch.Generator]
    ) -> torch.Tensor:
        """``[B, 2E]``: noised image embedding ⊕ noise-level embedding, zeroed where dropped.

        Per row, after its initial latents: one uniform draw decides the dropout, then the
        embedding noise (``noise_level`` 0 still adds ``√(1−ᾱ_0)`` of it).
        """
        pipe = self.sampler.pipe
        embeds = self.image_embeddings([r.get(col.COND_ID) for r in rows])
        p = self.sampler.spec.generator.image_dropout
        drop = torch.tensor([float(torch.rand((), generator=g)) < p for g in generators])
        noise = torch.stack([torch.randn(embeds.shape[1], generator=g) for g in generators])
        with torch.no_grad():
            out = pipe.noise_image_embeddings(
                embeds, noise_level=0, noise=noise.to(embeds.device, embeds.dtype)
            )
        return out * (~drop).to(out.device, out.dtype).unsqueeze(1)

    def image_embeddings(self, cond_ids: Sequence[Any]) -> torch.Tensor:
        """``[B, E]`` CLIP image embeddings, each image encoded alone and cached by id."""
        missing = sorted({str(i) for i in cond_ids if i is not None} - set(self._embeds))
        if None in cond_ids:
            raise DataError(f"unCLIP rows need a {col.COND_ID}; a row of this batch has none")
        if missing:
            if len(self._embeds) + len(missing) > _EMBED_CACHE_SIZE:
                self._embeds.clear()
            for cid, png in self._read_images(missing).items():
                self._embeds[cid] = self._encode_image(png)
        return torch.stack([self._embeds[str(i)] for i in cond_ids])

    def _read_images(self, ids: list[str]) -> dict[str, bytes]:
        import pyarrow.parquet as pq

        table = pq.read_table(
            self.real_images,
            columns=[col.SAMPLE_ID, col.IMAGE],
            filters=[(col.SAMPLE_ID, "in", ids)],
        )
        found = dict(
            zip(table.column(col.SAMPLE_ID).to_pylist(), table.column(col.IMAGE).to_pylist())
        )
        absent = [i for i in ids if i not in found]
        if absent:
            raise DataError(
                f"cond_id {absent[:5]} not found in the real images {self.real_images}; the plan "
                "must name real sample_ids of that split"
            )
        return found

    def _encode_image(self, png: bytes) -> torch.Tensor:
        from PIL import Image

        pipe = self.sampler.pipe
        image = Image.open(io.BytesIO(png)).convert("RGB")
        pixels = pipe.feature_extractor(images=image, return_tensors="pt").pixel_values
        encoder = pipe.image_encoder
        with torch.no_grad():
            return encoder(pixels.to(self.sampler.device, encoder.dtype)).image_embeds[0]


__all__ = [
    "SCHEDULERS",
    "Conditioning",
    "LatentSampler",
    "Text2ImageGenerator",
    "UnclipGenerator",
    "build_latent_generator",
    "check_adapters",
    "check_model_available",
    "check_scheduler",
    "load_pipeline",
]
