"""The criteria of feedback guidance (METHODS §2, paper 002), each per sample and to be *raised*:
``loss`` (cross-entropy), ``entropy`` and ``hardness`` (the negative Gaussian log-likelihood of
the classifier's features under per-class Gaussians of the real features, :func:`class_gaussians`).
:mod:`raysynth.generate.guidance` differentiates them during sampling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from raysynth.errors import ConfigError, DataError


def criterion_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per sample: ``logits [B, K]``, ``y [B]`` → ``[B]``."""
    return F.cross_entropy(logits.float(), y, reduction="none")


def criterion_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of ``softmax(logits)`` per sample: ``[B, K]`` → ``[B]`` (nats)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def criterion_hardness(
    feats: torch.Tensor,
    y: torch.Tensor,
    mean: torch.Tensor,
    precision: torch.Tensor,
    logdet: torch.Tensor,
) -> torch.Tensor:
    """``½[(φ−μ_y)ᵀ Σ_y⁻¹ (φ−μ_y) + ln det Σ_y + k ln 2π]`` per sample (paper 002 eq. 6).

    ``feats [B, k]``, ``y [B]``, ``mean [C, k]``, ``precision [C, k, k]``, ``logdet [C]`` (ln det Σ).
    """
    feats = feats.float()
    d = feats - mean[y]
    maha = torch.einsum("bi,bij,bj->b", d, precision[y], d)
    return 0.5 * (maha + logdet[y] + feats.shape[-1] * math.log(2 * math.pi))


@dataclass(eq=False)
class ClassGaussians:
    """Per-class Gaussians of real features: ``mean [C, k]``, ``precision [C, k, k]``, ``logdet [C]``."""

    mean: torch.Tensor
    precision: torch.Tensor
    logdet: torch.Tensor

    def to(self, device: str | torch.device) -> ClassGaussians:
        return ClassGaussians(
            self.mean.to(device), self.precision.to(device), self.logdet.to(device)
        )


def ledoit_wolf_shrinkage(centered: torch.Tensor) -> float:
    """Ledoit–Wolf's estimate of the shrinkage toward ``(tr S / k) I`` for centred rows ``[n, k]``.

    The same estimator as scikit-learn's ``ledoit_wolf_shrinkage`` (S the biased covariance).
    """
    n, k = centered.shape
    x2 = centered**2
    emp_trace = x2.sum(0) / n
    mu = emp_trace.sum() / k
    beta_ = (x2.T @ x2).sum()
    delta_ = ((centered.T @ centered) ** 2).sum() / n**2
    beta = (beta_ / n - delta_) / (k * n)
    delta = (delta_ - 2 * mu * emp_trace.sum() + k * mu**2) / k
    beta = torch.minimum(beta, delta)
    return 0.0 if float(beta) == 0 else float(beta / delta)


def class_gaussians(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    shrinkage: float | str = "ledoit-wolf",
    eps: float = 1e-4,
) -> ClassGaussians:
    """Mean, regularised precision and log-determinant per class from real ``features [N, k]``.

    ``Σ_c = (1−δ_c) S_c + δ_c ν_c I + ε ν̄ I``: ``S_c`` the class's biased sample covariance,
    shrunk toward the scaled identity ``ν_c I`` (``ν_c = tr S_c / k``) with ``δ_c`` Ledoit–Wolf's
    estimate (``shrinkage="ledoit-wolf"``) or a given number in [0, 1]; then a floor of ``ε``
    times the mean per-dimension variance ``ν̄`` over classes, so Σ is positive definite even with
    fewer samples than dimensions or zero-variance features. A class with one sample takes the
    pooled scale (``ν_c = ν̄``, ``δ_c = 1``). Computed in float64, returned as float32 on the
    features' device; a class with no sample is a :class:`DataError`.
    """
    if isinstance(shrinkage, str) and shrinkage != "ledoit-wolf":
        raise ConfigError(
            f"shrinkage must be 'ledoit-wolf' or a number in [0, 1], got {shrinkage!r}"
        )
    if not isinstance(shrinkage, str) and not 0 <= shrinkage <= 1:
        raise ConfigError(f"shrinkage must lie in [0, 1], got {shrinkage}")
    feats = features.detach().to(torch.float64)
    labels = labels.detach().to(feats.device).long()
    eye = torch.eye(feats.shape[1], dtype=torch.float64, device=feats.device)
    means, covs, scales, shrinks = _class_moments(feats, labels, num_classes, shrinkage)
    known = [s for s in scales if s is not None]
    pooled = sum(known) / len(known) if known and sum(known) > 0 else 1.0
    sigmas = []
    for cov, nu, delta in zip(covs, scales, shrinks):
        nu = pooled if nu is None else nu
        sigmas.append((1 - delta) * cov + delta * nu * eye + eps * pooled * eye)
    chol = torch.linalg.cholesky(torch.stack(sigmas))
    precision = torch.cholesky_inverse(chol)
    logdet = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
    return ClassGaussians(torch.stack(means).float(), precision.float(), logdet.float())


def _class_moments(
    feats: torch.Tensor, labels: torch.Tensor, num_classes: int, shrinkage: float | str
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[float | None], list[float]]:
    """Per class: mean, biased covariance, scale ``ν_c = tr S_c / k`` (None with one sample) and
    shrinkage ``δ_c`` (1 with one sample)."""
    k = feats.shape[1]
    means, covs, scales, shrinks = [], [], [], []
    for c in range(num_classes):
        rows = feats[labels == c]
        if len(rows) == 0:
            raise DataError(f"class {c} has no real features; hardness needs each class's Gaussian")
        mu = rows.mean(0)
        centered = rows - mu
        cov = centered.T @ centered / len(rows)
        means.append(mu)
        covs.append(cov)
        scales.append(float(cov.trace()) / k if len(rows) > 1 else None)
        if len(rows) < 2:
            shrinks.append(1.0)
        else:
            shrinks.append(
                ledoit_wolf_shrinkage(centered) if shrinkage == "ledoit-wolf" else shrinkage
            )
    return means, covs, scales, shrinks


