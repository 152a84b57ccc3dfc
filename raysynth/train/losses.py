"""Supervised contrastive losses: SupCon-Real, SupCon-Mixed, UniCon and multi-label SupCon.

One function, :func:`contrastive_loss`, implements all four (METHODS.md §1, paper 000):

- ``mode="supcon"`` on real rows only is **SupCon-Real** (paper 000, eq. 1);
- ``mode="supcon"`` on real and synthetic rows is **SupCon-Mixed** (eq. 2): every row is an
  anchor, a positive and a negative alike, so the ``synthetic`` flags are ignored;
- ``mode="unicon"`` is **UniCon** (eq. 3): anchors are the real rows; for a real anchor ``i``::

      l_i = -1/|P(i)| sum_{p in P(i)} log s(i, p)  -  w_{y_i}/|U(i)| sum_{u in U(i)} log s(i, u)
      s(i, j) = exp(v_i.v_j / tau) / sum_{a in A(i)} exp(v_i.v_a / tau)

  with ``P(i)`` the real rows of the anchor's class (its other view included), ``U(i)`` the
  synthetic rows of its class and ``A(i)`` every row but ``i``, real and synthetic: synthetic rows
  stay in every denominator, so with ``w = 0`` they still act as negatives for other classes;
- multi-hot ``labels`` of shape ``[B, C]`` give the multi-label variant (paper 004): two rows are
  positives when they share at least one label. Single-label input reduces to SupCon.

Shapes: ``features`` is ``[B, D]`` (rows already flattened) or ``[N, V, D]`` (``N`` images with
``V`` views each, as in SupContrast); ``labels`` is ``[B]``/``[N]`` class ids or
``[B, C]``/``[N, C]`` multi-hot; ``synthetic`` is ``[B]``/``[N]`` bool; ``class_weights`` is
``[C]``. With ``[N, V, D]`` the per-image tensors are repeated over the views.

Decisions the papers leave open:

- An anchor without any positive (SupCon: ``P(i)`` empty; UniCon: ``P(i)`` and ``U(i)`` both
  empty) contributes nothing and is left out of the mean, so singleton classes give finite values
  and do not dilute the loss; a batch where no anchor has a positive gives 0. In UniCon an anchor with
  ``U(i)`` non-empty counts in the mean whatever its weight, so the loss is affine in each ``w_c``.
- In UniCon each sum is divided by its own unweighted count; an empty set's term is 0.
- Multi-label UniCon: the weight of an anchor is the mean of its labels' weights.
- The paper sums over anchors; raysynth takes the mean (METHODS §1, as SupContrast does) so that
  the scale does not depend on the batch size.

The loss is computed in at least float32 (half/bfloat16 inputs are upcast) with the log-sum-exp
over ``A(i)`` taken after subtracting the row max, from one ``[B, B]`` similarity matrix.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MODES", "ContrastiveLoss", "contrastive_loss"]

MODES = ("supcon", "unicon")


def contrastive_loss(
    features: torch.Tensor,
    labels: torch.Tensor,
    synthetic: torch.Tensor | None = None,
    class_weights: torch.Tensor | None = None,
    mode: str = "unicon",
    temperature: float = 0.07,
) -> torch.Tensor:
    """SupCon (eq. 1, 2) or UniCon (eq. 3) loss of a batch of L2-normalised embeddings.

    Args:
        features: ``[B, D]`` rows, or ``[N, V, D]`` for ``N`` images with ``V`` views each.
            Expected L2-normalised (not checked: normalising here would hide a missing head).
        labels: ``[B]`` (``[N]``) integer class ids, or ``[B, C]`` (``[N, C]``) multi-hot
            (bool, int or float 0/1) for the multi-label variant.
        synthetic: ``[B]`` (``[N]``) bool, True for synthetic rows; None means all rows are
            real. Ignored by ``mode="supcon"`` (SupCon-Mixed treats synthetic rows as real).
        class_weights: ``[C]`` UniCon weight of each class, usually in [0, 1]; None means all
            ones. Only for ``mode="unicon"``. With class ids, ``C`` must exceed every label.
        mode: ``"supcon"`` (every row an anchor; SupCon-Real or SupCon-Mixed) or ``"unicon"``.
        temperature: ``tau`` > 0.

    Returns:
        Scalar: mean over anchors that have at least one positive (0 if none has).
    """
    feats, labels, synthetic = _flatten_views(features, labels, synthetic)
    _check_inputs(feats, labels, synthetic, class_weights, mode, temperature)
    dtype = torch.promote_types(feats.dtype, torch.float32)
    feats = feats.to(dtype)
    if feats.shape[0] < 2:
        # No row has a positive; the sum keeps the graph so backward() still works.
        return feats.sum() * 0
    logits, log_denom = _logits(feats, temperature)  # step 1
    flags = None if mode == "supcon" else synthetic  # SupCon-Mixed: synthetic rows count as real
    coef, coef_sum, anchor = _coefficients(labels, flags, class_weights, dtype, feats.device)

    # 4. sum_j coef_ij log s(i,j) = sum_j coef_ij logits_ij - log_denom_i sum_j coef_ij;
    #    coef is 0 on the diagonal, so the raw logits need no masking there.
    per_anchor = coef_sum * log_denom - (coef * logits).sum(dim=1)
    return (per_anchor * anchor).sum() / anchor.sum().clamp_min(1)


def _logits(feats: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, B]`` logits ``v_i.v_j / tau`` and ``[B]`` log-denominators over ``A(i)``.

    1. log-denominators over A(i) = all rows but i, from logits with the row max subtracted
       (a constant per anchor, so log s(i, j) is unchanged and every term stays <= 0).
    """
    logits = (feats / temperature) @ feats.T
    logits = logits - logits.amax(dim=1, keepdim=True).detach()
    self_mask = torch.eye(feats.shape[0], dtype=torch.bool, device=feats.device)
    log_denom = torch.logsumexp(logits.masked_fill(self_mask, float("-inf")), dim=1)
    return logits, log_denom


