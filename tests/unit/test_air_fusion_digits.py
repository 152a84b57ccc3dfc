"""AiR's auxiliary classifier on real data (METHODS §4 steps 1–4): does ``argmax(p + λ p̂)`` label
an unlabeled set better than the "text" classifier ``p`` alone? Measured on scikit-learn's bundled
digits (all 1,797 images, labels used only to score), end to end with the digits preset's pixel
diffusion model — no Ray, so it lives in tests/unit; marked slow (~30–60 s on 2 cores).

The stand-ins, chosen to mirror CLIP's Eq. 1 and Eq. 7 rather than to make the number look good:

- feature space ``F``: PCA (20 components) fit on the unlabeled images — it uses no label;
- "text" classifier ``p = softmax_c(cos(F(x), a_c) / τ)``, τ = 0.01, where the anchor ``a_c`` is
  ``F`` of ONE labelled image per class (a one-example "description" of the class: right class,
  but an arbitrary view of it — weak the way a class-name prompt is weak);
- step 1: the K = 16 most confident images per class under ``p`` (top-K pseudo-labels);
- step 2: the pixel diffusion model trained on those pseudo-labelled images (the AiR flow; LoRA is
  replaced by training the small model outright, with a reduced step count);
- step 3: M = 16 generated images per class, the most representative one per class by ``p``;
- step 4: ``p̂ = softmax_c(cos(F(x), F(x̂*_c)) / τ)`` with the same τ, fused with λ = 1.

λ = 1, τ = 0.01 and K = 16 are the paper's defaults. The head is not the first one tried: a
logistic-regression "text" head on 1–10 labels (with or without label noise) gave no gain — its
probabilities are so flat that ``p + p̂`` is ``p̂`` alone, and one generated prototype per class was
no better a classifier than that head. The cosine head puts ``p`` and ``p̂`` on one scale, as CLIP
does. With it, seeds tried while developing, text-only → fused accuracy (gain in points):

    seed 0: 0.688 → 0.697 (+0.8)    seed 5: 0.572 → 0.627 (+5.6)
    seed 1: 0.514 → 0.583 (+7.0)    seed 6: 0.625 → 0.641 (+1.6)
    seed 2: 0.642 → 0.689 (+4.7)    seed 7: 0.542 → 0.596 (+5.4)
    seed 3: 0.638 → 0.686 (+4.8)    seed 8: 0.657 → 0.698 (+4.2)
    seed 4: 0.626 → 0.657 (+3.1)    seed 9: 0.677 → 0.708 (+3.2)

The gain holds for every seed tried but varies in size (mean +4.0); the test asserts seed 2, near
the median, with a 2-point margin.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raysynth.filter.select import (
    cosine_softmax,
    most_representative,
    prototype_probs,
    pseudo_labels,
)
from raysynth.generate.pixel import PixelDiffusionConfig, load_pixel_model
from raysynth.generate.pixel_training import load_or_train
from raysynth.generate.sampling import sample_pixel
from raysynth.pseudolabel.top_k import top_k_per_class

TAU, LAM, K, M = 0.01, 1.0, 16, 16
SEED = 2


def air_fusion(seed: int, cache: str, train_steps: int = 500) -> dict[str, float]:
    """Run the flow above for one seed; returns the accuracies on the unlabeled set."""
    from sklearn.datasets import load_digits
    from sklearn.decomposition import PCA

    torch.set_num_threads(1)
    digits = load_digits()
    x, y = digits.data / 16.0, digits.target  # y: scoring only
    pca = PCA(20, random_state=0).fit(x)  # label-free feature space F

    # "text" classifier: one labelled image per class as its anchor
    rng = np.random.default_rng(seed)
    anchors = x[[rng.choice(np.flatnonzero(y == c)) for c in range(10)]]

    def text_probs(images):
        return cosine_softmax(pca.transform(images), pca.transform(anchors), TAU)

    p = text_probs(x)

    # 1. top-K pseudo-labels → 2. generator trained on them
    top = top_k_per_class(p, K)
    cfg = PixelDiffusionConfig(
        num_classes=10,
        block_out_channels=(16, 32),
        layers_per_block=1,
        train_steps=train_steps,
        seed=seed,
    )
    images = x[top.indices].reshape(-1, 1, 8, 8).astype(np.float32)
    folder = load_or_train(cache, images, top.labels, cfg, device="cpu")
    unet, sched, _, _ = load_pixel_model(folder, "cpu")

    # 3. M generated images per class, the most representative one per class by p
    labels = np.repeat(np.arange(10), M)
    seeds = [seed * 10_000 + i for i in range(len(labels))]
    generated, _ = sample_pixel(unet, sched, labels.tolist(), seeds, num_steps=20)
    generated = generated.reshape(len(labels), 64).astype(np.float64) / 255.0
    best = most_representative(text_probs(generated), labels)
    prototypes = generated[[best[c] for c in range(10)]]

    # 4. auxiliary classifier and fusion
    p_hat = prototype_probs(pca.transform(x), pca.transform(prototypes), TAU)
    return {
        "text_only": float(np.mean(p.argmax(1) == y)),
        "prototypes_only": float(np.mean(p_hat.argmax(1) == y)),
        "fused": float(np.mean(pseudo_labels(p, p_hat, LAM) == y)),
        "top_k_precision": float(np.mean(top.labels == y[top.indices])),
    }


@pytest.mark.slow
def test_fused_pseudo_labels_beat_text_only_on_digits(tmp_path):
    got = air_fusion(SEED, str(tmp_path / "generator"))
    print(
        f"\nAiR fusion on digits (seed {SEED}, N=1797): text-only {got['text_only']:.3f}, "
        f"fused {got['fused']:.3f} (prototypes alone {got['prototypes_only']:.3f}, "
        f"top-{K} precision {got['top_k_precision']:.3f})"
    )
    assert got["top_k_precision"] > got["text_only"] + 0.1  # the confident picks are cleaner
    assert got["fused"] >= got["text_only"] + 0.02
