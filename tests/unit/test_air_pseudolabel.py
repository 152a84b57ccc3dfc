"""AiR zero-shot pseudo-labels (METHODS §4 step 1) on a tiny real open_clip model, offline.

The model is a 1-layer ViT / 1-layer text transformer built from a config, saved as an open_clip
``local-dir:`` folder (``open_clip_config.json`` + ``open_clip_model.safetensors``) and loaded back
through ``open_clip.create_model_and_transforms`` — the path a Ray actor takes too.
"""

from __future__ import annotations

import io
import logging

import numpy as np
import open_clip
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from tiny_models import save_clip

from raysynth.data.images import encode_png
from raysynth.data.unlabeled import load_unlabeled
from raysynth.errors import DataError
from raysynth.filter.threshold import normalize
from raysynth.pseudolabel.top_k import top_k_per_class
from raysynth.pseudolabel.zero_shot import (
    ZeroShotSpec,
    clip_embedder_spec,
    pseudo_label_local,
)

torch.set_num_threads(1)

NAMES = ["rose", "tulip", "thorn apple"]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """(name, model, preprocess) of a random tiny CLIP saved as an open_clip ``local-dir:`` folder,
    the model loaded back from that folder."""
    name = save_clip(tmp_path_factory.mktemp("air-clip") / "tiny")
    model, _, preprocess = open_clip.create_model_and_transforms(name)
    return name, model.eval(), preprocess


