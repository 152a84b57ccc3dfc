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
import pytest
from PIL import Image


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and on a busy machine thread sync dominates.

    Not autouse: a module opts in with ``from tiny_models import one_thread  # noqa: F401`` and
    ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# A 2-layer, 32-wide CLIP text encoder (the SD text tower).
SMALL = {
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
}


def tokenizer(model_max_length: int = 16):
    """A character-level CLIP tokenizer (letters, digits; anything else is <|endoftext|>)."""
    from raysynth.bench.tiny_sd import char_tokenizer

    return char_tokenizer(model_max_length)


def text_config(**overrides):
    """The CLIPTextConfig of :func:`text_encoder` (for the tokenizer's vocab); ``overrides``
    replace or add fields (e.g. ``projection_dim``)."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        **{
            "vocab_size": 80,
            "max_position_embeddings": 16,
            "bos_token_id": 0,
            "eos_token_id": 1,
            **SMALL,
            **overrides,
        }
    )


def text_encoder(**overrides):
    from transformers import CLIPTextModel

    return CLIPTextModel(text_config(**overrides))


def unet(channels=(8, 16), **overrides):
    """An 8×8-latent UNet2DConditionModel with cross-attention (LoRA targets to_q/k/v/out);
    ``overrides`` replace or add constructor arguments."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        **{
            "sample_size": 8,
            "in_channels": 4,
            "out_channels": 4,
            "layers_per_block": 1,
            "block_out_channels": channels,
            "norm_num_groups": 4,
            "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
            "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
            "cross_attention_dim": 32,
            "attention_head_dim": 4,
            **overrides,
        }
    )


