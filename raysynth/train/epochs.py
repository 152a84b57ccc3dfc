"""The epoch loop shared by the encoder and the end-to-end trainers.

Each epoch's randomness comes from a generator seeded from ``(seed, epoch)`` alone, so a run
resumed at epoch ``e`` repeats exactly what an uninterrupted one does from there. Each batch loss
gets one optimiser step; the mean loss of the epoch goes to the ``on_epoch`` hook (checkpoints,
reports).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

EpochHook = Callable[[int, float, torch.nn.Module, torch.optim.Optimizer], None]
BatchLosses = Callable[[torch.Tensor, torch.Generator], Iterable[torch.Tensor]]


def train_epochs(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    epochs: range,
    seed: int,
    rows: int,
    batch_losses: BatchLosses,
    on_epoch: EpochHook | None = None,
    lr_of_epoch: Callable[[int], float] | None = None,
) -> None:
    """Train ``model`` for ``epochs``: ``batch_losses(perm, gen)`` yields one loss per batch of
    the epoch's permutation ``perm`` of ``rows`` rows, drawing any randomness from ``gen``;
    ``lr_of_epoch(epoch)`` (a schedule of ``train/optim.py``) sets the rate of each epoch."""
    for epoch in epochs:
        if lr_of_epoch is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr_of_epoch(epoch)
        gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
        perm = torch.randperm(rows, generator=gen)
        model.train()
        total, steps = 0.0, 0
        for loss in batch_losses(perm, gen):
            total += optimizer_step(optimizer, loss)
            steps += 1
        if on_epoch is not None:
            on_epoch(epoch, total / max(steps, 1), model, optimizer)


def optimizer_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> float:
    """Clear the gradients, backpropagate ``loss``, step; returns the loss as a float."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())
