"""Classifiers: the frozen-embedding MLP of the UniCon protocol and the end-to-end classifier of the
feedback-guidance paper (real/synthetic share per mini-batch, balanced softmax)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from raysynth.config.schema import ClassifierConfig, EndToEndConfig
from raysynth.mix.mixing import mix_batch
from raysynth.train.arrays import LabeledArrays
from raysynth.train.augment import augment
from raysynth.train.epochs import train_epochs
from raysynth.train.models import ImageClassifier, MLPClassifier, build_encoder
from raysynth.train.optim import build_optimizer, lr_at


def fit_mlp(
    feats: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    cfg: ClassifierConfig,
    seed: int,
) -> MLPClassifier:
    """Train the 3-layer MLP on frozen embeddings ``feats: [N, D]`` with cross-entropy."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = MLPClassifier(feats.shape[1], num_classes, cfg.hidden).to(feats.device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    n = len(labels)
    for _ in range(cfg.epochs):
        perm = torch.randperm(n, generator=gen).to(feats.device)
        for i in range(0, n, cfg.batch_size):
            b = perm[i : i + cfg.batch_size]
            loss = F.cross_entropy(model(feats[b]), labels[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(1) == labels).float().mean()) if len(labels) else float("nan")


@torch.no_grad()
def group_accuracy(
    logits: torch.Tensor, labels: torch.Tensor, groups: dict[str, list[int]]
) -> dict[str, float]:
    """Overall accuracy plus one per class group (many/medium/few on long-tailed splits)."""
    out = {"overall": accuracy(logits, labels)}
    for name, classes in groups.items():
        mask = torch.isin(labels, torch.as_tensor(classes, device=labels.device))
        out[name] = accuracy(logits[mask], labels[mask])
    return out


GROUP_KEY = "group:"  # metric keys of (class, context) groups ("group:cat in autumn"; report/groups.py)


def context_group_accuracy(
    pred: np.ndarray, labels: np.ndarray, contexts: Sequence[str], class_names: Sequence[str]
) -> dict[str, float]:
    """Accuracy of every (class, context) group among the evaluated rows (rows of context ""
    left out), ``worst_group`` (the lowest: NICO++'s metric) and ``mean_group`` (their mean);
    {} when no row has a context."""
    pred, labels = np.asarray(pred), np.asarray(labels)
    ctx = np.asarray(list(contexts), dtype=object)
    out: dict[str, float] = {}
    for c, g in sorted({(int(y), str(g)) for y, g in zip(labels, ctx) if g}):
        mask = (labels == c) & (ctx == g)
        out[f"{GROUP_KEY}{class_names[c]} in {g}"] = float((pred[mask] == c).mean())
    if out:
        vals = list(out.values())
        out["worst_group"], out["mean_group"] = min(vals), float(np.mean(vals))
    return out


def effective_prior(
    y_real: np.ndarray, y_syn: np.ndarray, num_classes: int, synthetic_share: float
) -> np.ndarray:
    """Class prior of the training batches: ``(1-s)·p_real + s·p_syn`` (balanced softmax)."""
    return counts_prior(
        np.bincount(y_real, minlength=num_classes), np.bincount(y_syn, minlength=num_classes),
        synthetic_share,
    )


def counts_prior(
    real_counts: np.ndarray, syn_counts: np.ndarray, synthetic_share: float
) -> np.ndarray:
    """:func:`effective_prior` from per-class row counts (what a streamed run knows)."""
    p_real = np.asarray(real_counts, np.float64)
    p_real = p_real / max(p_real.sum(), 1)
    p_syn = np.asarray(syn_counts, np.float64)
    if synthetic_share == 0 or p_syn.sum() == 0:
        return p_real
    return (1 - synthetic_share) * p_real + synthetic_share * p_syn / p_syn.sum()


def log_prior(prior: np.ndarray, device: torch.device) -> torch.Tensor:
    """``log prior`` as the float32 tensor balanced softmax adds to the logits."""
    return torch.log(torch.as_tensor(prior).to(torch.float32).clamp_min(1e-12)).to(device)


