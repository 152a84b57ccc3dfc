"""The closed loop's per-round measurement (issue #16), scored per class on the validation split
(never the test split): a linear probe on fixed features of real ∪ accepted-so-far
(:func:`probe_scores`, ``synthesis.loop.measure=probe``), or a quick end-to-end classifier trained
on them (:func:`quick_scores`, ``classifier``); and the probe's learned per-class trust in the
synthetic images (:func:`probe_trust`, ``synthesis.loop.trust=probe``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from raysynth.config.schema import EndToEndConfig
from raysynth.devices import torch_threads
from raysynth.train.arrays import LabeledArrays
from raysynth.train.classifier import fit_end_to_end


@dataclass(frozen=True)
class ClassScores:
    """Per class: validation accuracy, mean predictive entropy (nats), validation images; the
    overall validation accuracy; and the learned trust in each class's synthetic images
    (``None``: not measured, the loop counts 1)."""

    accuracy: np.ndarray
    entropy: np.ndarray
    count: np.ndarray
    overall: float
    trust: np.ndarray | None = None


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
    logits = _probe_logits(real, synthetic, val, num_classes, synthetic_share, balanced_softmax,
                           l2, np.ones(num_classes))
    return class_scores(logits, torch.from_numpy(val.y).long(), num_classes)


TRUST_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)
TRUST_TOLERANCE = (1e-6, 1e-9)  # L-BFGS gradient / change tolerances of the search's fits


def probe_trust(
    real: Features, synthetic: Features, val: Features, num_classes: int,
    synthetic_share: float, balanced_softmax: bool, l2: float = 1e-3,
    grid: Sequence[float] = TRUST_GRID, sweeps: int = 2,
) -> np.ndarray:
    """The probe's analogue of the UniCon weight search: a weight ``w_c`` in ``grid`` on class
    c's synthetic rows (their loss × ``w_c``), chosen on the validation split by coordinate
    ascent on the probe's validation log-likelihood — classes in index order, each trying every
    grid value with the others held, from all ones, until a sweep changes nothing (at most
    ``sweeps``). Log-likelihood rather than accuracy: with ~20 validation images a class's
    accuracy moves in 5-point steps and most grid values tie, while the likelihood (what the
    probe fits) still ranks them. Exact ties keep the larger weight. A class without synthetic
    rows keeps 1 (nothing to distrust). Each trial's probe is fitted from zeros to a looser
    tolerance than :func:`probe_scores` (3-4x faster on digits; in 3 of 4 rounds compared the
    same weights as strict fits, one class differed in the fourth): a trial's result does not
    depend on the search's path."""
    w = np.ones(num_classes)
    present = np.bincount(synthetic.y, minlength=num_classes) > 0
    if not present.any():
        return w
    yv = torch.from_numpy(val.y).long()

    def loglik(weights: np.ndarray) -> float:
        logits = _probe_logits(real, synthetic, val, num_classes, synthetic_share,
                               balanced_softmax, l2, weights, TRUST_TOLERANCE)
        return float(torch.log_softmax(logits, 1)[torch.arange(len(yv)), yv].mean())

    best = loglik(w)
    for _ in range(sweeps):
        changed = False
        for c in np.flatnonzero(present):
            for v in sorted(grid, reverse=True):
                if v == w[c]:
                    continue
                trial = w.copy()
                trial[c] = v
                ll = loglik(trial)
                if ll > best:
                    best, w, changed = ll, trial, True
        if not changed:
            break
    return w


def _probe_logits(
    real: Features, synthetic: Features, val: Features, num_classes: int,
    synthetic_share: float, balanced_softmax: bool, l2: float, class_weight: np.ndarray,
    tolerance: tuple[float, float] = (1e-9, 1e-12),
) -> torch.Tensor:
    """The probe (``synthetic`` rows of class c weighed × ``class_weight[c]``) fitted from zeros
    to convergence (L-BFGS ``tolerance_grad``, ``tolerance_change``), its unshifted logits on
    ``val``."""
    x = torch.from_numpy(np.concatenate([real.x, synthetic.x])).double()
    y = torch.from_numpy(np.concatenate([real.y, synthetic.y])).long()
    share = synthetic_share if len(synthetic) else 0.0
    w = torch.from_numpy(np.concatenate([
        np.full(len(real), (1 - share) / max(1, len(real))),
        np.full(len(synthetic), share / max(1, len(synthetic))) * class_weight[synthetic.y],
    ]))
    keep = w > 0  # rows weighed 0 take no part (nor in the feature scaling)
    x, y, w = x[keep], y[keep], w[keep]
    mean = (w[:, None] * x).sum(0) / w.sum()  # the rows as the loss weighs them
    std = ((w[:, None] * (x - mean) ** 2).sum(0) / w.sum()).sqrt().clamp_min(1e-6)
    x = (x - mean) / std
    prior = torch.bincount(y, weights=w, minlength=num_classes).clamp_min(1e-12)
    shift = torch.log(prior / prior.sum()) if balanced_softmax else torch.zeros(num_classes)
    weight = torch.zeros(x.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], max_iter=500, tolerance_grad=tolerance[0],
                            tolerance_change=tolerance[1], history_size=20,
                            line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        opt.zero_grad()
        logp = torch.log_softmax(x @ weight + bias + shift, 1)
        value = -(w * logp[torch.arange(len(y)), y]).sum() + l2 * (weight**2).sum()
        value.backward()
        return value

    with torch_threads(1):  # a fit this small is overhead-bound: 20-40x faster on one thread
        opt.step(loss)
    with torch.no_grad():
        return ((torch.from_numpy(val.x).double() - mean) / std) @ weight + bias