def _coefficients(
    labels: torch.Tensor,
    synthetic: torch.Tensor | None,
    class_weights: torch.Tensor | None,
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Steps 2–3: ``coef [B, B]``, its row sums ``coef_sum [B]`` and the anchor mask ``[B]``.

    ``synthetic`` None means every row is real (SupCon, or UniCon without synthetic flags).
    """
    rows = labels.shape[0]
    # 2. positives: same class, or at least one shared label; never the row itself. SupCon
    #    (eq. 1, 2) is UniCon with every row real: U(i) is empty and every row is an anchor.
    same = _same_label(labels)
    same.fill_diagonal_(False)
    same = same.to(dtype)
    if synthetic is None:
        real = torch.ones(rows, dtype=torch.bool, device=device)
    else:
        real = ~synthetic
    pos_count = same @ real.to(dtype)  # |P(i)|
    sup_count = same.sum(dim=1) - pos_count  # |U(i)|
    weight = _anchor_weights(labels, class_weights, dtype, device)

    # 3. coef[i, j] = weight of log s(i, j) in anchor i's loss: 1/|P(i)| on P(i) and
    #    w_i/|U(i)| on U(i), each set divided by its own unweighted count (folding w into a
    #    mask normalised by its own sum would cancel w); an empty set's term is 0.
    pos_scale = 1 / pos_count.clamp_min(1)
    sup_scale = weight / sup_count.clamp_min(1)
    coef = same * torch.where(real.unsqueeze(0), pos_scale.unsqueeze(1), sup_scale.unsqueeze(1))
    coef_sum = (pos_count > 0).to(dtype) + weight * (sup_count > 0).to(dtype)
    anchor = (real & (pos_count + sup_count > 0)).to(dtype)
    return coef, coef_sum, anchor


class ContrastiveLoss(nn.Module):
    """Module form of :func:`contrastive_loss` with ``mode`` and ``temperature`` as config."""

    def __init__(self, mode: str = "unicon", temperature: float = 0.07) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.temperature = temperature

    def forward(
        self,
        features: torch.Tensor,
        labels: torch.Tensor,
        synthetic: torch.Tensor | None = None,
        class_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return contrastive_loss(
            features, labels, synthetic, class_weights, self.mode, self.temperature
        )

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, temperature={self.temperature}"


def _flatten_views(
    features: torch.Tensor, labels: torch.Tensor, synthetic: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``[N, V, D]`` -> ``[V*N, D]`` view-major, with labels and flags repeated per view."""
    if features.dim() == 2:
        return features, labels, synthetic
    if features.dim() != 3:
        raise ValueError(f"features must be [B, D] or [N, V, D], got shape {tuple(features.shape)}")
    n, views = features.shape[:2]
    if labels.dim() not in (1, 2) or labels.shape[0] != n:
        raise ValueError(
            f"with features [N, V, D] = {tuple(features.shape)}, labels must be [N] or [N, C] "
            f"with N = {n}; got {tuple(labels.shape)}"
        )
    if synthetic is not None and tuple(synthetic.shape) != (n,):
        raise ValueError(
            f"with features [N, V, D] = {tuple(features.shape)}, synthetic must be [N] = "
            f"[{n}]; got {tuple(synthetic.shape)}"
        )
    feats = torch.cat(torch.unbind(features, dim=1), dim=0)
    labels = labels.repeat(views) if labels.dim() == 1 else labels.repeat(views, 1)
    if synthetic is not None:
        synthetic = synthetic.repeat(views)
    return feats, labels, synthetic


def _check_inputs(
    feats: torch.Tensor,
    labels: torch.Tensor,
    synthetic: torch.Tensor | None,
    class_weights: torch.Tensor | None,
    mode: str,
    temperature: float,
) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not feats.is_floating_point():
        raise ValueError(f"features must be a float tensor, got {feats.dtype}")
    rows = feats.shape[0]
    _check_labels(labels, rows)
    if synthetic is not None:
        _check_synthetic(synthetic, rows)
    if class_weights is not None:
        _check_class_weights(class_weights, labels, mode, rows)


def _check_labels(labels: torch.Tensor, rows: int) -> None:
    if labels.dim() not in (1, 2) or labels.shape[0] != rows:
        raise ValueError(
            f"labels must be [B] class ids or [B, C] multi-hot with B = {rows} rows of "
            f"features; got {tuple(labels.shape)}"
        )
    if labels.dim() == 1 and (labels.is_floating_point() or labels.dtype == torch.bool):
        raise ValueError(
            f"[B] labels must be integer class ids, got {labels.dtype}; pass multi-hot "
            "labels as [B, C]"
        )


def _check_synthetic(synthetic: torch.Tensor, rows: int) -> None:
    if tuple(synthetic.shape) != (rows,):
        raise ValueError(f"synthetic must be [B] = [{rows}] flags, got {tuple(synthetic.shape)}")
    if synthetic.dtype != torch.bool:
        raise ValueError(f"synthetic must be a bool tensor, got {synthetic.dtype}")


def _check_class_weights(
    class_weights: torch.Tensor, labels: torch.Tensor, mode: str, rows: int
) -> None:
    if mode != "unicon":
        raise ValueError(
            "class_weights only apply to mode='unicon'; SupCon treats all rows alike, "
            "so drop class_weights or use mode='unicon'"
        )
    if class_weights.dim() != 1 or not class_weights.is_floating_point():
        raise ValueError(
            f"class_weights must be a 1-D float tensor [C], got {class_weights.dtype} "
            f"of shape {tuple(class_weights.shape)}"
        )
    num_classes = class_weights.shape[0]
    if labels.dim() == 2 and labels.shape[1] != num_classes:
        raise ValueError(
            f"class_weights has {num_classes} entries but multi-hot labels have "
            f"{labels.shape[1]} classes"
        )
    if (
        labels.dim() == 1
        and rows
        and not (0 <= int(labels.min()) <= int(labels.max()) < num_classes)
    ):
        raise ValueError(
            f"labels must be class ids in [0, {num_classes}) to index class_weights of "
            f"{num_classes} classes; got ids in [{int(labels.min())}, {int(labels.max())}]"
        )


def _same_label(labels: torch.Tensor) -> torch.Tensor:
    """``[B, B]`` bool: rows with the same class id, or sharing at least one of C labels."""
    if labels.dim() == 1:
        return labels.unsqueeze(0) == labels.unsqueeze(1)
    hot = labels.to(torch.float32)
    return (hot @ hot.T) > 0


def _anchor_weights(
    labels: torch.Tensor,
    class_weights: torch.Tensor | None,
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor:
    """``[B]`` UniCon weight of each row: ``w[y_i]``, or the mean over a multi-hot row's labels."""
    if class_weights is None:
        return torch.ones(labels.shape[0], dtype=dtype, device=device)
    weights = class_weights.to(device=device, dtype=dtype)
    if labels.dim() == 1:
        return weights[labels]
    hot = labels.to(dtype)
    return (hot @ weights) / hot.sum(dim=1).clamp_min(1)
