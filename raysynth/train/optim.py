"""Optimisers and learning-rate schedules, named in config so each recipe states its paper's
choice: Adam, or SGD with momentum (optionally Nesterov); a constant rate, or cosine decay to zero
after a linear warm-up. Used by the end-to-end classifier loops and AiR's prompt learning.

The schedule is a pure function of the step (an epoch, or a prompt-learning step), so a run
resumed from a checkpoint at step ``s`` sets exactly the rate an uninterrupted one has there
(no scheduler state to save).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from raysynth.errors import ConfigError

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "cosine")


def build_optimizer(
    params: Iterable[torch.nn.Parameter], name: str, lr: float, weight_decay: float = 0.0,
    momentum: float = 0.9, nesterov: bool = False,
) -> torch.optim.Optimizer:
    """``adam`` (torch's Adam, L2 weight decay) or ``sgd`` (momentum, optional Nesterov)."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov,
                               weight_decay=weight_decay)
    raise ConfigError(f"optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def lr_at(step: int, total: int, base_lr: float, schedule: str = "constant",
          warmup: int = 0) -> float:
    """The rate of step ``step`` (0-based) of ``total``.

    Warm-up: step ``s < warmup`` has ``base · (s + 1) / warmup`` (linear, reaching ``base`` at
    its last step). Then ``constant`` keeps ``base``; ``cosine`` has
    ``base · ½ (1 + cos(π · (s − warmup) / (total − warmup)))``, from ``base`` down towards 0.
    """
    if schedule not in SCHEDULES:
        raise ConfigError(f"schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if step < warmup:
        return base_lr * (step + 1) / warmup
    if schedule == "constant":
        return base_lr
    span = max(total - warmup, 1)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, span) / span))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's rate to ``lr``."""
    for group in optimizer.param_groups:
        group["lr"] = lr
