"""Synthesis stage: the plan (one row per image), the pixel diffusion generator, guidance, sampling.

Names are imported lazily: the plan is plain Python, and importing diffusers/torch only when a
generator is used keeps every Ray worker that merely plans or reads rows cheap to start.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "plan": (
        "DATASET_PROMPTS",
        "PROMPT_TEMPLATES",
        "format_prompt",
        "make_plan",
        "quotas_fixed",
        "quotas_fraction_of_k",
        "quotas_top_up",
        "sample_id",
        "sample_seed",
    ),
    "pixel": (
        "PixelDiffusionConfig",
        "PixelModel",
        "build_unet",
        "cache_key",
        "load_or_train",
        "load_pixel_model",
        "sampling_scheduler_config",
        "save_pixel_model",
        "train_pixel_model",
    ),
    "guidance": (
        "ClassGaussians",
        "FeedbackGuidance",
        "class_gaussians",
        "criterion_entropy",
        "criterion_hardness",
        "criterion_loss",
        "predicted_x0",
    ),
    "sampling": ("sample_pixel",),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'raysynth.synthesis' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"raysynth.synthesis.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
