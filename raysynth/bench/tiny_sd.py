"""A small Stable Diffusion 1.x pipeline built from config for the benches (nothing downloaded).

Random weights (speed does not depend on them): a character-level CLIP tokenizer, a 2-layer
CLIP text tower, a cross-attention ``UNet2DConditionModel`` and a 2-block ``AutoencoderKL``
(scale factor 2), saved with ``save_pretrained`` so the product loads it through the same
``from_pretrained`` path as a Hub model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from raysynth.devices import resolve_device


def char_tokenizer(model_max_length: int = 32) -> Any:
    """A character-level CLIP tokenizer (letters, digits; anything else is <|endoftext|>)."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz0123456789":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    import transformers

    if int(transformers.__version__.split(".")[0]) >= 5:
        return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=model_max_length)
    import json
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:  # transformers 4 reads them from files
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab))
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n")
        return CLIPTokenizer(
            Path(tmp) / "vocab.json", Path(tmp) / "merges.txt", model_max_length=model_max_length
        )


def ddim_scheduler(prediction_type: str = "epsilon") -> Any:
    """The DDIM scheduler of Stable Diffusion 1.x (scaled-linear betas)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )


def text_config(
    tokenizer: Any, hidden_size: int, intermediate_size: int, heads: int, layers: int
) -> Any:
    """A CLIP text tower's config for ``tokenizer`` (positions: its ``model_max_length``)."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=0,
        eos_token_id=1,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_attention_heads=heads,
        num_hidden_layers=layers,
    )


def build_pipeline(vae: dict[str, Any], text: Any, tokenizer: Any, unet: dict[str, Any]) -> Any:
    """A ``StableDiffusionPipeline`` of random weights: the VAE, text tower and UNet built in
    that order (the order they draw from torch's RNG) from their configs, the DDIM scheduler, no
    safety checker."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    return StableDiffusionPipeline(
        vae=AutoencoderKL(**vae),
        text_encoder=CLIPTextModel(text),
        tokenizer=tokenizer,
        unet=UNet2DConditionModel(**unet),
        scheduler=ddim_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def small_vae(image_size: int, channels: tuple[int, ...]) -> dict[str, Any]:
    """A 2-block ``AutoencoderKL`` config (scale factor 2) for ``image_size`` pixels."""
    return dict(
        block_out_channels=channels,
        norm_num_groups=8,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4,
        layers_per_block=1,
        sample_size=image_size,
    )


def small_unet(image_size: int, channels: tuple[int, ...]) -> dict[str, Any]:
    """A 2-block cross-attention ``UNet2DConditionModel`` config on latents of half the side."""
    return dict(
        sample_size=image_size // 2,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=channels,
        norm_num_groups=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64,
        attention_head_dim=8,
    )


def save_small_sd(
    folder: str | Path, image_size: int = 32, channels: tuple[int, ...] = (32, 64)
) -> str:
    """Write the pipeline to ``folder``; ``image_size`` pixels (latents of half the side)."""
    tokenizer = char_tokenizer(32)
    text = text_config(tokenizer, hidden_size=64, intermediate_size=128, heads=4, layers=2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        pipe = build_pipeline(
            small_vae(image_size, channels), text, tokenizer, small_unet(image_size, channels)
        )
    pipe.save_pretrained(folder)
    return str(folder)


# Stable Diffusion 1.5's UNet and VAE (diffusers configs of runwayml/stable-diffusion-v1-5).
SD15_UNET: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": (
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ),
    "up_block_types": (
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ),
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}
SD15_VAE: dict[str, Any] = {
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "latent_channels": 4,
    "layers_per_block": 2,
    "sample_size": 512,
}


def save_sd15_sized(folder: str | Path, dtype: torch.dtype = torch.bfloat16) -> str:
    """SD 1.5's UNet (~860M parameters, 64×64 latents) and VAE (512-pixel images) with random
    weights, around a 1-layer text tower of SD's width (768) and a character tokenizer of 77
    tokens: the FLOPs of SD 1.5 sampling at 512 px, nothing downloaded. Built on the GPU when
    there is one, saved in ``dtype``."""
    tokenizer = char_tokenizer(77)
    text = text_config(tokenizer, hidden_size=768, intermediate_size=3072, heads=12, layers=1)
    device = resolve_device("auto")
    with torch.random.fork_rng(devices=[]), device:
        torch.manual_seed(0)
        pipe = build_pipeline(SD15_VAE, text, tokenizer, SD15_UNET)
    pipe.to(dtype=dtype).save_pretrained(folder)
    return str(folder)
