"""AiR steps 4–5 (paper 001 Eq. 7–10, METHODS §4): CoOp prompt learning with fused pseudo-labels.

Class logits are ``cos(F(x), G(t_c)) / τ`` with a fixed τ (0.01 by default, the zero-shot
temperature; ``temperature=None`` uses the model's own ``1 / exp(logit_scale)``). The loss is
``L = CE(x, ỹ*) + β · CE(x̂, y)`` (Eq. 10) over pseudo-labelled real embeddings ``x`` and labelled
synthetic embeddings ``x̂``; β = 0 leaves the synthetic images out entirely. Image embeddings are
computed once, before training, so training runs the text side alone.

Iterations (10 by default): the pseudo-labels ``ỹ* = argmax(p + λ p̂)`` (Eq. 7) start from the
zero-shot ``p`` of the hand-made prompts; each iteration trains ``steps`` full-batch SGD steps on
them, then recomputes ``p`` with the learned prompt and refreshes ``ỹ*`` (``p̂``, the synthetic
prototype classifier, does not change). The real images trained on are the ``top_k`` most
confident per class under ``p*`` — FPL's top-K pseudo-labelling that AiR builds on (paper §3.1,
§4: 16 per class); ``top_k=0`` trains on every image with its fused label.

:func:`train_prompt` trains a given encoder; :func:`run_prompt_trial` is one (λ, β) that builds
its model by name (:class:`PromptTrialSpec`) — what a Tune trial of
:func:`~raysynth.tune.prompt.search_prompt_params` runs.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from raysynth.errors import ConfigError
from raysynth.filter.select import fuse, prototype_probs
from raysynth.pseudolabel.prompt import PromptConfig, PromptData, PromptResult
from raysynth.pseudolabel.prompt_encoder import PromptTextEncoder, unit_rows
from raysynth.pseudolabel.top_k import top_k_per_class
from raysynth.pseudolabel.zero_shot import label_accuracy
from raysynth.train.optim import lr_at, set_lr

log = logging.getLogger("raysynth.air")


def _logits(emb: torch.Tensor, text: torch.Tensor, scale: float) -> torch.Tensor:
    return emb @ text.T * scale


def train_prompt(
    encoder: PromptTextEncoder,
    data: PromptData,
    cfg: PromptConfig | None = None,
    on_iteration: Callable[[dict[str, float]], None] | None = None,
) -> PromptResult:
    """CoOp on AiR's fused pseudo-labels (see the module docstring); ``on_iteration(record)`` is
    called after every iteration (Tune's report)."""
    cfg = cfg or PromptConfig()
    if data.num_classes != len(encoder.class_names):
        raise ValueError(
            f"{data.num_classes} classes in the data, {len(encoder.class_names)} in the encoder"
        )
    dev = encoder.ctx.device
    scale = 1.0 / cfg.temperature if cfg.temperature else encoder.model_scale
    real = unit_rows(data.real_emb, dev)
    syn = unit_rows(data.syn_emb, dev) if len(data.syn_emb) else None
    syn_y = torch.as_tensor(np.asarray(data.syn_labels, np.int64), device=dev)
    p_hat = prototype_probs(data.real_emb, data.prototypes, cfg.proto_temperature)
    p = np.asarray(data.zero_shot, np.float64)
    opt = torch.optim.SGD([encoder.ctx], lr=cfg.lr, momentum=cfg.momentum)
    history: list[dict[str, float]] = []
    for it in range(cfg.iterations):
        # 1. pseudo-labels from the fused classifier (Eq. 7), top-K per class
        fused = fuse(p, p_hat, cfg.lam)
        labels = np.argmax(fused, axis=1).astype(np.int64)
        rows = top_k_per_class(fused, cfg.top_k or None).indices
        # 2. full-batch steps on L = CE(x, ỹ*) + β CE(x̂, y) (Eq. 10)
        y = torch.from_numpy(labels[rows]).to(dev)
        synthetic = (syn, syn_y) if cfg.beta > 0 and syn is not None else None
        losses = _steps(encoder, opt, (real[rows], y), synthetic, cfg, scale, it * cfg.steps)
        # 3. refresh p with the learned prompt
        p, val = _refresh(encoder, real, data, scale)
        refreshed = np.argmax(fuse(p, p_hat, cfg.lam), axis=1)
        record = _record(it + 1, losses, labels, rows, refreshed, val, data.true_labels)
        history.append(record)
        log.info("prompt learning %s", record)
        if on_iteration is not None:
            on_iteration(record)
    return PromptResult(
        ctx=encoder.ctx.detach().cpu().clone(),
        class_names=list(encoder.class_names),
        config=cfg,
        history=history,
        pseudo_labels=np.argmax(fuse(p, p_hat, cfg.lam), axis=1).astype(np.int64),
        probs=p,
    )


@torch.no_grad()
def _refresh(
    encoder: PromptTextEncoder, real: torch.Tensor, data: PromptData, scale: float
) -> tuple[np.ndarray, float]:
    """``p`` of the real images under the learned prompt, and its validation accuracy."""
    text = encoder()
    p = torch.softmax(_logits(real, text, scale), dim=1).double().cpu().numpy()
    return p, _accuracy(data.val_emb, data.val_labels, text, encoder.ctx.device)


def _record(
    iteration: int,
    losses: list[float],
    labels: np.ndarray,
    rows: np.ndarray,
    refreshed: np.ndarray,
    val: float,
    truth: np.ndarray | None,
) -> dict[str, float]:
    """One iteration's :attr:`~raysynth.pseudolabel.prompt.PromptResult.history` entry."""
    return {
        "iteration": iteration,
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "pseudo_acc": label_accuracy(labels, truth),
        "selected_acc": label_accuracy(labels, truth, rows),
        "refreshed_acc": label_accuracy(refreshed, truth),
        "val_acc": val,
    }


def _steps(
    encoder: PromptTextEncoder,
    opt: torch.optim.Optimizer,
    real: tuple[torch.Tensor, torch.Tensor],
    synthetic: tuple[torch.Tensor, torch.Tensor] | None,
    cfg: PromptConfig,
    scale: float,
    first: int = 0,
) -> list[float]:
    """``cfg.steps`` optimiser steps on ``CE(x, ỹ*) [+ β CE(x̂, y)]``; the loss of each step.
    Step ``first + i`` of all ``iterations × steps`` runs at the rate of ``cfg.schedule``."""
    losses = []
    total = cfg.iterations * cfg.steps
    for i in range(cfg.steps):
        set_lr(opt, lr_at(first + i, total, cfg.lr, cfg.schedule, cfg.warmup_steps))
        text = encoder()
        loss = F.cross_entropy(_logits(real[0], text, scale), real[1])
        if synthetic is not None:
            loss = loss + cfg.beta * F.cross_entropy(
                _logits(synthetic[0], text, scale), synthetic[1]
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def _accuracy(emb, labels, text: torch.Tensor, dev) -> float:
    if emb is None or len(emb) == 0:
        return float("nan")
    e = unit_rows(emb, dev)
    pred = (e @ text.T).argmax(dim=1).cpu().numpy()
    return float(np.mean(pred == np.asarray(labels)))


@dataclass(frozen=True)
class PromptTrialSpec:
    """What a trial builds its model from (never captured from the driver): an open_clip model
    name and weights (tag or local file), the class names, the base settings, the device and the
    torch threads of a trial."""

    clip_model: str
    clip_pretrained: str
    class_names: tuple[str, ...]
    base: PromptConfig = PromptConfig()
    device: str = "cpu"
    threads: int = 1


def run_prompt_trial(
    config: dict[str, Any],
    data: PromptData,
    spec: PromptTrialSpec,
    report: Callable[[dict[str, Any]], None] | None = None,
) -> PromptResult:
    """One (λ, β) of ``config`` (keys ``lam``, ``beta``; missing ones keep ``spec.base``'s): loads
    the model by name, trains, and calls ``report(record)`` after every iteration."""
    from raysynth.filter.clip import ClipEmbedder

    if data.val_emb is None:
        raise ConfigError(
            "tuning λ and β needs a labelled validation split: set PromptData.val_emb and "
            "val_labels (the objective is the learned prompt's validation accuracy)"
        )
    cfg = dataclasses.replace(
        spec.base,
        lam=float(config.get("lam", spec.base.lam)),
        beta=float(config.get("beta", spec.base.beta)),
    )
    clip = ClipEmbedder(spec.clip_model, spec.clip_pretrained, device=spec.device)
    encoder = PromptTextEncoder(
        clip.model, clip.tokenizer, spec.class_names, cfg.n_ctx, cfg.init_std, cfg.seed
    )
    return train_prompt(encoder, data, cfg, on_iteration=report)


__all__ = ["PromptTrialSpec", "run_prompt_trial", "train_prompt"]
