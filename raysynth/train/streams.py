"""Mini-batches streamed from a Train worker's dataset shard (no Ray import: a shard is anything
with Ray Data's ``iter_torch_batches``).

PNG bytes are decoded in the iterator's ``collate_fn``, which Ray Data runs on its prefetch
thread, so decoding the next batch overlaps the current step (measured by ``raysynth bench
learn``). The datasets arrive shuffled once, their blocks in a new order on every pass
(``ray_data.shuffled``), and a local buffer of :data:`SHUFFLE_BUFFER` rows mixes the rows of
several blocks anew each pass; the real split is one pass per epoch, the synthetic table an
endless stream of passes, ``n`` rows per batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from raysynth import columns as col
from raysynth.data.images import UnreadableImageError, to_tensor_array
from raysynth.data.real_tasks import read_images
from raysynth.errors import DataError
from raysynth.storage import fs_path

COLUMNS = (col.SAMPLE_ID, col.LABEL, col.IMAGE)
SHUFFLE_BUFFER = 1024  # rows (PNG bytes) a worker holds to mix; two of ray_data.shuffled's blocks


class DecodeBatch:
    """``collate_fn``: a numpy batch of ``COLUMNS`` → ``(x [B, C, H, W] float32, y [B])``.
    A corrupt image raises :class:`DataError` naming its ``sample_id`` and ``what`` table."""

    def __init__(self, channels: int, size: int, what: str) -> None:
        self.channels, self.size, self.what = channels, size, what

    def __call__(self, batch: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        pngs = list(batch[col.IMAGE])
        try:
            x = to_tensor_array(pngs, self.channels, self.size)
        except UnreadableImageError:
            bad = _first_unreadable(pngs, self.channels, self.size, batch[col.SAMPLE_ID])
            raise DataError(
                f"{self.what}: the image of row {bad} cannot be decoded (damaged PNG); "
                "remove the row or regenerate it, then resume — the rows already written stay"
            ) from None
        return torch.from_numpy(x), torch.from_numpy(np.array(batch[col.LABEL], np.int64))


class FlaggedDecode(DecodeBatch):
    """``collate_fn`` of the contrastive encoder's training rows (real ∪ synthetic, each row
    flagged: ``ray_data.flagged_union``): ``(x, y, is_synthetic [B] bool)``."""

    def __call__(self, batch: dict[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
        x, y = super().__call__(batch)
        return x, y, torch.from_numpy(np.asarray(batch[col.IS_SYNTHETIC], bool))


class KeyedDecode(DecodeBatch):
    """``(x, y, key)``: ``key[i]`` a stable int64 of row i's ``sample_id``, so that rows read in
    any order can be put in one order (sorted by key)."""

    def __call__(self, batch: dict[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
        x, y = super().__call__(batch)
        keys = [int.from_bytes(hashlib.blake2b(str(s).encode(), digest_size=7).digest(), "big")
                for s in batch[col.SAMPLE_ID]]
        return x, y, torch.tensor(keys, dtype=torch.int64)


class PairedDecode(DecodeBatch):
    """``collate_fn`` of the real rows under ``mix.pairing: own``: ``(x, y, g, has)``, where
    ``g[i]`` is the synthetic image generated from row i (``partners``: sample_id → (file, row)
    of the synthetic table, ``data.tables.own_partners``), read from its Parquet row group here
    in the worker, and ``has[i]`` whether there is one (else ``g[i]`` is zeros)."""

    def __init__(self, channels: int, size: int, what: str,
                 partners: dict[str, tuple[str, int]]) -> None:
        super().__init__(channels, size, what)
        self.partners = partners

    def __call__(self, batch: dict[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
        x, y = super().__call__(batch)
        refs = [self.partners.get(str(sid)) for sid in batch[col.SAMPLE_ID]]
        g = torch.zeros_like(x)
        for file, rows in _by_file(refs).items():
            fs, where = fs_path(file)
            blobs = read_images(fs, [where] * len(rows), [r for _, r in rows])
            decoded = self._partner_images(blobs, file, [r for _, r in rows])
            g[[i for i, _ in rows]] = torch.from_numpy(decoded)
        return x, y, g, torch.tensor([r is not None for r in refs])

    def _partner_images(self, blobs: list, file: str, rows: list[int]) -> np.ndarray:
        try:
            return to_tensor_array(blobs, self.channels, self.size)
        except (UnreadableImageError, TypeError):
            raise DataError(
                f"synthetic: a partner image in {file} (rows {rows}) cannot be decoded (damaged "
                "PNG); remove the row or regenerate it, then resume — the rows already written "
                "stay") from None


def _by_file(refs: list[tuple[str, int] | None]) -> dict[str, list[tuple[int, int]]]:
    out: dict[str, list[tuple[int, int]]] = {}
    for i, ref in enumerate(refs):
        if ref is not None:
            out.setdefault(ref[0], []).append((i, ref[1]))
    return out


def _first_unreadable(pngs: list, channels: int, size: int, ids: np.ndarray) -> str:
    for png, sid in zip(pngs, ids):
        try:
            to_tensor_array([png], channels, size)
        except UnreadableImageError as e:
            return f"{sid!r} ({e.reason})"
    return "?"


def batches(
    shard: Any, batch_size: int, decode: DecodeBatch, seed: int, device: torch.device
) -> Iterator[tuple[torch.Tensor, ...]]:
    """One pass over ``shard`` in ``batch_size`` batches, its rows mixed in a local buffer
    (``seed``: that mix; Ray's shards arrive in a new block order already)."""
    it = shard.iter_torch_batches(
        batch_size=batch_size, collate_fn=decode, local_shuffle_buffer_size=SHUFFLE_BUFFER,
        local_shuffle_seed=seed, prefetch_batches=2,
    )
    for out in it:  # (x, y), or (x, y, g, has) from PairedDecode
        yield tuple(t.to(device) for t in out)


def endless(
    shard: Any, batch_size: int, decode: DecodeBatch, seed: int, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled passes over ``shard`` one after another, ``batch_size`` rows at a time (the
    last batch of a pass is filled from the next); empty when the shard is."""
    pending: list[tuple[torch.Tensor, torch.Tensor]] = []
    have, npass = 0, 0
    while True:
        got = False
        for x, y in batches(shard, batch_size, decode, seed * 7919 + npass, device):
            got = True
            pending.append((x, y))
            have += len(y)
            while have >= batch_size:
                xs, ys = torch.cat([p[0] for p in pending]), torch.cat([p[1] for p in pending])
                yield xs[:batch_size], ys[:batch_size]
                pending = [(xs[batch_size:], ys[batch_size:])] if have > batch_size else []
                have -= batch_size
        npass += 1
        if not got:
            return
