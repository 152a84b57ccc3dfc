"""Embed + filter as Ray Data actor-pool stages (METHODS §3).

``ImageEmbedder`` embeds rows of PNG bytes (used once per run for the real images);
``FilterScorer`` embeds generated images and scores each against the real image its plan row
names (``cond_id``): ``real_cos``, the class threshold, ``accepted`` and — when the embedder has
a text tower — ``text_cos`` to its prompt. Both load their model once per actor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from raysynth import columns as col
from raysynth.config.schema import FilterConfig


@dataclass
class EmbedderSpec:
    """What an actor needs to build its embedder (small, picklable)."""

    filter: FilterConfig
    classifier_folder: str = ""
    channels: int = 3
    image_size: int = 0
    device: str = "auto"


def _build(spec: EmbedderSpec) -> Any:
    import torch

    from raysynth.filter.embedders import build_embedder

    device = spec.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return build_embedder(
        spec.filter,
        classifier_folder=spec.classifier_folder,
        channels=spec.channels,
        image_size=spec.image_size,
        device=device,
    )


class ImageEmbedder:
    """Rows with ``image`` (PNG) in, the same rows plus ``embedding`` (list of floats) out."""

    def __init__(self, spec: EmbedderSpec) -> None:
        self.embedder = _build(spec)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        emb = self.embedder.embed_images(list(batch[col.IMAGE]))
        return {col.SAMPLE_ID: batch[col.SAMPLE_ID], col.LABEL: batch[col.LABEL],
                "embedding": list(emb.astype(np.float32))}


@dataclass
class FilterSpec:
    """The filter's inputs: real embeddings by sample id, per-class thresholds and (optional)
    per-class prompt embeddings for ``text_cos``."""

    embedder: EmbedderSpec
    real_embeddings: dict[str, np.ndarray]
    thresholds: np.ndarray  # [C]; NaN = accept every image of the class
    enabled: bool = True


class FilterScorer:
    """Scores generated images against their real image; accept when ``cos > τ_class``."""

    def __init__(self, spec: FilterSpec) -> None:
        self.spec = spec
        self.embedder = _build(spec.embedder)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        from raysynth.filter.threshold import cosine_to_reference

        n = len(batch[col.SAMPLE_ID])
        images = list(batch[col.IMAGE])
        has = np.array([img is not None for img in images])
        real_cos = np.full(n, np.nan)
        text_cos = np.full(n, np.nan)
        if has.any():
            emb = self.embedder.embed_images([img for img in images if img is not None])
            refs = np.stack([self.spec.real_embeddings[str(c)] for c in batch[col.COND_ID][has]])
            real_cos[has] = cosine_to_reference(emb, refs)
            if getattr(self.embedder, "has_text", False):
                prompts = [str(p) for p in batch[col.PROMPT][has]]
                text = self.embedder.embed_texts(prompts)
                text_cos[has] = cosine_to_reference(emb, text)
        labels = np.asarray(batch[col.LABEL], dtype=np.int64)
        tau = self.spec.thresholds[labels]
        if self.spec.enabled:
            accepted = has & (np.isnan(tau) | (real_cos > tau))
        else:
            accepted = has.copy()
        out = dict(batch)
        out[col.REAL_COS] = real_cos
        out[col.TEXT_COS] = text_cos
        out["threshold"] = tau
        out[col.ACCEPTED] = accepted
        return out
