"""The closed loop's per-round measurement (issue #16), scored per class on the validation split
(never the test split): a linear probe on fixed features of real ∪ accepted-so-far
(:func:`probe_scores`, ``synthesis.loop.measure=probe``), or a quick end-to-end classifier trained
on them (:func:`quick_scores`, ``classifier``)."""

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


@dataclass(frozen=True)
class Features:
    """Fixed features of labelled images: ``x`` ``[N, D]``, ``y`` ``[N]`` (what the probe fits)."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


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


def probe_scores(
    real: Features, synthetic: Features, val: Features, num_classes: int,
    synthetic_share: float, balanced_softmax: bool, l2: float = 1e-3,
) -> ClassScores:
    """A linear probe on fixed features, scored on ``val``'s features.

    The probe mirrors the end-to-end classifier's data: real rows weigh ``1 - share`` in all,
    synthetic rows ``share`` (the paper's mini-batch share), and with ``balanced_softmax`` the
    training logits carry ``log prior`` of those weights and the scored logits do not. The loss
    is convex and solved to convergence from zeros (full-batch L-BFGS), so the same features give
    the same probe: a change between rounds is the new images' effect, not training noise (the
    quick end-to-end classifier's validation accuracy moved 1-3 points from its seed alone)."""
    x = torch.from_numpy(np.concatenate([real.x, synthetic.x])).double()
    y = torch.from_numpy(np.concatenate([real.y, synthetic.y])).long()
    share = synthetic_share if len(synthetic) else 0.0
    w = torch.from_numpy(np.concatenate([
        np.full(len(real), (1 - share) / max(1, len(real))),
        np.full(len(synthetic), share / max(1, len(synthetic))),
    ]))
    mean = (w[:, None] * x).sum(0) / w.sum()  # the rows as the loss weighs them
    std = ((w[:, None] * (x - mean) ** 2).sum(0) / w.sum()).sqrt().clamp_min(1e-6)
    x = (x - mean) / std
    prior = torch.bincount(y, weights=w, minlength=num_classes).clamp_min(1e-12)
    shift = torch.log(prior / prior.sum()) if balanced_softmax else torch.zeros(num_classes)
    weight = torch.zeros(x.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], max_iter=500, tolerance_grad=1e-9,
                            tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        opt.zero_grad()
        logp = torch.log_softmax(x @ weight + bias + shift, 1)
        value = -(w * logp[torch.arange(len(y)), y]).sum() + l2 * (weight**2).sum()
        value.backward()
        return value

    opt.step(loss)
    with torch.no_grad():
        logits = ((torch.from_numpy(val.x).double() - mean) / std) @ weight + bias
    return class_scores(logits, torch.from_numpy(val.y).long(), num_classes)
