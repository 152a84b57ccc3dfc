import itertools

import numpy as np
import pytest
import torch

from raysynth.filter.threshold import accept, class_pairs, class_thresholds, cosine_to_reference
from raysynth.mix.mixing import mix_batch


def test_threshold_equals_hand_computation_on_known_embeddings():
    emb = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [3.0, 0.0], [3.0, 4.0]])
    labels = np.array([0, 0, 0, 1, 1])
    tau = class_thresholds(emb, labels, 2, pairs=100, seed=0)
    s = 1 / np.sqrt(2)
    assert tau[0] == pytest.approx((0.0 + s + s) / 3)  # all 3 pairs of class 0
    assert tau[1] == pytest.approx(3 / 5)  # cos([3,0],[3,4]) = 9/15


def test_threshold_samples_z_distinct_pairs_when_many():
    rng = np.random.default_rng(0)
    pp = class_pairs(30, 50, rng)
    assert pp.shape == (50, 2)
    assert np.all(pp[:, 0] < pp[:, 1]) and np.all(pp[:, 1] < 30)
    assert len({tuple(p) for p in pp}) == 50
    assert len(class_pairs(5, 50, rng)) == 10
    assert {tuple(p) for p in class_pairs(5, 50, rng)} == set(itertools.combinations(range(5), 2))


def test_singleton_class_has_no_threshold_and_accepts():
    tau = class_thresholds(np.eye(3), np.array([0, 1, 1]), 2, 10, 0)
    assert np.isnan(tau[0]) and tau[1] == pytest.approx(0.0)
    cos = cosine_to_reference(np.array([[1.0, 0.0], [1.0, 0.0]]), np.array([[1.0, 0.0], [0.0, 1.0]]))
    np.testing.assert_allclose(cos, [1.0, 0.0])
    np.testing.assert_array_equal(accept(np.array([-1.0, 0.5, -0.5]), np.array([0, 1, 1]), tau),
                                  [True, True, False])


def test_mixing_keeps_labels_and_areas_in_range():
    gen = torch.Generator().manual_seed(0)
    real = torch.zeros(64, 1, 8, 8)
    labels = torch.arange(64) % 4
    syn = torch.ones(12, 1, 8, 8)
    syn_labels = torch.arange(12) % 3  # class 3 has no synthetic image
    out, info = mix_batch(real, labels, syn, syn_labels, fraction=1.0, gen=gen)
    assert out.shape == real.shape
    # rows of class 3 cannot be mixed; every other row is
    assert torch.equal(info.mixed, labels != 3)
    assert torch.equal(out[labels == 3], real[labels == 3])
    # real is 0 and synthetic 1, so the mean pixel of a row is exactly its synthetic share
    np.testing.assert_allclose(1 - out.mean(dim=(1, 2, 3)).numpy(), info.real_share.numpy(), atol=1e-6)
    assert torch.all((info.real_share >= 0) & (info.real_share <= 1))
    patch = info.mixed & ~info.pixel
    # a patch covers 10–90 % of each side: between 1 % and 81 % of the area
    area = 1 - info.real_share[patch]
    assert torch.all((area >= 0.01 - 1e-6) & (area <= 0.81 + 1e-6)) and patch.any()
    assert (info.pixel & info.mixed).any()  # both kinds occur


def test_mixing_fraction_half():
    gen = torch.Generator().manual_seed(1)
    labels = torch.zeros(400, dtype=torch.long)
    out, info = mix_batch(torch.zeros(400, 1, 4, 4), labels, torch.ones(3, 1, 4, 4),
                          torch.zeros(3, dtype=torch.long), fraction=0.5, gen=gen)
    assert 0.4 < info.mixed.float().mean() < 0.6
    assert 0.35 < info.pixel[info.mixed].float().mean() < 0.65
