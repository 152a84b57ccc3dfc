"""Embed + filter as Ray Data actor-pool stages (METHODS §3).

``ImageEmbedder`` embeds rows of PNG bytes (once per run for the real images; AiR's zero-shot
pseudo-labeller extends it);
``FilterScorer`` embeds generated images and scores each against the real image its plan row
names (``cond_id``; with ``filter.reference=first_real`` its class's first real image): ``real_cos``, the class threshold, ``accepted`` and — when the embedder has
a text tower — ``text_cos`` to its prompt. Both load their model once per actor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from raysynth import columns as col
from raysynth.config.schema import FilterConfig
from raysynth.storage import RemotePath


@dataclass
class EmbedderSpec:
    """What an actor needs to build its embedder (small, picklable)."""

    filter: FilterConfig
    classifier_folder: str | RemotePath = ""  # a RemotePath: in the run directory
    channels: int = 3
    image_size: int = 0
    device: str = "auto"


def _build(spec: EmbedderSpec) -> Any:
    from raysynth.devices import limit_threads, resolve_device
    from raysynth.filter.embedders import build_embedder

    pool = spec.filter.pool
    device = str(resolve_device(spec.device, "filter.device", gpus=pool.gpus_per_actor))
    limit_threads(device, pool.cpus_per_actor)
    return build_embedder(
        spec.filter,
        classifier_folder=spec.classifier_folder,
        channels=spec.channels,
        image_size=spec.image_size,
        device=device,
    )


class ImageEmbedder:
    """Rows with ``image`` (PNG) in; every other column (``sample_id``, ``label`` when there is
    one, ...) plus ``embedding`` (list of floats) out — the image bytes are dropped."""

    def __init__(self, spec: EmbedderSpec) -> None:
        self.embedder = _build(spec)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        emb = self.embedder.embed_images(list(batch[col.IMAGE]))
        out: dict[str, Any] = {k: v for k, v in batch.items() if k != col.IMAGE}
        out[col.EMBEDDING] = list(emb.astype(np.float32))
        return out


@dataclass
class FilterSpec:
    """The filter's inputs: real embeddings by sample id, per-class thresholds and (optional)
    per-class prompt embeddings for ``text_cos``."""

    embedder: EmbedderSpec
    real_embeddings: dict[str, np.ndarray]
    thresholds: np.ndarray  # [C]; NaN = accept every image of the class
    class_names: tuple[str, ...] = ()
    # filter.reference=first_real: {class: its first real image's id}; None = each row's cond_id
    first_real: dict[int, str] | None = None


class FilterScorer:
    """Scores generated images against their real image; accept when ``cos > τ_class``."""

    def __init__(self, spec: FilterSpec) -> None:
        self.spec = spec
        self.embedder = _build(spec.embedder)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        from raysynth.filter.threshold import cosine_to_reference, reference_ids

        n = len(batch[col.SAMPLE_ID])
        images = list(batch[col.IMAGE])
        has = np.array([img is not None for img in images])
        labels = np.asarray(batch[col.LABEL], dtype=np.int64)
        real_cos = np.full(n, np.nan)
        text_cos = np.full(n, np.nan)
        own = np.full(n, np.nan)
        if has.any():
            pngs = [img for img in images if img is not None]
            emb, probs = self._embed(pngs)
            ref_ids = reference_ids(batch[col.COND_ID][has], labels[has], self.spec.first_real)
            refs = np.stack([self.spec.real_embeddings[i] for i in ref_ids])
            real_cos[has] = cosine_to_reference(emb, refs)
            if getattr(self.embedder, "has_text", False):
                prompts = [str(p) for p in batch[col.PROMPT][has]]
                text = self.embedder.embed_texts(prompts)
                text_cos[has] = cosine_to_reference(emb, text)
            if probs is not None:
                own[has] = probs[np.arange(len(pngs)), labels[has]]
        tau = self.spec.thresholds[labels]
        accepted = has & (np.isnan(tau) | (real_cos > tau))
        out = dict(batch)
        out[col.REAL_COS] = real_cos
        out[col.TEXT_COS] = text_cos
        out[col.THRESHOLD] = tau
        out[col.ACCEPTED] = accepted
        out[col.OWN_PROB] = own
        return out

    def _embed(self, pngs: list[bytes]) -> tuple[np.ndarray, np.ndarray | None]:
        """Embeddings, and each image's class probabilities for the AiR selection: CLIP
        zero-shot when the embedder has a text tower, else the real-split classifier's softmax
        (from the same forward pass as its features)."""
        if getattr(self.embedder, "has_text", False):
            emb = self.embedder.embed_images(pngs)
            if not self.spec.class_names:
                return emb, None
            from raysynth.filter.clip import zero_shot_probs

            return emb, zero_shot_probs(self.embedder, emb, list(self.spec.class_names))
        if hasattr(self.embedder, "embed_with_probs"):
            return self.embedder.embed_with_probs(pngs)
        return self.embedder.embed_images(pngs), None
