"""Contrastive encoder training: SupCon-Real, SupCon-Mixed and UniCon (paper 000 eq. 1–3)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from raysynth.config.schema import EncoderConfig
from raysynth.train.arrays import LabeledArrays
from raysynth.train.augment import two_views
from raysynth.train.losses import contrastive_loss
from raysynth.train.models import ContrastiveModel, ProjectionHead, build_encoder

METHODS = ("supcon_real", "supcon_mixed", "unicon")

EpochHook = Callable[[int, float, torch.nn.Module, torch.optim.Optimizer], None]


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
    use_syn = method != "supcon_real" and len(synthetic) > 0
    x = real.x if not use_syn else np.concatenate([real.x, synthetic.x])
    y = real.y if not use_syn else np.concatenate([real.y, synthetic.y])
    is_syn = np.zeros(len(y), bool)
    if use_syn:
        is_syn[len(real) :] = True
    mode = "unicon" if method == "unicon" else "supcon"
    w = None
    if mode == "unicon":
        w_np = np.zeros(num_classes) if weights is None else np.asarray(weights, np.float32)
        w = torch.as_tensor(w_np, dtype=torch.float32, device=device)

    torch.manual_seed(seed)
    model = new_contrastive_model(model_cfg)
    model = prepare(model) if prepare else model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start = restore(model, opt) if restore else 0

    xt = torch.from_numpy(x).to(device)
    yt = torch.from_numpy(y).to(device)
    st = torch.from_numpy(is_syn).to(device)
    n = len(yt)
    for epoch in range(start, cfg.epochs):
        gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
        perm = torch.randperm(n, generator=gen)
        # Equal shards: every rank must take the same number of steps, or DDP's all-reduce hangs.
        perm = perm[: n - n % world_size][rank::world_size].to(device)
        model.train()
        total, steps = 0.0, 0
        for i in range(0, len(perm), cfg.batch_size):
            b = perm[i : i + cfg.batch_size]
            if len(b) < 2:
                continue  # a single row has no contrast; BatchNorm cannot train on it either
            views = two_views(xt[b], aug_kind, gen)  # [B, 2, C, H, W]
            feats = model(views.flatten(0, 1)).view(len(b), 2, -1)
            loss = contrastive_loss(
                feats,
                yt[b],
                synthetic=st[b],
                class_weights=w,
                mode=mode,
                temperature=cfg.temperature,
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
            steps += 1
        if on_epoch is not None:
            on_epoch(epoch, total / max(steps, 1), model, opt)
    model = model.module if hasattr(model, "module") else model
    return model.eval()
