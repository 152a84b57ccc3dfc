"""Feedback guidance of a generator spec: the guiding classifier loaded from its checkpoint and
the per-class Gaussians of the hardness criterion, assembled into a
:class:`~raysynth.generate.guidance.FeedbackGuidance` (or None when the spec turns it off).
"""

from __future__ import annotations

from typing import Any

import torch

from raysynth.errors import ConfigError
from raysynth.generate.criteria import ClassGaussians
from raysynth.generate.generators import GeneratorSpec
from raysynth.generate.guidance import FeedbackGuidance


def load_guiding_classifier(folder: str, device: torch.device) -> torch.nn.Module:
    """The classifier whose criterion feedback guidance raises (a raysynth checkpoint)."""
    from raysynth.train.checkpoint import load_model

    if not folder:
        raise ConfigError(
            "synthesis.feedback.criterion needs a classifier: set synthesis.feedback.classifier "
            "to a checkpoint folder (model.safetensors + model.json)"
        )
    model = load_model(folder, device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def build_feedback(spec: GeneratorSpec, device: torch.device, decode: Any = None) -> Any:
    """The :class:`FeedbackGuidance` of a spec, or None when feedback guidance is off."""
    fb = spec.feedback
    if fb.criterion == "none" or fb.scale == 0:
        return None
    classifier = load_guiding_classifier(spec.classifier_folder, device)
    gaussians = None
    if fb.criterion == "hardness":
        if spec.gaussians is None:
            raise ConfigError("feedback criterion hardness needs per-class gaussians of real features")
        g = {k: torch.as_tensor(v) for k, v in spec.gaussians.items()}
        gaussians = ClassGaussians(g["mean"], g["precision"], g["logdet"]).to(device)
    kwargs: dict[str, Any] = {
        "criterion": fb.criterion,
        "scale": fb.scale,
        "every": fb.every,
        "rescale": fb.rescale,
        "gradient": fb.gradient,
        "x0": fb.x0,
        "classifier": classifier,
        "gaussians": gaussians,
    }
    if decode is not None:
        kwargs["decode"] = decode
    return FeedbackGuidance(**kwargs)