def _pngs(n: int, seed: int = 0, size: int = 32) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [encode_png(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def _hand_probs(model, preprocess, pngs, templates, tau) -> np.ndarray:
    x = torch.stack([preprocess(Image.open(io.BytesIO(p)).convert("RGB")) for p in pngs])
    tokenizer = open_clip.SimpleTokenizer(context_length=24)  # the tiny config's text length
    with torch.no_grad():
        f = normalize(model.encode_image(x).numpy())
        prompts = [t.format(c=c) for c in NAMES for t in templates]
        g = normalize(model.encode_text(tokenizer(prompts)).numpy())
    g = normalize(g.reshape(len(NAMES), len(templates), -1).mean(axis=1))
    logits = f @ g.T / tau
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _unlabeled(pngs):
    from raysynth.data.unlabeled import UnlabeledSet

    return UnlabeledSet(images=pngs, sources=[f"mem:{i}" for i in range(len(pngs))])


def test_zero_shot_probs_match_a_hand_computation_with_averaged_templates(tiny_clip):
    name, model, preprocess = tiny_clip
    pngs = _pngs(5, seed=1)
    templates = ("a photo of a {c}.", "a blurry photo of a {c}.")
    spec = ZeroShotSpec(clip_embedder_spec(name, None, "cpu"), tuple(NAMES), templates, 0.05)
    got = pseudo_label_local(_unlabeled(pngs), spec, batch_size=2)

    want = _hand_probs(model, preprocess, pngs, templates, 0.05)
    assert got.probs.shape == (5, 3) and got.embeddings.shape == (5, 16)
    np.testing.assert_allclose(got.probs.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(got.probs, want, atol=1e-5)
    assert got.labels.tolist() == np.argmax(want, axis=1).tolist()
    # the ensemble is not either template alone
    for one in templates:
        alone = _hand_probs(model, preprocess, pngs, (one,), 0.05)
        assert np.abs(alone - want).max() > 1e-3
    # the default template and τ = 0.01
    default = pseudo_label_local(_unlabeled(pngs), ZeroShotSpec(spec.embedder, tuple(NAMES)))
    np.testing.assert_allclose(
        default.probs, _hand_probs(model, preprocess, pngs, ("a photo of a {c}.",), 0.01), atol=1e-4
    )
    assert np.isnan(got.accuracy())  # no true labels: nothing to measure


def test_top_k_per_class_takes_the_most_confident_and_breaks_ties_by_row(caplog):
    p = np.array(
        [
            [0.7, 0.2, 0.1],  # 0 → class 0
            [0.9, 0.05, 0.05],  # 1 → class 0 (most confident)
            [0.7, 0.1, 0.2],  # 2 → class 0, ties with row 0
            [0.2, 0.6, 0.2],  # 3 → class 1
            [0.1, 0.8, 0.1],  # 4 → class 1
            [0.4, 0.4, 0.2],  # 5 → tie between classes 0 and 1: class 0 (lowest)
            [0.5, 0.1, 0.4],  # 6 → class 0
        ]
    )
    with caplog.at_level(logging.WARNING, logger="raysynth.air"):
        top = top_k_per_class(p, k=2)
    assert top.indices.tolist() == [1, 0, 4, 3]  # class 0: 0.9, then 0.7 (row 0 before row 2)
    assert top.labels.tolist() == [0, 0, 1, 1]
    assert top.counts.tolist() == [2, 2, 0] and top.short == {2: 0}
    assert top.of_class(1).tolist() == [4, 3]
    assert "fewer confident images" in caplog.text and "{2: 0}" in caplog.text

    top3 = top_k_per_class(p, k=3)
    assert top3.of_class(0).tolist() == [1, 0, 2] and top3.short == {1: 2, 2: 0}
    every = top_k_per_class(p, k=None)
    assert every.of_class(0).tolist() == [1, 0, 2, 6, 5] and every.short == {}
    with pytest.raises(ValueError, match="k must be >= 1"):
        top_k_per_class(p, k=0)


def test_unlabeled_folder_skips_a_corrupt_image_and_ignores_folder_names(tmp_path, caplog):
    root = tmp_path / "pool"
    (root / "roses").mkdir(parents=True)
    (root / "deep" / "er").mkdir(parents=True)
    pngs = _pngs(3, seed=2, size=20)
    (root / "a.png").write_bytes(pngs[0])
    (root / "roses" / "b.png").write_bytes(pngs[1])
    (root / "deep" / "er" / "c.png").write_bytes(pngs[2])
    (root / "roses" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (root / "notes.txt").write_text("not an image")
    with caplog.at_level(logging.WARNING, logger="raysynth.data"):
        data = load_unlabeled(root, image_size=16)
    assert [s.split("pool/")[1] for s in data.sources] == ["a.png", "deep/er/c.png", "roses/b.png"]
    assert data.sample_ids == ["unlabeled-000000", "unlabeled-000001", "unlabeled-000002"]
    assert len(data.skipped) == 1 and data.skipped[0][0].endswith("roses/broken.jpg")
    assert "not a readable image" in data.skipped[0][1]
    assert "broken.jpg" in caplog.text and "skipped 1 of 4 images" in caplog.text
    assert data.true_labels is None and data.true_names is None and data.channels == 3
    img = Image.open(io.BytesIO(data.images[0]))
    assert img.size == (16, 16) and img.mode == "RGB"

    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no image files"):
        load_unlabeled(tmp_path / "empty")


def test_unlabeled_parquet_keeps_true_labels_for_measuring_only(tiny_clip, tmp_path):
    name, _, _ = tiny_clip
    pngs = _pngs(4, seed=3)
    table = pa.table(
        {
            "image": pa.array([*pngs[:3], b"garbage", pngs[3]], pa.binary()),
            "class_name": ["tulip", "rose", "lily", "rose", "thorn apple"],
        }
    )
    pq.write_table(table, tmp_path / "u.parquet")
    data = load_unlabeled(tmp_path / "u.parquet")
    assert len(data) == 4 and data.skipped[0][0].endswith("u.parquet:3")
    assert data.true_names == ["tulip", "rose", "lily", "thorn apple"]
    got = pseudo_label_local(
        data, ZeroShotSpec(clip_embedder_spec(name, None, "cpu"), tuple(NAMES))
    )
    assert got.true_labels.tolist() == [1, 0, -1, 2]  # "lily" is not a class: unknown
    known = [0, 1, 3]
    want = float(np.mean(got.labels[known] == np.array([1, 0, 2])))
    assert got.accuracy() == pytest.approx(want)

    pq.write_table(pa.table({"image": pa.array(pngs, pa.binary())}), tmp_path / "bare.parquet")
    bare = load_unlabeled(tmp_path / "bare.parquet")
    assert len(bare) == 4 and bare.true_labels is None and bare.true_names is None
    labelled = pa.table({"image": pa.array(pngs, pa.binary()), "label": [0, 1, 2, 7]})
    pq.write_table(labelled, tmp_path / "lab.parquet")
    with pytest.raises(DataError, match="values up to 7, but only 3 class names"):
        pseudo_label_local(
            load_unlabeled(tmp_path / "lab.parquet"),
            ZeroShotSpec(clip_embedder_spec(name, None, "cpu"), tuple(NAMES)),
        )
