"""Contrastive encoder training: SupCon-Real, SupCon-Mixed and UniCon (paper 000 eq. 1–3)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import numpy as np
import torch

from raysynth.config.schema import EncoderConfig
from raysynth.errors import DataError
from raysynth.train.arrays import LabeledArrays
from raysynth.train.augment import two_views
from raysynth.train.epochs import EpochHook, train_epochs
from raysynth.train.losses import contrastive_loss
from raysynth.train.models import ContrastiveModel, ProjectionHead, build_encoder
from raysynth.train.streams import batches

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
    x, y, is_syn = _training_rows(real, synthetic, method)
    model, opt, start, w, mode = _start(method, weights, num_classes, cfg, model_cfg, seed, device,
                                        prepare, restore)
    rows = tuple(torch.from_numpy(a).to(device) for a in (x, y, is_syn))
    losses = partial(_batch_losses, model, rows, w, mode, cfg, aug_kind, (rank, world_size))
    train_epochs(model, opt, range(start, cfg.epochs), seed, len(y), losses, on_epoch)
    model = model.module if hasattr(model, "module") else model
    return model.eval()


def fit_encoder_streamed(
    shard: Any,
    decode: Callable[[dict], tuple[torch.Tensor, ...]],
    method: str,
    weights: np.ndarray | None,
    num_classes: int,
    cfg: EncoderConfig,
    model_cfg: dict,
    aug_kind: str,
    seed: int,
    device: torch.device,
    *,
    prepare: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
    restore: Callable[[torch.nn.Module, torch.optim.Optimizer], int] | None = None,
    on_epoch: EpochHook | None = None,
) -> ContrastiveModel:
    """:func:`fit_encoder` on a Train worker's shard of the training rows (``shard``: anything
    with Ray Data's ``iter_torch_batches``; ``decode`` its ``collate_fn``, giving ``(x, y,
    is_synthetic)``). The shard holds the rows ``method`` trains on (real rows, plus for
    ``supcon_mixed``/``unicon`` the accepted synthetic ones, flagged) and arrives in a new order
    each pass; an epoch is one pass over it, in batches of ``cfg.batch_size`` (two views each,
    drawn from the epoch's generator). Equal shards keep DDP ranks in step."""
    model, opt, start, w, mode = _start(method, weights, num_classes, cfg, model_cfg, seed, device,
                                        prepare, restore)

    def losses(_perm: torch.Tensor, gen: torch.Generator) -> Iterator[torch.Tensor]:
        # the epoch's own local mix (the generator's seed, (seed, epoch), without drawing from it)
        for x, y, is_syn in batches(shard, cfg.batch_size, decode, gen.initial_seed(), device):
            if len(y) >= 2:  # a single row has no contrast (as in the in-memory batches)
                yield _loss(model, x, y, is_syn, w, mode, cfg, aug_kind, gen)

    train_epochs(model, opt, range(start, cfg.epochs), seed, 0, losses, on_epoch)
    model = model.module if hasattr(model, "module") else model
    return model.eval()


def _start(
    method: str,
    weights: np.ndarray | None,
    num_classes: int,
    cfg: EncoderConfig,
    model_cfg: dict,
    seed: int,
    device: torch.device,
    prepare: Callable[[torch.nn.Module], torch.nn.Module] | None,
    restore: Callable[[torch.nn.Module, torch.optim.Optimizer], int] | None,
) -> tuple[torch.nn.Module, torch.optim.Optimizer, int, torch.Tensor | None, str]:
    """The seeded model (prepared, restored), its optimiser, the first epoch to train, UniCon's
    weights (None for SupCon) and the loss mode of ``method``."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    mode = "unicon" if method == "unicon" else "supcon"
    w = _unicon_weights(weights, num_classes, device) if mode == "unicon" else None
    torch.manual_seed(seed)
    model = new_contrastive_model(model_cfg)
    model = prepare(model) if prepare else model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start = restore(model, opt) if restore else 0
    return model, opt, start, w, mode


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
        yield _loss(model, xt[b], yt[b], st[b], w, mode, cfg, aug_kind, gen)


def _loss(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    is_syn: torch.Tensor,
    w: torch.Tensor | None,
    mode: str,
    cfg: EncoderConfig,
    aug_kind: str,
    gen: torch.Generator,
) -> torch.Tensor:
    """The contrastive loss of one batch, two views of each of its rows."""
    views = two_views(x, aug_kind, gen)  # [B, 2, C, H, W]
    feats = model(views.flatten(0, 1)).view(len(y), 2, -1)
    return contrastive_loss(
        feats, y, synthetic=is_syn, class_weights=w, mode=mode, temperature=cfg.temperature
    )


@torch.no_grad()
def embed_shard(
    model: ContrastiveModel, shard: Any, decode: Callable[[dict], tuple[torch.Tensor, ...]],
    space: str, device: torch.device, batch_size: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen features ``[N, D]`` and labels ``[N]`` of every row of ``shard`` (``decode``:
    ``(x, y, key)``, :class:`~raysynth.train.streams.KeyedDecode`), in key order whatever order
    the rows were read in; only the features are kept, never the images."""
    feats, labels, keys = [], [], []
    for x, y, key in shard.iter_torch_batches(batch_size=batch_size, collate_fn=decode):
        feats.append(model.embed(x.to(device), space))
        labels.append(y.to(device))
        keys.append(key)
    if not keys:
        raise DataError(f"{getattr(decode, 'what', 'a split')} has no rows: nothing to embed")
    order = torch.argsort(torch.cat(keys)).to(device)
    return torch.cat(feats)[order], torch.cat(labels)[order]
