"""AiR's reported accuracies (METHODS §4): zero-shot ``argmax p``, fused ``argmax(p + λ p̂)`` with
``p̂`` the cosine softmax to the synthetic prototypes, and the learned prompt's — on embeddings
chosen so that λ decides the fused labels."""

from __future__ import annotations

import numpy as np
import pytest

from raysynth.pseudolabel.prototypes import accuracies
from raysynth.pseudolabel.zero_shot import PseudoLabels

# two unit embeddings, one per class prototype: each image lies on the class-1 prototype, so
# p̂ ≈ [0, 1] for all three at τ = 0.01
PROTO = np.eye(2, dtype=np.float32)
EMB = np.array([[0.0, 1.0]] * 3, np.float32)
P = np.array([[0.6, 0.4], [0.6, 0.4], [0.3, 0.7]])  # zero-shot: only the third is class 1
TRUTH = np.array([1, 1, 1])


def _labels(truth: np.ndarray | None = TRUTH) -> PseudoLabels:
    return PseudoLabels(["a", "b", "c"], EMB, P, ["x", "y"], truth)


@pytest.mark.parametrize(("lam", "fused"), [(0.3, 1.0), (0.15, 1 / 3), (0.0, 1 / 3)])
def test_fused_accuracy_is_argmax_of_p_plus_lambda_p_hat(lam, fused):
    # 0.4 + 0.3 · p̂₁ = 0.7 > 0.6: the first two flip to class 1; 0.4 + 0.15 = 0.55 < 0.6 does not
    prompt_labels = np.array([1, 0, 1])
    pseudo, tests = accuracies(
        _labels(), _labels(), PROTO, lam, 0.01, prompt_labels, lambda emb, tau: P[: len(emb)]
    )
    assert pseudo["text"] == pytest.approx(1 / 3)
    assert pseudo["fused"] == pytest.approx(fused)
    assert pseudo["prompt"] == pytest.approx(2 / 3)
    assert tests["zero_shot"] == pytest.approx(1 / 3)
    assert tests["fused"] == pytest.approx(fused)
    assert tests["prompt"] == pytest.approx(1 / 3)  # the stand-in prompt classifier returns p
    assert tests["prompt_fused"] == pytest.approx(fused)


def test_without_a_test_split_only_pseudo_label_accuracies_are_reported():
    empty = PseudoLabels([], np.zeros((0, 2), np.float32), np.zeros((0, 2)), ["x", "y"], TRUTH[:0])
    pseudo, tests = accuracies(_labels(), empty, PROTO, 0.3, 0.01, TRUTH, None)
    assert tests == {} and pseudo["fused"] == pytest.approx(1.0)
