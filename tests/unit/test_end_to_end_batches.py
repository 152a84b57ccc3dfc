"""The end-to-end classifier's mini-batches (paper 002 §4): the real/synthetic share of every
batch and the class prior balanced softmax adds to the logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raysynth.config import build_config
from raysynth.train import classifier
from raysynth.train.arrays import LabeledArrays
from raysynth.train.models import encoder_config


@pytest.mark.parametrize("share", [0.0, 0.25, 0.5])
def test_every_batch_holds_the_synthetic_share_and_the_loss_the_batch_prior(monkeypatch, share):
    """``end_to_end.synthetic_share``: each mini-batch is ``round(B·share)`` synthetic rows and the
    rest real ones, every real row once per epoch; with balanced softmax the loss sees
    ``logits + log prior`` where the prior is the batches' class mix (paper 002 §4). Real images
    are all 0 and synthetic ones all 1, so a row's source is visible in its pixels."""
    seen, priors = [], []
    augment = classifier.augment
    monkeypatch.setattr(classifier, "augment",
                        lambda x, kind, gen: seen.append(x.clone()) or augment(x, kind, gen))
    prior_of = classifier.effective_prior
    monkeypatch.setattr(classifier, "effective_prior",
                        lambda *a: priors.append(prior_of(*a)) or priors[-1])
    real = LabeledArrays(np.zeros((24, 1, 8, 8), np.float32), np.array([0] * 18 + [1] * 6))
    syn = LabeledArrays(np.ones((10, 1, 8, 8), np.float32), np.array([1] * 10))
    cfg = build_config(overrides={"end_to_end.epochs": 2, "end_to_end.batch_size": 8,
                                  "end_to_end.synthetic_share": share}).end_to_end
    enc = encoder_config("small_cnn", 1, 8, 4, 8)
    classifier.fit_end_to_end(real, syn, 2, enc, cfg, "none", 0, torch.device("cpu"))

    n_syn = round(8 * share)
    per_epoch = -(-24 // (8 - n_syn))
    assert len(seen) == 2 * per_epoch
    for x in seen:
        is_syn = x.flatten(1).max(1).values > 0
        assert int(is_syn.sum()) == n_syn
        assert not is_syn[: len(x) - n_syn].any()  # real rows first, then the synthetic draws
    real_rows = sum(len(x) - n_syn for x in seen[:per_epoch])
    assert real_rows == 24  # one pass over the real rows per epoch
    # the batches' class mix: (1 - share)·p_real + share·p_syn = [0.75, 0.25] → [0.75(1-s), ...]
    want = np.array([0.75 * (1 - share), 0.25 * (1 - share) + share])
    np.testing.assert_allclose(np.asarray(priors[0], np.float64), want, atol=1e-12)
