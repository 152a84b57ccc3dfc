"""The choice of embedder for filtering (METHODS §3): ``filter.embedder`` names it, ``auto``
embeds small images with the real-split classifier and photos with open_clip.

The embedders themselves share the :class:`~raysynth.filter.embedding.Embedder` protocol:
:class:`~raysynth.filter.classifier_embedder.ClassifierEmbedder` (penultimate features of a
raysynth classifier checkpoint) and :class:`~raysynth.filter.clip.ClipEmbedder` (open_clip).
"""

from __future__ import annotations

from pathlib import Path

import torch

from raysynth.config.schema import FilterConfig
from raysynth.errors import ConfigError
from raysynth.filter.classifier_embedder import ClassifierEmbedder
from raysynth.filter.clip import ClipEmbedder
from raysynth.filter.embedding import Embedder


def uses_classifier(cfg: FilterConfig, image_size: int) -> bool:
    """``auto`` embeds small images (≤ 32 px) with the real-split classifier, photos with CLIP."""
    return cfg.embedder == "classifier" or (cfg.embedder == "auto" and image_size <= 32)


def build_embedder(
    filter_cfg: FilterConfig,
    *,
    classifier_folder: str | Path | None,
    channels: int,
    image_size: int,
    device: str | torch.device = "cpu",
) -> Embedder:
    """The embedder ``filter.embedder`` names (``auto``: classifier when ``image_size <= 32``)."""
    if uses_classifier(filter_cfg, image_size):
        if not classifier_folder:
            raise ConfigError(
                "filter.embedder uses the classifier but no trained classifier checkpoint was "
                "given; train one on the real split first or set filter.embedder=open_clip"
            )
        return ClassifierEmbedder(
            classifier_folder, channels, image_size, device, filter_cfg.pool.batch_size
        )
    return ClipEmbedder(
        filter_cfg.clip_model, filter_cfg.clip_pretrained, device, filter_cfg.pool.batch_size
    )
