"""What the Ray benches build before they measure: tiny models, configs and plans.

Ten classes of 8×8 one-channel images: a pixel diffusion model trained a few steps on random
images (speed does not depend on the weights), the default config at a bench's batch size and
sampling steps, exactly N plan rows over (fictitious) real images, and for the ``filter`` bench a
freshly initialised classifier checkpoint with the filter spec the product would compute from it.
Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from raysynth import columns as col
from raysynth.config import build_config
from raysynth.config.schema import RunConfig
from raysynth.data.images import encode_png
from raysynth.filter.stage import EmbedderSpec, FilterSpec, ImageEmbedder
from raysynth.filter.threshold import class_thresholds
from raysynth.generate.generators import GeneratorSpec
from raysynth.generate.pixel import PixelDiffusionConfig
from raysynth.generate.pixel_training import load_or_train
from raysynth.plan.quotas import plan_round
from raysynth.train.checkpoint import write_checkpoint
from raysynth.train.models import build_model, encoder_config

CLASSES = [str(c) for c in range(10)]
REAL_PER_CLASS = 4


def train_tiny_pixel_model(root: str | Path, tiny: bool = False, train_steps: int = 3) -> str:
    """A pixel model folder for 8×8 one-channel images of 10 classes, trained ``train_steps``
    steps on random images. ``tiny=False``: the ``digits`` preset's architecture
    (:class:`PixelDiffusionConfig` defaults); ``tiny=True``: 8/16 channels, no attention (the
    cheapest real generator)."""
    rng = np.random.default_rng(0)
    x = rng.random((40, 1, 8, 8)).astype(np.float32)
    y = np.arange(40) % len(CLASSES)
    arch: dict[str, Any] = {}
    if tiny:
        arch = {
            "block_out_channels": (8, 16),
            "layers_per_block": 1,
            "norm_num_groups": 4,
            "mid_attention": False,
        }
    cfg = PixelDiffusionConfig(
        num_classes=len(CLASSES), train_steps=train_steps, batch_size=16, **arch
    )
    return str(load_or_train(root, x, y, cfg, class_names=CLASSES, device="cpu"))


def bench_config(batch: int, steps: int, **overrides: Any) -> RunConfig:
    """The default config with the bench's batch size and sampling steps (dotted overrides)."""
    return build_config(
        overrides={
            "synthesis.pool.batch_size": batch,
            "synthesis.generator.num_steps": steps,
            **overrides,
        }
    )


def generator_spec(cfg: RunConfig, pixel_folder: str) -> GeneratorSpec:
    return GeneratorSpec(
        cfg.synthesis.generator,
        cfg.synthesis.feedback,
        CLASSES,
        pixel_folder=pixel_folder,
        channels=1,
        image_size=8,
    )


def real_ids() -> dict[int, list[str]]:
    """The (fictitious) real images the plan conditions on and the filter compares with."""
    return {c: [f"real-{c}-{i}" for i in range(REAL_PER_CLASS)] for c in range(len(CLASSES))}


def plan_rows(cfg: RunConfig, images: int, round_: int = 0) -> list[dict[str, Any]]:
    """Exactly ``images`` plan rows spread over the classes."""
    c = len(CLASSES)
    counts = {k: images // c + (k < images % c) for k in range(c)}
    counts = {k: n for k, n in counts.items() if n}
    return plan_round(cfg.synthesis, CLASSES, real_ids(), counts, cfg.seed, round_)


def write_classifier(folder: Path, cfg: RunConfig) -> Path:
    """A freshly initialised small-CNN classifier checkpoint of the default encoder size."""
    enc = encoder_config("small_cnn", 1, 8, cfg.encoder.width, cfg.encoder.feat_dim)
    model_cfg = {"kind": "classifier", "encoder": enc, "num_classes": len(CLASSES)}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(model_cfg)
    return write_checkpoint(folder, model.eval(), model_cfg)


def filter_spec(cfg: RunConfig, classifier: Path, device: str) -> FilterSpec:
    """Embeddings of random real images (one per real id) and per-class thresholds from their
    pairs, as the product computes them (``filter.threshold=pairs``)."""
    espec = EmbedderSpec(cfg.filter, str(classifier), channels=1, image_size=8, device=device)
    rng = np.random.default_rng(0)
    ids = [i for c in sorted(real_ids()) for i in real_ids()[c]]
    pngs = [encode_png(rng.integers(0, 256, (8, 8), dtype=np.uint8)) for _ in ids]
    batch = {
        col.SAMPLE_ID: np.array(ids, dtype=object),
        col.LABEL: np.array([int(i.split("-")[1]) for i in ids]),
        col.IMAGE: np.array(pngs, dtype=object),
    }
    emb = ImageEmbedder(espec)(batch)[col.EMBEDDING]
    thresholds = class_thresholds(
        np.stack(emb), batch[col.LABEL], len(CLASSES), cfg.filter.pairs, cfg.seed
    )
    return FilterSpec(espec, dict(zip(ids, emb)), thresholds)
