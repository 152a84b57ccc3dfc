"""Feedback guidance (METHODS §2, paper 002): steer sampling toward samples a classifier finds hard.

The sampling score becomes ``∇log p(x) + γ ∇log p(y|x) + ω ∇C(x, y, f)``: classifier-free guidance
(the sampler's job) plus the gradient of a usefulness criterion ``C`` of a classifier ``f`` trained on
the real data. ``C`` is evaluated on the DDIM *predicted* clean sample ``x̂0`` at step t, never on a
full reverse chain, and its gradient is added to ``x_t`` before the scheduler step (every ``every``-th
step; 6 of 30 by default).

The gradient. ``FeedbackGuidance.apply`` differentiates ``C(decode(x̂0(x_t)))`` with respect to
``x_t`` by autograd. By default the model output is taken as given (detached), so the UNet is not
backpropagated: ``∂x̂0/∂x_t`` is then ``1/√ᾱ_t`` (epsilon) or ``√ᾱ_t`` (v-prediction) times the
identity, and the step points along ``∇_{x̂0} C`` — the direction that makes the predicted image
harder. With the default ``rescale=True`` the per-sample norm is set to ``ω·‖x_t‖`` (the reference
implementation's rescaling), so that scalar cancels exactly. This costs one decode + classifier
forward/backward per guided step instead of an extra UNet forward/backward; ``through_model=True``
re-runs the model under autograd (the sampler passes ``model_fn``) and includes the UNet Jacobian,
as the reference code does. For latent models ``decode`` (e.g. a VAE decode) is differentiated too,
so the gradient reaches the latents.

Criteria (each per sample, to be *raised*: larger means a harder, more informative sample):

- ``loss``: ``CE(f(x), y)``;
- ``entropy``: ``H(softmax(f(x)))``;
- ``hardness``: the negative Gaussian log-likelihood of the features under the class
  ``½[(φ−μ_y)ᵀ Σ_y⁻¹ (φ−μ_y) + ln det Σ_y + k ln 2π]`` with ``φ = f.features(x)`` and ``μ_y``,
  ``Σ_y⁻¹``, ``ln det Σ_y`` from :func:`class_gaussians` on the real features.

The classifier must be in eval mode (batch norm in train mode would couple the samples of a batch).
Sampling must run under ``torch.no_grad()``, not ``torch.inference_mode()``: tensors made in
inference mode cannot enter autograd.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from raysynth.errors import ConfigError, DataError

CRITERIA = ("loss", "entropy", "hardness")


def predicted_x0(
    x_t: torch.Tensor,
    model_output: torch.Tensor,
    alphas_cumprod_t: torch.Tensor | float,
    prediction_type: str,
) -> torch.Tensor:
    """The clean sample the model predicts at step t (paper 002 eq. 11), ``x_t: [B, C, H, W]``.

    epsilon: ``(x_t − √(1−ᾱ) ε̂)/√ᾱ``; v_prediction: ``√ᾱ x_t − √(1−ᾱ) v̂``; sample: ``model_output``.
    ``alphas_cumprod_t`` is ᾱ_t: a number, a 0-d tensor or one value per sample ``[B]``.
    """
    if prediction_type == "sample":
        return model_output
    a = torch.as_tensor(alphas_cumprod_t, device=x_t.device, dtype=x_t.dtype)
    if a.ndim == 1:
        a = a.view(-1, *([1] * (x_t.ndim - 1)))
    if prediction_type == "epsilon":
        return (x_t - (1 - a) ** 0.5 * model_output) / a**0.5
    if prediction_type == "v_prediction":
        return a**0.5 * x_t - (1 - a) ** 0.5 * model_output
    raise ConfigError(
        f"prediction_type {prediction_type!r} is not supported; the scheduler config must say "
        "epsilon, v_prediction or sample"
    )


# 1. criteria -----------------------------------------------------------------------------------


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


# 2. guidance -----------------------------------------------------------------------------------


def _to_unit_range(x: torch.Tensor) -> torch.Tensor:
    return (x + 1) / 2


@dataclass(eq=False)
class FeedbackGuidance:
    """Feedback guidance with one criterion, applied every ``every``-th sampling step.

    - ``criterion``: ``loss``, ``entropy`` or ``hardness`` (needs ``gaussians`` and a classifier
      with a ``features(x)`` method returning ``[B, k]``);
    - ``scale``: ω; 0 disables guidance exactly (``apply`` returns ``x_t`` itself);
    - ``every``: guide at step indices ``0, every, 2·every, …`` (``i % every == 0``, as the reference);
    - ``rescale``: True adds ``ω·‖x_t‖/‖∇‖·∇`` per sample (reference code), False adds ``ω·∇``;
    - ``classifier``: any module returning logits ``[B, K]`` (eval mode);
    - ``decode``: model space → pixels in [-1, 1] (a VAE decode for latent models; identity if None);
    - ``input_transform``: pixels in [-1, 1] → classifier input (default ``(x+1)/2``, i.e. [0, 1]);
    - ``through_model``: backpropagate through the model output too (see module doc).
    """

    criterion: str = "entropy"
    scale: float = 0.0
    every: int = 5
    rescale: bool = True
    classifier: torch.nn.Module | None = None
    gaussians: ClassGaussians | None = None
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None
    input_transform: Callable[[torch.Tensor], torch.Tensor] | None = _to_unit_range
    through_model: bool = False

    def __post_init__(self) -> None:
        if self.criterion not in CRITERIA:
            raise ConfigError(f"feedback criterion {self.criterion!r}; choose one of {CRITERIA}")
        if self.every < 1:
            raise ConfigError(f"feedback every must be >= 1, got {self.every}")
        if not math.isfinite(self.scale):
            raise ConfigError(f"feedback scale must be finite, got {self.scale}")
        if self.classifier is None:
            raise ConfigError("feedback guidance needs a classifier (a module returning logits)")
        if self.criterion == "hardness":
            if self.gaussians is None:
                raise ConfigError(
                    "criterion 'hardness' needs gaussians=class_gaussians(real features, labels, C)"
                )
            if not callable(getattr(self.classifier, "features", None)):
                raise ConfigError(
                    "criterion 'hardness' needs a classifier with a features(x) method"
                )

    def is_active(self, step_index: int) -> bool:
        """Whether ``apply`` changes ``x_t`` at this step."""
        return self.scale != 0 and step_index % self.every == 0

    def evaluate(self, x0: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The criterion ``[B]`` of clean samples ``x0`` in model space (differentiable)."""
        x = self.decode(x0) if self.decode is not None else x0
        if self.input_transform is not None:
            x = self.input_transform(x)
        if self.criterion == "hardness":
            g = self.gaussians.to(x.device)
            return criterion_hardness(self.classifier.features(x), y, g.mean, g.precision, g.logdet)
        logits = self.classifier(x)
        return criterion_loss(logits, y) if self.criterion == "loss" else criterion_entropy(logits)

    def apply(
        self,
        step_index: int,
        x_t: torch.Tensor,
        model_output: torch.Tensor,
        t: int | torch.Tensor,
        alphas_cumprod: torch.Tensor,
        prediction_type: str,
        y: torch.Tensor,
        model_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(x_t + ω·g, C(x̂0(x_t)))`` at a guided step, ``(x_t, None)`` (the same tensor) otherwise.

        ``g = ∇_{x_t} C(x̂0(x_t))`` (rescaled per sample when ``rescale``); ``alphas_cumprod`` the
        scheduler's ``[T]`` table, indexed at ``t``; ``model_fn(x_t)`` recomputes the model output
        under autograd when ``through_model`` is set.
        """
        if not self.is_active(step_index):
            return x_t, None
        a_t = alphas_cumprod.to(x_t.device)[torch.as_tensor(t, device=x_t.device).long()]
        with torch.enable_grad():
            x_in = x_t.detach().requires_grad_(True)
            if self.through_model and model_fn is not None:
                out = model_fn(x_in).to(x_in.dtype)
            else:
                out = model_output.detach().to(x_in.dtype)
            values = self.evaluate(predicted_x0(x_in, out, a_t, prediction_type), y)
            (grad,) = torch.autograd.grad(values.sum(), x_in)
        grad = grad.to(x_t.dtype)
        if self.rescale:
            shape = (-1,) + (1,) * (x_t.ndim - 1)
            ratio = x_t.flatten(1).norm(dim=1) / grad.flatten(1).norm(dim=1).clamp_min(1e-12)
            grad = grad * ratio.view(shape)
        return x_t + self.scale * grad, values.detach()
