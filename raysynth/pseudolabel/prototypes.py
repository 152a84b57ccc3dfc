"""AiR steps 3–4 (METHODS §4): the synthetic prototype of each class, and the accuracies of the
zero-shot, fused (``p* = p + λ p̂``) and learned-prompt classifiers."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from raysynth.filter.select import fuse, most_representative, prototype_probs
from raysynth.pseudolabel.zero_shot import PseudoLabels, label_accuracy

log = logging.getLogger("raysynth.pseudolabel")


def prototypes(syn: PseudoLabels) -> tuple[np.ndarray, dict[str, str]]:
    """``[C, D]`` embeddings of the most representative generated image per class (a zero row for
    a class with none: cosine 0 to everything) and ``{class: sample_id}``."""
    assert syn.true_labels is not None
    best = most_representative(syn.probs, syn.true_labels)
    c, d = syn.probs.shape[1], syn.embeddings.shape[1]
    proto = np.zeros((c, d), np.float32)
    ids: dict[str, str] = {}
    for k, row in best.items():
        proto[k] = syn.embeddings[row]
        ids[syn.class_names[k]] = syn.sample_ids[row]
    missing = [syn.class_names[k] for k in range(c) if k not in best]
    if missing:
        log.warning("no generated image for classes %s: their prototype is empty", missing)
    return proto, ids


def argmax_accuracy(probs: np.ndarray, truth: np.ndarray | None) -> float:
    return label_accuracy(np.argmax(probs, axis=1), truth)


def accuracies(
    unl: PseudoLabels, test: PseudoLabels, proto: np.ndarray, lam: float, tau: float,
    prompt_labels: np.ndarray, prompt_probs: Any,
) -> tuple[dict[str, float], dict[str, float]]:
    """Pseudo-label accuracy on the unlabeled images (zero-shot ``text``, ``fused``, learned
    ``prompt``) and test accuracy (``zero_shot``, ``fused``, ``prompt``, ``prompt_fused``; empty
    without a test split). ``prompt_probs(emb, tau)`` is the learned prompt's classifier."""
    hat_unl = prototype_probs(unl.embeddings, proto, tau)
    pseudo = {
        "text": unl.accuracy(),
        "fused": argmax_accuracy(fuse(unl.probs, hat_unl, lam), unl.true_labels),
        "prompt": label_accuracy(prompt_labels, unl.true_labels),
    }
    if not len(test.sample_ids):
        return pseudo, {}
    hat_test = prototype_probs(test.embeddings, proto, tau)
    learned_test = prompt_probs(test.embeddings, tau)
    tests = {
        "zero_shot": test.accuracy(),
        "fused": argmax_accuracy(fuse(test.probs, hat_test, lam), test.true_labels),
        "prompt": argmax_accuracy(learned_test, test.true_labels),
        "prompt_fused": argmax_accuracy(fuse(learned_test, hat_test, lam), test.true_labels),
    }
    return pseudo, tests
