"""``raysynth bench loss``: cost and exactness of the UniCon loss against a plain SupCon.

Times UniCon forward+backward (:func:`raysynth.train.losses.contrastive_loss`, paper 000 eq. 3)
on a mixed batch of ``batch`` images x 2 views (``[batch, 2, dim]``, a third of the images
synthetic, random class weights) against SupCon (eq. 1/2) computed the straightforward vectorised
way (:func:`supcon_straightforward`, the classic SupContrast formulation with mask matrices) on
the same batch. Repeats are interleaved and the median of each is reported, so machine noise hits
both alike.

``max_abs_diff`` is the largest difference at the two identities of METHODS.md §1 that tie the
two implementations together:

- no synthetic rows: UniCon == SupCon-Real == the straightforward SupCon;
- SupCon-Mixed: raysynth's ``mode="supcon"`` on the mixed batch == the straightforward SupCon
  on the same rows.
"""

from __future__ import annotations

import statistics
import time

import torch

from raysynth.bench import emit
from raysynth.devices import resolve_device
from raysynth.train.losses import contrastive_loss

NUM_CLASSES = 10
SYNTHETIC_FRACTION = 1 / 3
TEMPERATURE = 0.07


def supcon_straightforward(
    features: torch.Tensor, labels: torch.Tensor, temperature: float = TEMPERATURE
) -> torch.Tensor:
    """SupCon (eq. 1) as SupContrast writes it: ``features [N, V, D]``, ``labels [N]``.

    Every row is an anchor and all anchors have a positive (their other views), so the mean is
    over all ``N*V`` rows. The baseline the bench compares against; not used in training.
    """
    n, views = features.shape[:2]
    contrast = torch.cat(torch.unbind(features, dim=1), dim=0)
    labels = labels.contiguous().view(-1, 1)
    mask = torch.eq(labels, labels.T).float().repeat(views, views)
    anchor_dot_contrast = torch.matmul(contrast, contrast.T) / temperature
    logits_max, _ = torch.max(anchor_dot_contrast, dim=1, keepdim=True)
    logits = anchor_dot_contrast - logits_max.detach()
    logits_mask = torch.scatter(
        torch.ones_like(mask), 1, torch.arange(n * views, device=mask.device).view(-1, 1), 0
    )
    mask = mask * logits_mask
    exp_logits = torch.exp(logits) * logits_mask
    log_prob = logits - torch.log(exp_logits.sum(1, keepdim=True))
    mask_pos_pairs = mask.sum(1)
    mask_pos_pairs = torch.where(mask_pos_pairs < 1e-6, 1, mask_pos_pairs)
    mean_log_prob_pos = (mask * log_prob).sum(1) / mask_pos_pairs
    return -mean_log_prob_pos.mean()


def _make_batch(batch: int, dim: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    features = torch.nn.functional.normalize(torch.randn(batch, 2, dim, generator=g), dim=-1)
    labels = torch.randint(0, NUM_CLASSES, (batch,), generator=g)
    synthetic = torch.rand(batch, generator=g) < SYNTHETIC_FRACTION
    weights = torch.rand(NUM_CLASSES, generator=g)
    return features, labels, synthetic, weights


def _time_backward(loss_fn, features: torch.Tensor) -> float:
    leaf = features.detach().clone().requires_grad_(True)
    if leaf.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    loss_fn(leaf).backward()
    if leaf.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _identity_diff(features, labels, synthetic) -> float:
    with torch.no_grad():
        plain = supcon_straightforward(features, labels)
        unicon_no_synth = contrastive_loss(features, labels, None, None, mode="unicon")
        mixed_ours = contrastive_loss(features, labels, synthetic, mode="supcon")
    return max(abs(float(unicon_no_synth - plain)), abs(float(mixed_ours - plain)))


def run(out: str | None = None, batch: int = 512, dim: int = 128, repeats: int = 20) -> dict:
    """Run the bench; print its JSON and write it to ``out`` (a file, or a folder for
    ``bench-loss.json``) when given. Returns the result dict."""
    device = str(resolve_device("auto"))
    features, labels, synthetic, weights = (t.to(device) for t in _make_batch(batch, dim))

    def unicon(x):
        return contrastive_loss(x, labels, synthetic, weights, mode="unicon")

    def supcon(x):
        return supcon_straightforward(x, labels)

    for _ in range(3):  # warm-up: allocator, kernels, thread pools
        _time_backward(unicon, features)
        _time_backward(supcon, features)
    unicon_times, supcon_times = [], []
    for _ in range(repeats):
        unicon_times.append(_time_backward(unicon, features))
        supcon_times.append(_time_backward(supcon, features))
    unicon_s, supcon_s = statistics.median(unicon_times), statistics.median(supcon_times)

    result = {
        "name": "loss",
        "ratio": unicon_s / supcon_s,
        "max_abs_diff": _identity_diff(features, labels, synthetic),
        "unicon_ms": unicon_s * 1e3,
        "supcon_ms": supcon_s * 1e3,
        "batch": batch,
        "dim": dim,
        "rows": 2 * batch,
        "repeats": repeats,
        "device": device,
        "threads": torch.get_num_threads(),
    }
    return emit(result, out)
