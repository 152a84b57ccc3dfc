"""The closed loop's per-round measurement (issue #16): a quick end-to-end classifier on real ∪
accepted-so-far, scored per class on the validation split (never the test split)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from raysynth.config.schema import EndToEndConfig
from raysynth.train.arrays import LabeledArrays
from raysynth.train.classifier import fit_end_to_end


@dataclass(frozen=True)
class ClassScores:
    """Per class: validation accuracy, mean predictive entropy (nats), validation images; and the
    overall validation accuracy."""

    accuracy: np.ndarray
    entropy: np.ndarray
    count: np.ndarray
    overall: float


@torch.no_grad()
def class_scores(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> ClassScores:
    """Per-class accuracy and mean entropy of ``softmax(logits)`` (NaN for a class with no
    validation image)."""
    logp = torch.log_softmax(logits.double(), 1)
    ent = -(logp.exp() * logp).sum(1).numpy()
    hit = (logits.argmax(1) == labels).numpy()
    y = labels.numpy()
    count = np.bincount(y, minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.bincount(y, hit.astype(float), num_classes) / count
        mean_ent = np.bincount(y, ent, num_classes) / count
    return ClassScores(acc, mean_ent, count, float(hit.mean()) if len(y) else float("nan"))


def quick_scores(
    real: LabeledArrays, synthetic: LabeledArrays, val: LabeledArrays, num_classes: int,
    encoder_cfg: dict[str, Any], cfg: EndToEndConfig, epochs: int, aug_kind: str, seed: int,
) -> ClassScores:
    """Train the end-to-end classifier (``cfg`` with ``epochs``) in this process on CPU and score
    it on ``val``. Deterministic for the same inputs (seeded, one thread's order of rows)."""
    model = fit_end_to_end(real, synthetic, num_classes, encoder_cfg, replace(cfg, epochs=epochs),
                           aug_kind, seed, torch.device("cpu"))
    logits = model(torch.from_numpy(val.x))
    return class_scores(logits, torch.from_numpy(val.y), num_classes)
