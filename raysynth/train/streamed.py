"""The end-to-end classifier trained from streamed tables (paper 002 §4 at any scale).

The same batches as :func:`raysynth.train.classifier.fit_end_to_end`, read from dataset shards
instead of arrays: each mini-batch is the next ``B − round(B·share)`` rows of the worker's real
shard (one pass per epoch) followed by ``round(B·share)`` rows of the synthetic stream; balanced
softmax adds the log of the batches' class prior, computed from the tables' per-class counts;
the optimiser's rate follows ``end_to_end.schedule`` per epoch and the loss
``end_to_end.label_smoothing``; DiffCoRe-Mix mixes a share of the real rows with a synthetic image of their class drawn from the
batch's synthetic rows, or (``mix.pairing: own``) with the image generated from each of them. Each epoch's randomness comes from ``(seed, epoch)`` alone, so a resumed
run repeats what an uninterrupted one does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from raysynth.config.schema import EndToEndConfig
from raysynth.mix.mixing import mix_batch, mix_pairs
from raysynth.train.classifier import batch_loss, counts_prior, group_accuracy, log_prior
from raysynth.train.epochs import optimizer_step
from raysynth.train.optim import lr_at
from raysynth.train.streams import DecodeBatch, PairedDecode, batches, endless


@dataclass(frozen=True)
class StreamSpec:
    """What a worker knows of the streamed tables besides its shards (small, picklable)."""

    real_counts: tuple[int, ...]
    syn_counts: tuple[int, ...]
    channels: int
    image_size: int
    # mix.pairing=own: real sample_id → (file, row) of its own generated image; None = random
    partners: dict[str, tuple[str, int]] | None = None

    def decoder(self, what: str) -> DecodeBatch:
        return DecodeBatch(self.channels, self.image_size, what)

    def real_decoder(self) -> DecodeBatch:
        what = "the real train split"
        if self.partners is None:
            return self.decoder(what)
        return PairedDecode(self.channels, self.image_size, what, self.partners)


def fit_streamed(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    shards: dict[str, Any],
    spec: StreamSpec,
    cfg: EndToEndConfig,
    aug_kind: str,
    seed: int,
    device: torch.device,
    epochs: range,
    on_epoch: Callable[[int, float, torch.nn.Module, torch.optim.Optimizer], None] | None = None,
    mix_fraction: float = 0.0,
    rank: int = 0,
) -> torch.nn.Module:
    """Train ``model`` on ``shards["real"]`` ∪ ``shards["synthetic"]`` (None: real only).
    ``rank`` varies the synthetic draws between DDP workers (each reads the whole table)."""
    syn = shards.get("synthetic") if sum(spec.syn_counts) else None
    share = cfg.synthetic_share if syn is not None else 0.0
    lp = None
    if cfg.balanced_softmax:
        lp = log_prior(counts_prior(np.asarray(spec.real_counts), np.asarray(spec.syn_counts),
                                    share), device)
    n_syn = round(cfg.batch_size * share)
    n_real = cfg.batch_size - n_syn
    real_decode, syn_decode = spec.real_decoder(), spec.decoder("synthetic")
    aug = (aug_kind, cfg.label_smoothing)
    for epoch in epochs:
        for group in optimizer.param_groups:  # the schedule of train/optim.py, as fit_end_to_end
            group["lr"] = lr_at(epoch, cfg.epochs, cfg.lr, cfg.schedule, cfg.warmup_epochs)
        gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
        draws = None
        if n_syn:
            draws = endless(syn, n_syn, syn_decode, (seed * 100_003 + epoch) * 31 + rank, device)
        model.train()
        total, steps = 0.0, 0
        for x, y, *own in batches(shards["real"], n_real, real_decode, seed * 100_003 + epoch,
                                  device):
            if draws is not None:
                xs, ys = next(draws)
                if mix_fraction and own:  # mix.pairing=own: each with its own counterpart
                    x, _ = mix_pairs(x, own[0], own[1], mix_fraction, gen)
                elif mix_fraction:
                    x, _ = mix_batch(x, y, xs, ys, mix_fraction, gen)
                x, y = torch.cat([x, xs]), torch.cat([y, ys])
            total += optimizer_step(optimizer, batch_loss(model, x, y, aug, gen, lp))
            steps += 1
        if on_epoch is not None:
            on_epoch(epoch, total / max(steps, 1), model, optimizer)
    return model.eval()


@torch.no_grad()
def evaluate_streamed(
    model: torch.nn.Module, shard: Any, spec: StreamSpec, groups: dict[str, list[int]],
    device: torch.device, batch_size: int = 256,
) -> dict[str, float]:
    """Per-group accuracy of ``model`` on every row of ``shard`` (only logits are kept)."""
    model.eval()
    logits, labels = [], []
    it = shard.iter_torch_batches(batch_size=batch_size, collate_fn=spec.decoder("evaluation"))
    for x, y in it:
        logits.append(model(x.to(device)))
        labels.append(y.to(device))
    if not labels:
        return group_accuracy(torch.zeros(0, 1), torch.zeros(0, dtype=torch.long), groups)
    return group_accuracy(torch.cat(logits), torch.cat(labels), groups)
