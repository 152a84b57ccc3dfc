"""Contrastive encoder training: SupCon-Real, SupCon-Mixed and UniCon (paper 000 eq. 1–3)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial

import numpy as np
import torch

from raysynth.config.schema import EncoderConfig
from raysynth.train.arrays import LabeledArrays
from raysynth.train.augment import two_views
from raysynth.train.epochs import EpochHook, train_epochs
from raysynth.train.losses import contrastive_loss
from raysynth.train.models import ContrastiveModel, ProjectionHead, build_encoder

METHODS = ("supcon_real", "supcon_mixed", "unicon")


def new_contrastive_model(model_cfg: dict) -> ContrastiveModel:
    enc = build_encoder(model_cfg["encoder"])
    return ContrastiveModel(enc, ProjectionHead(enc.out_dim, model_cfg["proj_dim"]))


def fit_encoder(
    real: LabeledArrays,
    synthetic: LabeledArrays,
    method: str,
    weights: np.ndarray | None,
    num_classes: int,
    cfg: EncoderConfig,
    model_cfg: dict,
    aug_kind: str,
    seed: int,
    device: torch.device,
    *,
    rank: int = 0,
    world_size: int = 1,
    prepare: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
    restore: Callable[[torch.nn.Module, torch.optim.Optimizer], int] | None = None,
    on_epoch: EpochHook | None = None,
) -> ContrastiveModel:
    """Train encoder + projection head with the contrastive loss of ``method``.

    - ``supcon_real``: real rows only, SupCon (eq. 1);
    - ``supcon_mixed``: real ∪ synthetic, synthetic rows as real rows of their class (eq. 2);
    - ``unicon``: real ∪ synthetic, real anchors, synthetic positives weighted per class by
      ``weights: [C]`` (eq. 3).

    An epoch is one pass over the training rows in mini-batches of ``cfg.batch_size`` images (two
    views each). With ``world_size > 1`` each rank takes every ``world_size``-th row of the same
    seeded permutation and DDP averages the gradients (the loss is per-rank, as in SimCLR without
    a gather). Each epoch's randomness is seeded from ``(seed, epoch)``, so a resumed run repeats
    exactly what an uninterrupted one does.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    x, y, is_syn = _training_rows(real, synthetic, method)
    mode = "unicon" if method == "unicon" else "supcon"
    w = _unicon_weights(weights, num_classes, device) if mode == "unicon" else None

    torch.manual_seed(seed)
    model = new_contrastive_model(model_cfg)
    model = prepare(model) if prepare else model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start = restore(model, opt) if restore else 0

    rows = tuple(torch.from_numpy(a).to(device) for a in (x, y, is_syn))
    losses = partial(_batch_losses, model, rows, w, mode, cfg, aug_kind, (rank, world_size))
    train_epochs(model, opt, range(start, cfg.epochs), seed, len(y), losses, on_epoch)
    model = model.module if hasattr(model, "module") else model
    return model.eval()


def _training_rows(
    real: LabeledArrays, synthetic: LabeledArrays, method: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images, labels and synthetic flags: real rows, then synthetic ones unless the method
    (``supcon_real``) or an empty synthetic set leaves them out."""
    use_syn = method != "supcon_real" and len(synthetic) > 0
    x = real.x if not use_syn else np.concatenate([real.x, synthetic.x])
    y = real.y if not use_syn else np.concatenate([real.y, synthetic.y])
    is_syn = np.zeros(len(y), bool)
    if use_syn:
        is_syn[len(real) :] = True
    return x, y, is_syn


def _unicon_weights(
    weights: np.ndarray | None, num_classes: int, device: torch.device
) -> torch.Tensor:
    """UniCon's per-class weights ``[C]`` on ``device`` (all 0 when none are given)."""
    w_np = np.zeros(num_classes) if weights is None else np.asarray(weights, np.float32)
    return torch.as_tensor(w_np, dtype=torch.float32, device=device)


def _batch_losses(
    model: torch.nn.Module,
    rows: tuple[torch.Tensor, ...],
    w: torch.Tensor | None,
    mode: str,
    cfg: EncoderConfig,
    aug_kind: str,
    shard: tuple[int, int],
    perm: torch.Tensor,
    gen: torch.Generator,
) -> Iterator[torch.Tensor]:
    """The contrastive loss of each batch of this rank's share of ``perm`` (two views each)."""
    xt, yt, st = rows
    rank, world_size = shard
    n = len(perm)
    # Equal shards: every rank must take the same number of steps, or DDP's all-reduce hangs.
    perm = perm[: n - n % world_size][rank::world_size].to(xt.device)
    for i in range(0, len(perm), cfg.batch_size):
        b = perm[i : i + cfg.batch_size]
        if len(b) < 2:
            continue  # a single row has no contrast; BatchNorm cannot train on it either
        views = two_views(xt[b], aug_kind, gen)  # [B, 2, C, H, W]
        feats = model(views.flatten(0, 1)).view(len(b), 2, -1)
        yield contrastive_loss(
            feats,
            yt[b],
            synthetic=st[b],
            class_weights=w,
            mode=mode,
            temperature=cfg.temperature,
        )
