"""contrastive_loss against a per-anchor double loop written straight from paper 000, eq. 1-3."""

from __future__ import annotations

import math

import pytest
import torch

from raysynth.train.losses import ContrastiveLoss, contrastive_loss

TAU = 0.07


# --- reference: one anchor at a time, float64, no vectorisation ------------------------------


def reference_loss(
    features: torch.Tensor,
    label_sets: list[set[int]],
    synthetic: list[bool],
    weights: list[float] | torch.Tensor | None,
    mode: str,
    temperature: float = TAU,
) -> torch.Tensor:
    """METHODS §1 literally. ``features`` [B, D] float64; ``label_sets[i]`` = labels of row i.

    Anchors without any positive are left out of the mean (the documented decision).
    """
    rows = features.shape[0]
    per_anchor = []
    for i in range(rows):
        if mode == "unicon" and synthetic[i]:
            continue
        others = [a for a in range(rows) if a != i]
        denom = sum(torch.exp(features[i] @ features[a] / temperature) for a in others)

        def log_s(j, i=i, denom=denom):
            return features[i] @ features[j] / temperature - torch.log(denom)

        positives = [j for j in others if label_sets[i] & label_sets[j]]
        if mode == "supcon":
            if not positives:
                continue
            per_anchor.append(-sum(log_s(p) for p in positives) / len(positives))
            continue
        real_pos = [j for j in positives if not synthetic[j]]
        synth_pos = [j for j in positives if synthetic[j]]
        if not real_pos and not synth_pos:
            continue
        w = 1.0 if weights is None else sum(weights[c] for c in label_sets[i]) / len(label_sets[i])
        loss_i = torch.zeros((), dtype=features.dtype)
        if real_pos:
            loss_i = loss_i - sum(log_s(p) for p in real_pos) / len(real_pos)
        if synth_pos:
            loss_i = loss_i - w * sum(log_s(u) for u in synth_pos) / len(synth_pos)
        per_anchor.append(loss_i)
    if not per_anchor:
        return torch.zeros((), dtype=features.dtype)
    return sum(per_anchor) / len(per_anchor)


# --- batches ---------------------------------------------------------------------------------


