"""AiR zero-shot pseudo-labels as a Ray Data actor-pool stage: same ``p`` as in-process.

The tiny open_clip model is a ``local-dir:`` folder, so every actor loads it by name from disk
(nothing is captured from the driver).
"""

from __future__ import annotations

import numpy as np
import torch
from tiny_models import save_clip

from raysynth.config.schema import Resources
from raysynth.data.images import encode_png
from raysynth.data.unlabeled import UnlabeledSet
from raysynth.pseudolabel.zero_shot import (
    ZeroShotSpec,
    clip_embedder_spec,
    pseudo_label,
    pseudo_label_local,
)

torch.set_num_threads(1)

NAMES = ("rose", "tulip", "thorn apple")


def test_actor_pool_gives_the_in_process_probabilities(ray_local, tmp_path):
    name = save_clip(tmp_path / "clip", seed=5)
    rng = np.random.default_rng(7)
    pngs = [encode_png(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(11)]
    data = UnlabeledSet(
        images=pngs,
        sources=[f"mem:{i}" for i in range(11)],
        true_labels=np.array([0, 1, 2, -1, 0, 1, 2, 0, 1, 2, 0]),
    )
    templates = ("a photo of a {c}.", "a close-up photo of a {}.")
    spec = ZeroShotSpec(clip_embedder_spec(name, None, "cpu", batch_size=4), NAMES, templates)
    pool = Resources(min_actors=1, max_actors=2, cpus_per_actor=0.5, batch_size=3)

    got = pseudo_label(data, spec, pool)
    want = pseudo_label_local(data, spec, batch_size=5)

    assert got.sample_ids == data.sample_ids
    assert got.probs.shape == (11, 3) and got.embeddings.shape == (11, 16)
    np.testing.assert_allclose(got.embeddings, want.embeddings, atol=1e-6)
    np.testing.assert_allclose(got.probs, want.probs, atol=1e-6)
    assert got.labels.tolist() == want.labels.tolist()
    assert got.true_labels.tolist() == data.true_labels.tolist()
    assert got.accuracy() == want.accuracy()
    assert got.top_k(2).indices.tolist() == want.top_k(2).indices.tolist()
