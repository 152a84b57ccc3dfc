"""AiR steps 4–5 (paper 001 Eq. 7–10, METHODS §4): what CoOp prompt learning with fused
pseudo-labels takes and gives — its settings (:class:`PromptConfig`; λ and β are what Tune
searches), the precomputed embeddings it trains on (:class:`PromptData`), the learned context with
its per-iteration history (:class:`PromptResult`) and that context's folder
(:func:`save_context` / :func:`load_context`: ``context.safetensors`` + ``prompt.json``).

The prompt itself is :class:`~raysynth.pseudolabel.prompt_encoder.PromptTextEncoder`, the training
:func:`~raysynth.pseudolabel.prompt_train.train_prompt`, one Tune trial
:func:`~raysynth.pseudolabel.prompt_train.run_prompt_trial` and the (λ, β) search
:mod:`raysynth.tune.prompt`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raysynth.errors import ConfigError, RunDirError
from raysynth.files import atomic_write_bytes, atomic_write_text
from raysynth.storage import as_path

CONTEXT_FILE = "context.safetensors"
PROMPT_JSON = "prompt.json"
FORMAT = "raysynth-coop-context-v1"


@dataclass(frozen=True)
class PromptConfig:
    """Prompt learning settings; λ (``lam``) and β (``beta``) are what Tune searches."""

    n_ctx: int = 16
    init_std: float = 0.02
    seed: int = 0
    iterations: int = 10
    steps: int = 50  # full-batch optimiser steps per iteration
    lr: float = 0.002
    momentum: float = 0.9
    temperature: float | None = 0.01  # None: the model's 1 / exp(logit_scale)
    proto_temperature: float = 0.01  # τ of p̂ (Eq. 7)
    lam: float = 1.0
    beta: float = 1.0
    top_k: int = 16  # real images per class trained on; 0 = every image
    schedule: str = "constant"  # constant | cosine over all iterations × steps (train/optim.py)
    warmup_steps: int = 0  # linear warm-up over the first optimiser steps

    def __post_init__(self) -> None:
        if self.schedule not in ("constant", "cosine") or self.warmup_steps < 0:
            raise ConfigError(f"prompt learning schedule {self.schedule!r} / warm-up "
                              f"{self.warmup_steps}: choose constant or cosine, warm-up >= 0")
        checks = {
            "n_ctx": self.n_ctx >= 1,
            "init_std": self.init_std > 0,
            "iterations": self.iterations >= 1,
            "steps": self.steps >= 1,
            "lr": self.lr > 0,
            "momentum": 0 <= self.momentum < 1,
            "temperature": self.temperature is None or self.temperature > 0,
            "proto_temperature": self.proto_temperature > 0,
            "lam": self.lam >= 0,
            "beta": self.beta >= 0,
            "top_k": self.top_k >= 0,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            values = ", ".join(f"{k}={getattr(self, k)!r}" for k in bad)
            raise ConfigError(
                f"invalid prompt learning settings: {values}; need n_ctx, iterations, steps >= 1, "
                "init_std, lr, temperature, proto_temperature > 0, momentum in [0, 1), "
                "lam, beta, top_k >= 0"
            )


@dataclass
class PromptData:
    """Precomputed embeddings (all ``F(·)`` of the frozen image tower, any norm).

    ``real_emb: [N, D]`` unlabeled images; ``zero_shot: [N, C]`` their ``p`` from hand-made prompts
    (:class:`~raysynth.pseudolabel.zero_shot.PseudoLabels` ``.probs``); ``prototypes: [C, D]``
    ``F(x̂*_c)``; ``syn_emb: [M, D]`` / ``syn_labels: [M]`` labelled synthetic images;
    ``true_labels: [N]`` (−1 unknown) for measuring only; ``val_emb`` / ``val_labels`` a labelled
    validation split (the Tune objective).
    """

    real_emb: np.ndarray
    zero_shot: np.ndarray
    prototypes: np.ndarray
    syn_emb: np.ndarray
    syn_labels: np.ndarray
    true_labels: np.ndarray | None = None
    val_emb: np.ndarray | None = None
    val_labels: np.ndarray | None = None

    def __post_init__(self) -> None:
        n, c = np.shape(self.zero_shot)
        d = np.shape(self.real_emb)[1]
        if np.shape(self.real_emb)[0] != n or np.shape(self.prototypes) != (c, d):
            raise ValueError(
                f"need real_emb [N, D], zero_shot [N, C], prototypes [C, D]; got "
                f"{np.shape(self.real_emb)}, {np.shape(self.zero_shot)}, {np.shape(self.prototypes)}"
            )
        if len(self.syn_emb) != len(self.syn_labels):
            raise ValueError(
                f"{len(self.syn_emb)} synthetic embeddings, {len(self.syn_labels)} labels"
            )
        if (self.val_emb is None) != (self.val_labels is None):
            raise ValueError("give val_emb and val_labels together, or neither")

    @property
    def num_classes(self) -> int:
        return int(np.shape(self.zero_shot)[1])


@dataclass
class PromptResult:
    """The learned context and what happened per iteration.

    ``history[i]``: ``loss_first`` / ``loss_last`` (first and last step of the iteration),
    ``pseudo_acc`` (accuracy of the fused labels trained on, over every image with a true label;
    NaN without true labels), ``selected_acc`` (the same over the top-K rows trained on),
    ``refreshed_acc`` (the labels recomputed with the learned prompt), ``val_acc`` (the learned
    prompt's classifier on the validation split; NaN without one).
    """

    ctx: torch.Tensor
    class_names: list[str]
    config: PromptConfig
    history: list[dict[str, float]] = field(default_factory=list)
    pseudo_labels: np.ndarray | None = None  # the last refreshed ỹ*, [N]
    probs: np.ndarray | None = None  # the learned prompt's p, [N, C]

    @property
    def losses(self) -> list[float]:
        return [h["loss_last"] for h in self.history]

    def save(self, folder: str | Path, model_name: str = "") -> Path:
        return save_context(
            folder, self.ctx, self.class_names, self.config, model_name, self.history
        )


def save_context(
    folder: str | Path,
    ctx: torch.Tensor,
    class_names: Sequence[str],
    cfg: PromptConfig,
    model_name: str = "",
    history: Sequence[dict[str, float]] = (),
) -> Path:
    """Write ``context.safetensors`` (``ctx: [n_ctx, width]`` float32) and ``prompt.json``
    (format, model, class names, settings, per-iteration history) to ``folder``."""
    from safetensors.torch import save

    folder = as_path(folder)  # local, or the run directory's store (each file one put)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder / CONTEXT_FILE, save({"ctx": ctx.detach().float().cpu().contiguous()}))
    meta = {
        "format": FORMAT,
        "model": model_name,
        "n_ctx": int(ctx.shape[0]),
        "width": int(ctx.shape[1]),
        "class_names": list(class_names),
        "config": dataclasses.asdict(cfg),
        "history": [{k: float(v) for k, v in h.items()} for h in history],
    }
    atomic_write_text(folder / PROMPT_JSON, json.dumps(meta, indent=2, allow_nan=True))
    return folder


def load_context(folder: str | Path) -> tuple[torch.Tensor, dict[str, Any]]:
    """``(ctx, meta)`` from a folder written by :func:`save_context`."""
    from safetensors.torch import load

    folder = as_path(folder)
    if not (folder / CONTEXT_FILE).is_file() or not (folder / PROMPT_JSON).is_file():
        raise RunDirError(
            f"{folder} has no {CONTEXT_FILE} and {PROMPT_JSON}; give a folder written by "
            "PromptResult.save / save_context"
        )
    meta = json.loads((folder / PROMPT_JSON).read_text())
    if meta.get("format") != FORMAT:
        raise RunDirError(f"{folder / PROMPT_JSON} is not a {FORMAT} file ({meta.get('format')!r})")
    return load((folder / CONTEXT_FILE).read_bytes())["ctx"], meta


__all__ = [
    "CONTEXT_FILE",
    "PROMPT_JSON",
    "PromptConfig",
    "PromptData",
    "PromptResult",
    "load_context",
    "save_context",
]
