"""Tiny real models built from config for the tests (nothing is downloaded): the pieces of a
Stable Diffusion 1.x pipeline and an open_clip model saved as a ``local-dir:`` folder.

``tests/`` is on ``sys.path`` (pytest puts the root conftest's folder there), so test modules
import these with ``from tiny_models import ...``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

# A 2-layer, 32-wide CLIP text encoder (the SD text tower).
SMALL = {
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
}


def tokenizer():
    """A character-level CLIP tokenizer (letters, digits; anything else is <|endoftext|>)."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz0123456789":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16)


def text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(
        vocab_size=80, max_position_embeddings=16, bos_token_id=0, eos_token_id=1, **SMALL
    )
    return CLIPTextModel(cfg)


def unet(channels=(8, 16), **kwargs):
    """An 8×8-latent UNet2DConditionModel with cross-attention (LoRA targets to_q/k/v/out)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=channels,
        norm_num_groups=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        **kwargs,
    )


def vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(8, 16),
        norm_num_groups=4,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4,
        layers_per_block=1,
        sample_size=16,
    )


def scheduler(prediction_type="epsilon"):
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


def save_sd(folder: Path, seed: int = 0) -> str:
    """A tiny Stable Diffusion 1.x pipeline (no safety checker) saved with ``save_pretrained``."""
    import torch
    from diffusers import StableDiffusionPipeline

    torch.manual_seed(seed)
    pipe = StableDiffusionPipeline(
        vae=vae(),
        text_encoder=text_encoder(),
        tokenizer=tokenizer(),
        unet=unet(),
        scheduler=scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    return str(folder)


CLIP_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def save_clip(folder: Path, seed: int = 0) -> str:
    """A random tiny CLIP as an open_clip ``local-dir:`` folder; returns the model name."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": CLIP_CFG}))
    torch.manual_seed(seed)
    name = f"local-dir:{folder}"
    model, _, _ = open_clip.create_model_and_transforms(name)
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(folder / "open_clip_model.safetensors"))
    return name


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()