def vae(**overrides):
    """A 2-block AutoencoderKL (scale factor 2: 16×16 images ↔ 8×8 latents); ``overrides``
    replace or add constructor arguments."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        **{
            "block_out_channels": (8, 16),
            "norm_num_groups": 4,
            "down_block_types": ["DownEncoderBlock2D"] * 2,
            "up_block_types": ["UpDecoderBlock2D"] * 2,
            "latent_channels": 4,
            "layers_per_block": 1,
            "sample_size": 16,
            **overrides,
        }
    )


def scheduler(prediction_type="epsilon"):
    from raysynth.bench.tiny_sd import ddim_scheduler

    return ddim_scheduler(prediction_type)


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


def pixel_config(**overrides):
    """A class-conditional 8×8 one-channel pixel diffusion config for 3 classes (``overrides``:
    other fields of ``PixelDiffusionConfig``, e.g. the training steps)."""
    from raysynth.generate.pixel import PixelDiffusionConfig

    return PixelDiffusionConfig(
        **{
            "image_size": 8,
            "in_channels": 1,
            "num_classes": 3,
            "block_out_channels": (4, 8),
            "layers_per_block": 1,
            "norm_num_groups": 4,
            **overrides,
        }
    )


CLIP_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def save_clip(folder: Path, seed: int = 0, **model_cfg) -> str:
    """A random tiny CLIP as an open_clip ``local-dir:`` folder; returns the model name.

    ``model_cfg`` replaces or adds top-level fields of :data:`CLIP_CFG` (e.g. ``custom_text=True``
    for open_clip's CustomTextCLIP layout)."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    cfg = {**CLIP_CFG, **model_cfg}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
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


def sd_images(width: int = 16) -> tuple[list[bytes], list[int]]:
    """Four 16×``width`` RGB PNGs, dark cats (label 0) and bright dogs (label 1), and the labels."""
    rng = np.random.default_rng(0)
    images = [
        png(np.clip(rng.normal(60 + 140 * (i % 2), 20, (16, width, 3)), 0, 255).astype(np.uint8))
        for i in range(4)
    ]
    return images, [0, 1, 0, 1]


def bar_digits(n: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Digit-like 8×8 arrays: a bright bar per class (row, column or diagonal) plus noise."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = rng.uniform(0, 0.2, size=(n, 1, 8, 8)).astype(np.float32)
    for i, c in enumerate(y):
        if c == 0:
            x[i, 0, 3:5, :] = 1.0
        elif c == 1:
            x[i, 0, :, 3:5] = 1.0
        else:
            x[i, 0, np.arange(8), np.arange(8)] = 1.0
    return x, y


def digits3_protocol():
    """Bundled digits 0, 1, 7 as protocol data: 8 train, 4 "synthetic", 16 pool, 20 eval each."""
    from raysynth.config.schema import DataConfig
    from raysynth.data import load_dataset, to_tensor_array
    from raysynth.train.arrays import LabeledArrays, ProtocolData

    ds = load_dataset(DataConfig(source="digits", classes=("0", "1", "7")))
    x, y = to_tensor_array(ds.images, 1), ds.labels
    rng = np.random.default_rng(0)
    parts = {"train": [], "syn": [], "pool": [], "eval": []}
    for c in range(3):
        idx = rng.permutation(np.flatnonzero(y == c))
        parts["eval"] += list(idx[:20])
        parts["pool"] += list(idx[20:36])
        parts["train"] += list(idx[36:44])
        parts["syn"] += list(idx[44:48])
    arr = {k: LabeledArrays(x[np.array(v)], y[np.array(v)]) for k, v in parts.items()}
    return ProtocolData(arr["train"], arr["syn"], arr["pool"], arr["eval"], num_classes=3)


def train_pixel_folder(folder: Path, class_names=("0", "1", "2")) -> str:
    """A 3-step pixel model on random 8×8 data, cached in ``folder`` (the synthesis tests' model)."""
    from raysynth.generate.pixel import PixelDiffusionConfig
    from raysynth.generate.pixel_training import load_or_train

    rng = np.random.default_rng(0)
    x = rng.random((12, 1, 8, 8)).astype(np.float32)
    y = np.repeat(np.arange(3), 4)
    cfg = PixelDiffusionConfig(
        num_classes=3,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        mid_attention=False,
        train_steps=3,
        batch_size=4,
    )
    return str(load_or_train(folder, x, y, cfg, class_names=list(class_names)))


def unclip_pipeline(image_processor=None):
    """A tiny Stable unCLIP img2img pipeline (v-prediction, 16×16 images, a 32×32 CLIP image
    tower); ``image_processor``: its feature extractor (default: a 32-pixel CLIPImageProcessor)."""
    from diffusers import DDPMScheduler, StableUnCLIPImg2ImgPipeline
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import (
        StableUnCLIPImageNormalizer,
    )
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    return StableUnCLIPImg2ImgPipeline(
        feature_extractor=image_processor or CLIPImageProcessor(crop_size=32, size=32),
        image_encoder=CLIPVisionModelWithProjection(
            CLIPVisionConfig(image_size=32, patch_size=8, projection_dim=32, **SMALL)
        ),
        image_normalizer=StableUnCLIPImageNormalizer(embedding_dim=32),
        image_noising_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2"),
        tokenizer=tokenizer(),
        text_encoder=text_encoder(),
        unet=unet(class_embed_type="projection", projection_class_embeddings_input_dim=64),
        scheduler=scheduler("v_prediction"),
        vae=vae(),
    )


def hub_cached_sd(home: Path, hub_id: str, commit: str) -> Path:
    """A float32 tiny Stable Diffusion pipeline in the Hugging Face cache under ``home`` as
    ``hf download hub_id`` leaves it (blobs, a snapshot of symlinks, refs/main); returns the
    snapshot folder."""
    import torch
    from diffusers import StableDiffusionPipeline

    torch.manual_seed(0)
    pipe = StableDiffusionPipeline(
        vae=vae(), text_encoder=text_encoder(), tokenizer=tokenizer(), unet=unet(),
        scheduler=scheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    return hub_cache(home, hub_id, commit, pipe)


def hub_cache(home: Path, hub_id: str, commit: str, pipe) -> Path:
    """``pipe`` saved into the Hugging Face cache under ``home`` as ``hf download hub_id`` leaves
    it (blobs, a snapshot of symlinks, refs/main); returns the snapshot folder."""
    import os
    import shutil

    repo = Path(home) / "hub" / f"models--{hub_id.replace('/', '--')}"
    saved = Path(home) / "saved"
    pipe.save_pretrained(saved)
    snapshot = repo / "snapshots" / commit
    for i, path in enumerate(sorted(p for p in saved.rglob("*") if p.is_file())):
        rel = path.relative_to(saved)
        blob = repo / "blobs" / f"blob{i:04d}"
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(path, blob)
        (snapshot / rel).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / rel).symlink_to(os.path.relpath(blob, (snapshot / rel).parent))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    shutil.rmtree(saved)
    return snapshot


def image_table(path: Path, labels, values, ids, accepted=None, size: int = 8) -> str:
    """A tiny image table (``sample_id``, ``label``, ``image``, optional ``accepted``) at
    ``path``: row i's image is a ``size``-px grey square of value ``values[i]``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from raysynth import columns as col
    from raysynth.data.images import encode_png

    pngs = [encode_png(np.full((size, size), v, np.uint8)) for v in values]
    cols = {col.SAMPLE_ID: ids, col.LABEL: pa.array(labels, pa.int64()),
            col.IMAGE: pa.array(pngs, pa.binary())}
    if accepted is not None:
        cols[col.ACCEPTED] = accepted
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(cols), path)
    return str(path)
