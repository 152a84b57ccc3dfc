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
forward/backward per guided step instead of an extra UNet forward/backward. ``gradient`` chooses
(``synthesis.feedback.gradient``): ``detached`` (default, the paper); ``through_model`` re-runs the
guided (CFG) model output under autograd (the sampler passes ``model_fn``) and includes the UNet
Jacobian; ``conditional_branch`` re-runs only the UNet's conditional branch (no CFG, the sampler
passes ``cond_fn``) — what the reference code (facebookresearch/Feedback-guided-Data-Synthesis,
``fg_pipe.py``) differentiates. For latent models ``decode`` (e.g. a VAE decode) is differentiated
too, so the gradient reaches the latents.

What is scored (``synthesis.feedback.x0``): ``paper`` scores ``x̂0``; ``reference_blend`` scores
the reference code's ``x̂0·√(1−ᾱ_t) + x_t·(1−√(1−ᾱ_t))``, decoded and min–max rescaled per sample
(minimum and range detached, as there) before the classifier. The reference hard-codes the
epsilon form of ``x̂0``; here ``x̂0`` follows the model's prediction type in both.

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

from raysynth.errors import ConfigError
from raysynth.generate.criteria import (
    ClassGaussians,
    criterion_entropy,
    criterion_hardness,
    criterion_loss,
)

CRITERIA = ("loss", "entropy", "hardness")
GRADIENTS = ("detached", "through_model", "conditional_branch")
X0_FORMS = ("paper", "reference_blend")


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


# guidance -----------------------------------------------------------------------------------


def _to_unit_range(x: torch.Tensor) -> torch.Tensor:
    return (x + 1) / 2


def reference_blend(
    x_t: torch.Tensor, x0: torch.Tensor, alphas_cumprod_t: torch.Tensor | float
) -> torch.Tensor:
    """The reference code's scored sample ``x̂0·√(1−ᾱ) + x_t·(1−√(1−ᾱ))`` (``ᾱ``: a number, a
    0-d tensor or ``[B]``)."""
    a = torch.as_tensor(alphas_cumprod_t, device=x_t.device, dtype=x_t.dtype)
    if a.ndim == 1:
        a = a.view(-1, *([1] * (x_t.ndim - 1)))
    fac = (1 - a) ** 0.5
    return x0 * fac + x_t * (1 - fac)


def min_max_rescale(x: torch.Tensor) -> torch.Tensor:
    """Each sample of ``x`` (pixels) onto [-1, 1] by its own minimum and range, both detached
    (the reference's ``image − min``, ``/ max`` on [0, 1] pixels, mapped back to [-1, 1])."""
    flat = x.flatten(1)
    lo = flat.min(1).values.detach().view(-1, *([1] * (x.ndim - 1)))
    span = (flat.max(1).values - flat.min(1).values).detach().clamp_min(1e-12)
    return 2 * (x - lo) / span.view(-1, *([1] * (x.ndim - 1))) - 1


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
    - ``gradient``: ``detached`` | ``through_model`` | ``conditional_branch`` (module doc);
    - ``x0``: ``paper`` (score ``x̂0``) | ``reference_blend`` (module doc).
    """

    criterion: str = "entropy"
    scale: float = 0.0
    every: int = 5
    rescale: bool = True
    classifier: torch.nn.Module | None = None
    gaussians: ClassGaussians | None = None
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None
    input_transform: Callable[[torch.Tensor], torch.Tensor] | None = _to_unit_range
    gradient: str = "detached"
    x0: str = "paper"

    def __post_init__(self) -> None:
        if self.criterion not in CRITERIA:
            raise ConfigError(f"feedback criterion {self.criterion!r}; choose one of {CRITERIA}")
        if self.every < 1:
            raise ConfigError(f"feedback every must be >= 1, got {self.every}")
        if self.gradient not in GRADIENTS or self.x0 not in X0_FORMS:
            raise ConfigError(
                f"feedback gradient {self.gradient!r} / x0 {self.x0!r}: choose gradient from "
                f"{GRADIENTS} and x0 from {X0_FORMS}"
            )
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

    def evaluate(self, x0: torch.Tensor, y: torch.Tensor, min_max: bool = False) -> torch.Tensor:
        """The criterion ``[B]`` of clean samples ``x0`` in model space (differentiable);
        ``min_max`` rescales each decoded sample onto [-1, 1] first (:func:`min_max_rescale`)."""
        x = self.decode(x0) if self.decode is not None else x0
        if min_max:
            x = min_max_rescale(x)
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
        cond_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(x_t + ω·g, C(x̂0(x_t)))`` at a guided step, ``(x_t, None)`` (the same tensor) otherwise.

        ``g = ∇_{x_t} C(s(x_t))`` (rescaled per sample when ``rescale``), ``s`` the scored sample
        (``x0``); ``alphas_cumprod`` the scheduler's ``[T]`` table, indexed at ``t``;
        ``model_fn(x_t)`` recomputes the guided model output under autograd (``through_model``),
        ``cond_fn(x_t)`` the conditional branch alone (``conditional_branch``).
        """
        if not self.is_active(step_index):
            return x_t, None
        a_t = alphas_cumprod.to(x_t.device)[torch.as_tensor(t, device=x_t.device).long()]
        rerun = {"through_model": model_fn, "conditional_branch": cond_fn}.get(self.gradient)
        if self.gradient != "detached" and rerun is None:
            raise ConfigError(
                f"feedback gradient {self.gradient!r} needs the sampler to pass the model "
                "(model_fn / cond_fn); this sampler does not, use gradient=detached"
            )
        with torch.enable_grad():
            x_in = x_t.detach().requires_grad_(True)
            out = (model_output.detach() if rerun is None else rerun(x_in)).to(x_in.dtype)
            x0 = predicted_x0(x_in, out, a_t, prediction_type)
            blend = self.x0 == "reference_blend"
            scored = reference_blend(x_in, x0, a_t) if blend else x0
            values = self.evaluate(scored, y, min_max=blend)
            (grad,) = torch.autograd.grad(values.sum(), x_in)
        grad = grad.to(x_t.dtype)
        if self.rescale:
            shape = (-1,) + (1,) * (x_t.ndim - 1)
            ratio = x_t.flatten(1).norm(dim=1) / grad.flatten(1).norm(dim=1).clamp_min(1e-12)
            grad = grad * ratio.view(shape)
        return x_t + self.scale * grad, values.detach()
