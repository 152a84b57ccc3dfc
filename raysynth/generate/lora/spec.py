"""What one AiR LoRA training is asked to do (:class:`LoraTrainSpec`, the ``air.lora`` config
section) and what it gives back (:class:`LoraResult`), with the names every part of the training
shares: the default target modules, the adapter folder's result file and format, the training
prompt of an image."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raysynth.errors import ConfigError
from raysynth.generate.generators import DTYPES

KEY = "air.lora"
ATTENTION_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")
PIXEL_TARGET_MODULES = ("conv1", "conv2", *ATTENTION_PROJECTIONS)
RESULT_FILE = "air_lora.json"
FORMAT = "raysynth-air-lora-v1"


def _check(ok: bool, name: str, what: str) -> None:
    if not ok:
        raise ConfigError(f"{KEY}.{name}: {what}")


@dataclass(frozen=True)
class LoraTrainSpec:
    """How to train one adapter (field names match the ``air.lora`` config section).

    ``steps`` counts optimizer steps; ``batch_size`` is per Ray Train worker (the effective batch
    is ``batch_size × num_workers``); ``checkpoint_every`` is in steps (0: no checkpoints);
    ``dtype`` is the frozen base's (``bfloat16``/``float16`` on a GPU) — the adapter always trains
    in float32. The default targets are the UNet attention projections (Stable Diffusion); the
    pixel model's are :data:`PIXEL_TARGET_MODULES`.
    """

    rank: int = 4
    alpha: float = 4.0
    target_modules: tuple[str, ...] = ATTENTION_PROJECTIONS
    learning_rate: float = 1e-4
    steps: int = 500
    batch_size: int = 4
    seed: int = 0
    checkpoint_every: int = 100
    dtype: str = "float32"
    max_grad_norm: float = 1.0  # 0 disables gradient clipping

    def __post_init__(self) -> None:
        targets = self.target_modules
        _check(
            not isinstance(targets, str),
            "target_modules",
            f"give a list of module names, not the string {targets!r}",
        )
        object.__setattr__(self, "target_modules", tuple(targets))
        _check(self.rank >= 1, "rank", f"must be >= 1, got {self.rank}")
        _check(self.alpha > 0, "alpha", f"must be > 0, got {self.alpha}")
        _check(
            len(self.target_modules) > 0
            and all(isinstance(t, str) and t for t in self.target_modules),
            "target_modules",
            f"needs at least one non-empty module name, got {list(self.target_modules)}",
        )
        _check(self.learning_rate > 0, "learning_rate", f"must be > 0, got {self.learning_rate}")
        _check(self.steps >= 1, "steps", f"must be >= 1, got {self.steps}")
        _check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        _check(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")
        _check(
            self.checkpoint_every >= 0,
            "checkpoint_every",
            f"must be >= 0 (0: no checkpoints), got {self.checkpoint_every}",
        )
        _check(self.dtype in DTYPES, "dtype", f"got {self.dtype!r}; choose one of {list(DTYPES)}")
        _check(self.max_grad_norm >= 0, "max_grad_norm", f"must be >= 0, got {self.max_grad_norm}")

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "target_modules": list(self.target_modules)}


PIXEL_SPEC = LoraTrainSpec(target_modules=PIXEL_TARGET_MODULES)


@dataclass(frozen=True)
class LoraResult:
    """A finished training: the adapter folder, one loss per optimizer step (mean over workers;
    steps done before a resume included) and the number of workers."""

    folder: Path
    losses: list[float]
    world_size: int


def lora_prompt(context: str, class_name: str) -> str:
    """The training prompt of an image: ``"{context} {class}"``, just the class without context."""
    context = context.strip()
    return f"{context} {class_name}" if context else class_name


__all__ = [
    "ATTENTION_PROJECTIONS",
    "FORMAT",
    "KEY",
    "PIXEL_SPEC",
    "PIXEL_TARGET_MODULES",
    "RESULT_FILE",
    "LoraResult",
    "LoraTrainSpec",
    "lora_prompt",
]
