"""AiR selection and auxiliary classifier (paper 001, METHODS §4 steps 3–4).

Plain numpy on embeddings and probabilities, so it runs the same on the driver, in an actor and
in a unit test:

- :func:`most_representative` — per class, the generated image ``x̂*_c`` most confidently
  predicted as its own class (step 3);
- :func:`prototype_probs` — ``p̂_c = softmax_c(cos(F(x), F(x̂*_c)) / τ)`` (step 4);
- :func:`fuse` / :func:`pseudo_labels` — ``p* = p + λ p̂`` and ``argmax p*`` (step 4).
"""

from __future__ import annotations

import numpy as np

from raysynth.filter.threshold import normalize


def cosine_softmax(x: np.ndarray, y: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax_c(cos(x_n, y_c) / τ)``: ``x: [N, D]``, ``y: [C, D]`` → ``[N, C]`` (rows sum to 1).

    Rows of ``x`` and ``y`` need not be unit-norm; a zero row has cosine 0 with everything.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"need x: [N, D] and y: [C, D], got {x.shape} and {y.shape}")
    logits = normalize(x) @ normalize(y).T / temperature
    logits -= logits.max(axis=1, keepdims=True)  # exp never overflows
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def most_representative(probs: np.ndarray, labels: np.ndarray) -> dict[int, int]:
    """``{class: row}`` — per class, the row labelled with it whose own-class probability
    ``probs[row, class]`` is highest (ties → the lowest row). Classes with no row are absent.

    ``probs: [N, C]`` (e.g. CLIP zero-shot ``p`` of the generated images), ``labels: [N]`` the
    class each image was generated for.
    """
    probs, labels = np.asarray(probs), np.asarray(labels)
    if probs.ndim != 2 or labels.shape != (len(probs),):
        raise ValueError(
            f"need probs: [N, C] and labels: [N], got {probs.shape} and {labels.shape}"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= probs.shape[1]):
        raise ValueError(
            f"labels must lie in [0, {probs.shape[1]}), got {labels.min()}..{labels.max()}"
        )
    out: dict[int, int] = {}
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        out[int(c)] = int(rows[np.argmax(probs[rows, c])])  # argmax keeps the first of ties
    return out


def prototype_probs(
    image_emb: np.ndarray, prototype_emb: np.ndarray, temperature: float = 0.01
) -> np.ndarray:
    """Auxiliary classifier ``p̂: [N, C]``, ``p̂_c = softmax_c(cos(F(x), F(x̂*_c)) / τ)``.

    ``image_emb: [N, D]`` the images to label, ``prototype_emb: [C, D]`` row ``c`` the embedding
    of class ``c``'s most representative generated image.
    """
    return cosine_softmax(image_emb, prototype_emb, temperature)


def fuse(p: np.ndarray, p_hat: np.ndarray, lam: float) -> np.ndarray:
    """``p* = p + λ p̂`` (``[N, C]``; not renormalised — only its argmax is used)."""
    p, p_hat = np.asarray(p), np.asarray(p_hat)
    if p.shape != p_hat.shape:
        raise ValueError(f"p and p_hat must have one shape, got {p.shape} and {p_hat.shape}")
    return p + lam * p_hat


def pseudo_labels(p: np.ndarray, p_hat: np.ndarray, lam: float) -> np.ndarray:
    """``argmax_c p*_c`` per row, ``[N]`` int64 (ties → the lowest class)."""
    return np.argmax(fuse(p, p_hat, lam), axis=1).astype(np.int64)
