"""What conditions a latent diffusion UNet besides ``x_t`` and ``t``: the prompt embeddings of a
loaded diffusers pipeline (one prompt at a time, cached) stacked into a :class:`Conditioning`.

- SD 1.x/2.x and unCLIP: the text encoder's states (``encoder_hidden_states``); unCLIP adds
  ``class_labels`` (its image conditioning, built by :mod:`raysynth.generate.unclip`);
- SDXL (``StableDiffusionXLPipeline``, recognised by ``model_index.json``'s class name; the kind
  stays ``text2image``): both text encoders' states concatenated, plus ``added_cond_kwargs`` —
  the second encoder's pooled projection (``text_embeds``) and the micro-conditioning
  ``time_ids`` = (original size, crop top-left (0, 0), target size), both sizes the resolution
  actually sampled (the model's own, as ``pipe(...)`` does by default; ``image_size`` only resizes
  the output). With ``force_zeros_for_empty_prompt`` (the SDXL base config) an empty negative
  prompt is the all-zero embedding, as in ``pipe(...)`` without a negative prompt.

With classifier-free guidance on, the unconditional branch — the row's negative prompt (the empty
prompt when there is none) — is stacked first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from raysynth.errors import ConfigError
from raysynth.generate.loading import KEY, SDXL

EMBED_CACHE_SIZE = 4096


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


class TextConditioner:
    """Prompt embeddings of a loaded pipeline and the :class:`Conditioning` of a batch of rows."""

    def __init__(
        self,
        pipe: Any,
        device: torch.device,
        dtype: torch.dtype,
        use_uncond: bool,
        latent_side: int,
        model: str,
    ) -> None:
        """``latent_side``: the latents' height (= width) the sampler draws; ``model``: the
        configured model, named in errors."""
        self.pipe = pipe
        self.device = device
        self.dtype = dtype
        self.use_uncond = use_uncond
        self._text_cache: dict[str, tuple[torch.Tensor, ...]] = {}
        self.is_sdxl = type(pipe).__name__ == SDXL
        self.time_ids: torch.Tensor | None = None
        self.force_zeros = False
        if self.is_sdxl:
            self._setup_sdxl(latent_side * int(pipe.vae_scale_factor), model)

    def _setup_sdxl(self, side: int, model: str) -> None:
        """SDXL's micro-conditioning (as ``StableDiffusionXLPipeline``)."""
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
                f"{KEY}.model={model!r}: its UNet's added embedding "
                f"(addition_embed_type={unet.config.addition_embed_type!r}, {expected} inputs) "
                f"does not take SDXL's 6 time ids and text_encoder_2's pooled projection "
                f"({passed} values); the pipeline folder's configs do not fit together"
            )
        self.force_zeros = bool(pipe.config.get("force_zeros_for_empty_prompt", False))

    def encode_prompt(self, prompt: str) -> tuple[torch.Tensor, ...]:
        """One prompt through the pipeline's own ``encode_prompt`` (cached): ``(states [S, D],)``
        for SD / unCLIP, ``(states [S, D1+D2], pooled [P])`` for SDXL."""
        if prompt not in self._text_cache:
            if len(self._text_cache) >= EMBED_CACHE_SIZE:
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
