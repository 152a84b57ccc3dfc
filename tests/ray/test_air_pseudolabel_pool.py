"""AiR zero-shot pseudo-labels as a Ray Data actor-pool stage: same ``p`` as in-process.

The tiny open_clip model is a ``local-dir:`` folder, so every actor loads it by name from disk
(nothing is captured from the driver).
"""

from __future__ import annotations

import json

import numpy as np
import open_clip
import torch
from safetensors.torch import save_file

from raysynth.air.pseudolabel import (
    EmbedPool,
    ZeroShotSpec,
    clip_embedder_spec,
    pseudo_label,
    pseudo_label_local,
)
from raysynth.data.images import encode_png
from raysynth.data.sources import UnlabeledSet

torch.set_num_threads(1)

NAMES = ("rose", "tulip", "thorn apple")
TINY_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def save_tiny_clip(folder, seed: int) -> str:
    """A random tiny CLIP as an open_clip ``local-dir:`` folder (config + safetensors)."""
    folder.mkdir(parents=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CFG}))
    torch.manual_seed(seed)
    name = f"local-dir:{folder}"
    model, _, _ = open_clip.create_model_and_transforms(name)
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(folder / "open_clip_model.safetensors"))
    return name


def test_actor_pool_gives_the_in_process_probabilities(ray_local, tmp_path):
    name = save_tiny_clip(tmp_path / "clip", seed=5)
    rng = np.random.default_rng(7)
    pngs = [encode_png(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(11)]
    data = UnlabeledSet(
        images=pngs,
        sources=[f"mem:{i}" for i in range(11)],
        true_labels=np.array([0, 1, 2, -1, 0, 1, 2, 0, 1, 2, 0]),
    )
    templates = ("a photo of a {c}.", "a close-up photo of a {}.")
    spec = ZeroShotSpec(clip_embedder_spec(name, None, "cpu", batch_size=4), NAMES, templates)
    pool = EmbedPool(min_actors=1, max_actors=2, cpus_per_actor=0.5, batch_size=3)

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