def make_batch(seed: int, n: int = 10, views: int = 2, dim: int = 8, classes: int = 3, p_syn=0.4):
    """Images [N, V, D] normalised, labels [N], synthetic [N], weights [C]."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.nn.functional.normalize(torch.randn(n, views, dim, generator=g), dim=-1)
    labels = torch.randint(0, classes, (n,), generator=g)
    synthetic = torch.rand(n, generator=g) < p_syn
    weights = torch.rand(classes, generator=g)
    return feats, labels, synthetic, weights


def flat(feats, per_image):
    """The row order contrastive_loss uses for [N, V, D]: view-major."""
    views = feats.shape[1]
    rows = torch.cat(torch.unbind(feats, dim=1), dim=0)
    if isinstance(per_image, torch.Tensor) and per_image.dim() == 2:
        return rows, per_image.repeat(views, 1)
    return rows, per_image.repeat(views)


def sets_of(labels: torch.Tensor) -> list[set[int]]:
    if labels.dim() == 1:
        return [{int(c)} for c in labels]
    return [set(torch.nonzero(row).flatten().tolist()) for row in labels]


def ours_and_reference(feats, labels, synthetic, weights, mode):
    """(our loss on float32, reference on float64) for [N, V, D] features."""
    rows, row_labels = flat(feats, labels)
    row_syn = synthetic.repeat(feats.shape[1]).tolist()
    ref = reference_loss(rows.double(), sets_of(row_labels), row_syn, weights, mode)
    ours = contrastive_loss(
        feats.float(),
        labels,
        synthetic,
        weights if mode == "unicon" else None,
        mode=mode,
        temperature=TAU,
    )
    return ours, ref


def close(actual, expected):
    torch.testing.assert_close(actual.double(), expected.double(), rtol=1e-5, atol=1e-5)


# --- agreement with the reference ------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("p_syn", [0.0, 0.4])
def test_supcon_matches_reference(seed, p_syn):
    feats, labels, synthetic, _ = make_batch(seed, p_syn=p_syn)
    ours, ref = ours_and_reference(feats, labels, synthetic, None, "supcon")
    close(ours, ref)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("p_syn", [0.0, 0.3, 0.6])
def test_unicon_matches_reference(seed, p_syn):
    feats, labels, synthetic, weights = make_batch(seed, n=12, classes=4, p_syn=p_syn)
    ours, ref = ours_and_reference(feats, labels, synthetic, weights, "unicon")
    close(ours, ref)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("mode", ["supcon", "unicon"])
def test_multilabel_matches_reference(seed, mode):
    feats, _, synthetic, weights = make_batch(seed, n=10, classes=5)
    g = torch.Generator().manual_seed(100 + seed)
    multi_hot = (torch.rand(10, 5, generator=g) < 0.3).long()
    multi_hot[0] = 0  # a row with no label at all: never a positive, never an anchor with loss
    ours, ref = ours_and_reference(feats, multi_hot, synthetic, weights, mode)
    close(ours, ref)


def test_multilabel_one_hot_equals_class_ids():
    feats, labels, synthetic, weights = make_batch(7, classes=3)
    one_hot = torch.nn.functional.one_hot(labels, 3).bool()
    for mode, w in [("supcon", None), ("unicon", weights)]:
        torch.testing.assert_close(
            contrastive_loss(feats, one_hot, synthetic, w, mode=mode),
            contrastive_loss(feats, labels, synthetic, w, mode=mode),
        )


def test_multilabel_anchor_weight_is_mean_of_its_label_weights():
    # Row 0 (real) has labels {0, 1}; its only positive is a synthetic row sharing label 1.
    g = torch.Generator().manual_seed(3)
    rows = torch.nn.functional.normalize(torch.randn(3, 6, generator=g), dim=-1)
    multi_hot = torch.tensor([[1, 1, 0], [0, 1, 0], [0, 0, 1]])
    synthetic = torch.tensor([False, True, False])
    weights = torch.tensor([0.2, 0.6, 0.9])
    loss = contrastive_loss(rows, multi_hot, synthetic, weights, mode="unicon")
    log_s = rows[0] @ rows[1] / TAU - torch.logsumexp(rows[0] @ rows[1:].T / TAU, dim=0)
    torch.testing.assert_close(loss, -(0.2 + 0.6) / 2 * log_s)


@pytest.mark.parametrize("views", [1, 2, 3])
def test_views_are_rows(views):
    feats, labels, synthetic, weights = make_batch(11, views=views)
    rows, row_labels = flat(feats, labels)
    row_syn = synthetic.repeat(views)
    torch.testing.assert_close(
        contrastive_loss(feats, labels, synthetic, weights),
        contrastive_loss(rows, row_labels, row_syn, weights),
    )


# --- identities of METHODS §1 ----------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_unicon_without_synthetic_is_exactly_supcon_real(seed):
    feats, labels, _, weights = make_batch(seed)
    supcon_real = contrastive_loss(feats, labels, mode="supcon")
    no_flags = contrastive_loss(feats, labels, None, weights, mode="unicon")
    all_real = contrastive_loss(
        feats, labels, torch.zeros(len(labels), dtype=torch.bool), weights, mode="unicon"
    )
    torch.testing.assert_close(no_flags, supcon_real, rtol=0, atol=0)
    torch.testing.assert_close(all_real, supcon_real, rtol=0, atol=0)


def test_supcon_mode_ignores_synthetic_flags():
    feats, labels, synthetic, _ = make_batch(4)
    torch.testing.assert_close(
        contrastive_loss(feats, labels, synthetic, mode="supcon"),
        contrastive_loss(feats, labels, mode="supcon"),
        rtol=0,
        atol=0,
    )


def test_zero_weight_drops_synthetic_numerators_keeps_denominators():
    feats, labels, synthetic, _ = make_batch(5, n=12, classes=3, p_syn=0.4)
    zero = torch.zeros(3)
    ours, ref = ours_and_reference(feats, labels, synthetic, zero, "unicon")
    close(ours, ref)

    # Same value as a loop where synthetic rows are only ever in denominators.
    rows, row_labels = flat(feats, labels)
    row_syn = synthetic.repeat(2)
    rows = rows.double()
    terms = []
    for i in torch.nonzero(~row_syn).flatten().tolist():
        others = [a for a in range(len(rows)) if a != i]
        log_denom = torch.logsumexp(rows[i] @ rows[others].T / TAU, dim=0)
        real_pos = [j for j in others if row_labels[j] == row_labels[i] and not row_syn[j]]
        if real_pos:
            terms.append(-(rows[i] @ rows[real_pos].T / TAU - log_denom).mean())
    close(ours, torch.stack(terms).mean())

    # Not SupCon-Real on the real rows alone: the synthetic rows are still negatives.
    real_only = contrastive_loss(feats[~synthetic], labels[~synthetic], mode="supcon")
    assert abs(float(ours) - float(real_only)) > 1e-4


def test_zero_weight_synthetic_rows_of_another_class_still_act_as_negatives():
    feats, labels, synthetic, _ = make_batch(6, n=12, classes=3, p_syn=0.0)
    labels[-3:] = torch.tensor([2, 2, 2])
    labels[:-3] = labels[:-3] % 2  # real rows are classes 0 and 1 only
    synthetic[-3:] = True
    zero = torch.zeros(3)
    base = contrastive_loss(feats, labels, synthetic, zero)

    moved = feats.clone()
    moved[-3:] = torch.nn.functional.normalize(torch.randn(3, 2, 8), dim=-1)
    assert abs(float(contrastive_loss(moved, labels, synthetic, zero)) - float(base)) > 1e-4

    # And they receive gradient: pushed away from the real anchors.
    leaf = feats.clone().requires_grad_(True)
    contrastive_loss(leaf, labels, synthetic, zero).backward()
    assert leaf.grad[-3:].abs().sum() > 0


@pytest.mark.parametrize("mode", ["supcon", "unicon"])
def test_singleton_classes_are_finite(mode):
    g = torch.Generator().manual_seed(0)
    rows = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=-1)
    rows.requires_grad_(True)
    labels = torch.tensor([0, 1, 2, 3, 3, 4])  # singletons 0, 1, 2, 4; one pair of class 3
    synthetic = torch.tensor([False, False, True, False, False, True])
    weights = torch.full((5,), 0.5) if mode == "unicon" else None
    loss = contrastive_loss(rows, labels, synthetic, weights, mode=mode)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(rows.grad).all()
    ref = reference_loss(rows.detach().double(), sets_of(labels), synthetic.tolist(), weights, mode)
    close(loss, ref)


@pytest.mark.parametrize("mode", ["supcon", "unicon"])
@pytest.mark.parametrize("rows", [1, 4])
def test_no_positive_anywhere_gives_zero_with_finite_gradient(mode, rows):
    feats = torch.nn.functional.normalize(torch.randn(rows, 8), dim=-1).requires_grad_(True)
    labels = torch.arange(rows)
    loss = contrastive_loss(feats, labels, mode=mode)
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert torch.isfinite(feats.grad).all()


def test_anchor_with_only_synthetic_positives():
    # Real row 0 of class 0 has no real positive, one synthetic positive (row 1).
    g = torch.Generator().manual_seed(2)
    rows = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=-1)
    labels = torch.tensor([0, 0, 1, 1])
    synthetic = torch.tensor([False, True, False, False])
    weights = torch.tensor([0.3, 0.8])
    ours = contrastive_loss(rows, labels, synthetic, weights)
    ref = reference_loss(rows.double(), sets_of(labels), synthetic.tolist(), weights, "unicon")
    close(ours, ref)


# --- gradients -------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("mode", ["supcon", "unicon"])
@pytest.mark.parametrize("multilabel", [False, True])
def test_gradients_match_reference(seed, mode, multilabel):
    feats, labels, synthetic, weights = make_batch(seed, n=8, classes=4)
    if multilabel:
        g = torch.Generator().manual_seed(50 + seed)
        labels = (torch.rand(8, 4, generator=g) < 0.35).long()
    rows, row_labels = flat(feats, labels)
    row_syn = synthetic.repeat(2)
    w = weights if mode == "unicon" else None

    ours_in = rows.float().clone().requires_grad_(True)
    contrastive_loss(ours_in, row_labels, row_syn, w, mode=mode).backward()
    ref_in = rows.double().clone().requires_grad_(True)
    reference_loss(ref_in, sets_of(row_labels), row_syn.tolist(), w, mode).backward()
    torch.testing.assert_close(ours_in.grad.double(), ref_in.grad, rtol=1e-4, atol=1e-5)


def test_gradient_through_three_d_features():
    feats, labels, synthetic, weights = make_batch(9)
    leaf = feats.clone().requires_grad_(True)
    contrastive_loss(leaf, labels, synthetic, weights).backward()
    rows, row_labels = flat(feats, labels)
    ref_in = rows.double().clone().requires_grad_(True)
    loss_ref = reference_loss(
        ref_in, sets_of(row_labels), synthetic.repeat(2).tolist(), weights, "unicon"
    )
    loss_ref.backward()
    # rows are view-major: [view 0 of all images; view 1 of all images] -> back to [N, V, D]
    expected = torch.stack(torch.chunk(ref_in.grad, 2, dim=0), dim=1)
    torch.testing.assert_close(leaf.grad.double(), expected, rtol=1e-4, atol=1e-5)


# --- weights ---------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_loss_is_affine_in_a_class_weight_with_the_expected_slope(seed):
    feats, labels, synthetic, weights = make_batch(seed, n=14, classes=3, p_syn=0.4)
    labels[:3] = 1  # make sure class 1 has both real and synthetic rows
    synthetic[:3] = torch.tensor([False, True, True])
    c = 1
    rows, row_labels = flat(feats, labels)
    row_syn = synthetic.repeat(2)
    rows = rows.double()

    # slope = 1/|anchors| * sum over real anchors of class c of -1/|U(i)| sum_U log s(i, u)
    slope_terms, anchors = [], 0
    for i in range(len(rows)):
        if row_syn[i]:
            continue
        others = [a for a in range(len(rows)) if a != i]
        same = [j for j in others if row_labels[j] == row_labels[i]]
        if not same:
            continue
        anchors += 1
        synth = [j for j in same if row_syn[j]]
        if row_labels[i] == c and synth:
            log_denom = torch.logsumexp(rows[i] @ rows[others].T / TAU, dim=0)
            slope_terms.append(-(rows[i] @ rows[synth].T / TAU - log_denom).mean())
    slope = torch.stack(slope_terms).sum() / anchors
    assert abs(float(slope)) > 1e-3

    def loss_at(value: float) -> torch.Tensor:
        w = weights.clone()
        w[c] = value
        return contrastive_loss(feats, labels, synthetic, w).double()

    at_zero = loss_at(0.0)
    for value in (0.25, 0.5, 1.0, 1.7):
        close(loss_at(value), at_zero + value * slope)


def test_weight_of_another_class_without_synthetic_rows_changes_nothing():
    feats, labels, synthetic, weights = make_batch(8, classes=3)
    synthetic[labels == 2] = False
    other = weights.clone()
    other[2] = 1.0 - weights[2]
    torch.testing.assert_close(
        contrastive_loss(feats, labels, synthetic, weights),
        contrastive_loss(feats, labels, synthetic, other),
        rtol=0,
        atol=0,
    )


# --- dtype, module, checks -------------------------------------------------------------------


def test_low_precision_input_is_computed_in_float32():
    feats, labels, synthetic, weights = make_batch(1)
    low = contrastive_loss(feats.bfloat16(), labels, synthetic, weights)
    assert low.dtype == torch.float32
    expected = contrastive_loss(feats.bfloat16().float(), labels, synthetic, weights)
    torch.testing.assert_close(low, expected)


def test_module_wrapper():
    feats, labels, synthetic, weights = make_batch(2)
    module = ContrastiveLoss(mode="unicon", temperature=0.1)
    torch.testing.assert_close(
        module(feats, labels, synthetic, weights),
        contrastive_loss(feats, labels, synthetic, weights, mode="unicon", temperature=0.1),
    )
    assert "unicon" in repr(module)
    with pytest.raises(ValueError, match="mode"):
        ContrastiveLoss(mode="simclr")


def test_temperature_scales_logits():
    feats, labels, synthetic, weights = make_batch(3)
    ours, _ = ours_and_reference(feats, labels, synthetic, weights, "unicon")
    rows, row_labels = flat(feats, labels)
    ref = reference_loss(
        rows.double(), sets_of(row_labels), synthetic.repeat(2).tolist(), weights, "unicon", 0.5
    )
    close(contrastive_loss(feats, labels, synthetic, weights, temperature=0.5), ref)
    assert not math.isclose(float(ours), float(ref))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "simclr"}, "mode must be one of"),
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"labels": torch.zeros(5, dtype=torch.long)}, "labels must be"),
        ({"labels": torch.zeros(10)}, "integer class ids"),
        ({"synthetic": torch.zeros(4, dtype=torch.bool)}, "synthetic must be"),
        ({"synthetic": torch.zeros(10, dtype=torch.long)}, "synthetic must be"),
        ({"class_weights": torch.ones(2)}, "class ids in"),
        ({"class_weights": torch.ones(3, 1)}, "1-D float"),
        ({"class_weights": torch.ones(3), "mode": "supcon"}, "only apply to mode='unicon'"),
        ({"features": torch.ones(10, 2, 8, 1)}, "features must be"),
        ({"features": torch.ones(10, 8, dtype=torch.long)}, "float tensor"),
    ],
)
def test_input_checks(kwargs, message):
    feats, labels, synthetic, weights = make_batch(0, views=1)
    args = {
        "features": feats[:, 0],
        "labels": labels,
        "synthetic": synthetic,
        "class_weights": weights,
        "mode": "unicon",
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        contrastive_loss(**args)


def test_input_checks_three_d_and_multi_hot():
    feats, labels, synthetic, _ = make_batch(0)
    with pytest.raises(ValueError, match=r"labels must be \[N\]"):
        contrastive_loss(feats, labels.repeat(2), synthetic)
    with pytest.raises(ValueError, match=r"synthetic must be \[N\]"):
        contrastive_loss(feats, labels, synthetic.repeat(2))
    with pytest.raises(ValueError, match="multi-hot labels have 4 classes"):
        contrastive_loss(feats, torch.ones(10, 4), synthetic, torch.ones(3))