def fit_end_to_end(
    real: LabeledArrays,
    synthetic: LabeledArrays,
    num_classes: int,
    encoder_cfg: dict[str, Any],
    cfg: EndToEndConfig,
    aug_kind: str,
    seed: int,
    device: torch.device,
    on_epoch: Any = None,
    start_epoch: int = 0,
    model: ImageClassifier | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    mix_fraction: float = 0.0,
) -> ImageClassifier:
    """Train encoder + linear head on real ∪ synthetic.

    Each mini-batch holds ``round(B·synthetic_share)`` synthetic rows (drawn at random) and the
    rest real rows (an epoch is one pass over the real rows). With ``balanced_softmax`` the loss
    uses ``logits + log prior`` (prior of the batches), so the plain logits are balanced at test
    time (paper 002 §4). ``mix_fraction > 0`` applies DiffCoRe-Mix to that share of the real
    rows of each batch, each mixed with a synthetic image of its class (paper 003).
    """
    torch.manual_seed(seed)
    model = model or ImageClassifier(build_encoder(encoder_cfg), num_classes).to(device)
    optimizer = optimizer or end_to_end_optimizer(model, cfg)
    share = cfg.synthetic_share if len(synthetic) else 0.0
    lp = None
    if cfg.balanced_softmax:
        lp = log_prior(effective_prior(real.y, synthetic.y, num_classes, share), device)
    rows = tuple(torch.from_numpy(a).to(device) for a in (real.x, real.y, synthetic.x, synthetic.y))
    n_syn = round(cfg.batch_size * share)
    batch = (cfg.batch_size - n_syn, n_syn)
    losses = partial(_batch_losses, model, rows, batch, lp, (aug_kind, cfg.label_smoothing),
                     mix_fraction)
    schedule = partial(lr_at, total=cfg.epochs, base_lr=cfg.lr, schedule=cfg.schedule,
                       warmup=cfg.warmup_epochs)
    train_epochs(model, optimizer, range(start_epoch, cfg.epochs), seed, len(real), losses, on_epoch,
                 schedule)
    return model.eval()


def end_to_end_optimizer(model: torch.nn.Module, cfg: EndToEndConfig) -> torch.optim.Optimizer:
    """The optimiser ``end_to_end.optimizer`` names, with its momentum / Nesterov / decay."""
    return build_optimizer(model.parameters(), cfg.optimizer, cfg.lr, cfg.weight_decay,
                           cfg.momentum, cfg.nesterov)


def _batch_losses(
    model: ImageClassifier,
    rows: tuple[torch.Tensor, ...],
    batch: tuple[int, int],
    log_prior: torch.Tensor | None,
    aug: tuple[str, float],
    mix_fraction: float,
    perm: torch.Tensor,
    gen: torch.Generator,
) -> Iterator[torch.Tensor]:
    """The cross-entropy of each batch: ``batch[0]`` real rows in ``perm`` order (a share of them
    mixed), ``batch[1]`` synthetic rows drawn at random; ``log_prior`` added for balanced softmax;
    ``aug``: the augmentation kind and the label smoothing."""
    xr, yr, xs, ys = rows
    n_real, n_syn = batch
    for i in range(0, len(yr), n_real):
        b = perm[i : i + n_real].to(yr.device)
        x, y = xr[b], yr[b]
        if mix_fraction and len(ys):
            x, _ = mix_batch(x, y, xs, ys, mix_fraction, gen)
        if n_syn:
            s = torch.randint(len(ys), (n_syn,), generator=gen).to(yr.device)
            x, y = torch.cat([x, xs[s]]), torch.cat([y, ys[s]])
        yield batch_loss(model, x, y, aug, gen, log_prior)


def batch_loss(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, aug: tuple[str, float],
    gen: torch.Generator, log_prior: torch.Tensor | None,
) -> torch.Tensor:
    """Cross-entropy of one batch augmented by ``aug[0]`` with label smoothing ``aug[1]``,
    ``log_prior`` added to the logits when given (balanced softmax)."""
    logits = model(augment(x, aug[0], gen))
    if log_prior is not None:
        logits = logits + log_prior
    return F.cross_entropy(logits, y, label_smoothing=aug[1])
