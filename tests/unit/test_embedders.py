"""Embedders (classifier features, open_clip) and AiR selection, on tiny real models offline.

The open_clip model is a 1-layer ViT / 1-layer text transformer registered from a config file
written here; its random weights are saved to disk and loaded back through the production path
(``ClipEmbedder(name, pretrained=<file>)`` → ``open_clip.create_model_and_transforms``).
"""

from __future__ import annotations

import io
import json

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from raysynth.config.schema import FilterConfig
from raysynth.data.images import encode_png, to_tensor_array
from raysynth.errors import ConfigError
from raysynth.filter.classifier_embedder import ClassifierEmbedder
from raysynth.filter.clip import ClipEmbedder, zero_shot_probs
from raysynth.filter.clip_weights import check_clip_available
from raysynth.filter.embedders import build_embedder
from raysynth.filter.select import fuse, most_representative, prototype_probs, pseudo_labels
from raysynth.filter.threshold import normalize
from raysynth.train.checkpoint import write_checkpoint
from raysynth.train.models import build_model

TINY = "raysynth-test-tiny-clip"
TINY_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def _pngs(n: int, size: int, channels: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    shape = (size, size) if channels == 1 else (size, size, 3)
    return [encode_png(rng.integers(0, 256, shape, dtype=np.uint8)) for _ in range(n)]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """(model, eval transform, weights dir) of a random tiny CLIP saved as .safetensors and .pt."""
    root = tmp_path_factory.mktemp("clip")
    (root / f"{TINY}.json").write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(root / f"{TINY}.json")
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(TINY)
    model.eval()
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(root / "tiny.safetensors"))
    torch.save(sd, root / "tiny.pt")  # open_clip's own format, read with weights_only=True
    return model, preprocess, root


def _hand_images(model, preprocess, pngs) -> np.ndarray:
    x = torch.stack([preprocess(Image.open(io.BytesIO(p)).convert("RGB")) for p in pngs])
    with torch.no_grad():
        return normalize(model.encode_image(x).numpy())


def _hand_texts(model, texts) -> np.ndarray:
    with torch.no_grad():
        return normalize(model.encode_text(open_clip.get_tokenizer(TINY)(texts)).numpy())


@pytest.mark.parametrize("filename", ["tiny.safetensors", "tiny.pt"])
def test_clip_embedder_loads_the_saved_weights(tiny_clip, filename):
    model, preprocess, root = tiny_clip
    emb = ClipEmbedder(TINY, str(root / filename), batch_size=2)
    pngs = _pngs(3, 40, 3) + _pngs(2, 24, 1, seed=1)  # resized/cropped to 32; grey → RGB
    got = emb.embed_images(pngs)
    assert emb.dim == 16 and emb.has_text
    assert got.dtype == np.float32 and got.shape == (5, 16)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(got, _hand_images(model, preprocess, pngs), atol=1e-5)
    texts = ["a photo of a cat.", "a photo of a dog.", "thorn apple"]
    np.testing.assert_allclose(emb.embed_texts(texts), _hand_texts(model, texts), atol=1e-5)
    # the weights really came from the file: a fresh random model embeds differently
    torch.manual_seed(1)
    other, _, _ = open_clip.create_model_and_transforms(TINY)
    assert not np.allclose(got, _hand_images(other.eval(), preprocess, pngs), atol=1e-3)
    assert emb.embed_images([]).shape == (0, 16)


def test_zero_shot_probs_match_a_hand_computation(tiny_clip):
    model, preprocess, root = tiny_clip
    emb = ClipEmbedder(TINY, str(root / "tiny.safetensors"))
    pngs = _pngs(4, 32, 3, seed=2)
    image_emb = emb.embed_images(pngs)
    names = ["rose", "tulip", "thorn apple"]
    templates = ("a photo of a {}.", "Flowers: {}")
    got = zero_shot_probs(emb, image_emb, names, templates, temperature=0.05)

    text = _hand_texts(model, [t.format(c) for c in names for t in templates]).reshape(3, 2, 16)
    g = normalize(text.mean(axis=1))  # prompt ensemble: mean of unit vectors, renormalised
    logits = _hand_images(model, preprocess, pngs) @ g.T / 0.05
    want = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert got.shape == (4, 3)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-9)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_unknown_clip_model_is_a_config_error():
    with pytest.raises(ConfigError, match=r"no model 'ViT-B-33'.*ViT-B-32"):
        check_clip_available("ViT-B-33", "openai")


def test_missing_or_unreadable_weights_are_config_errors(tiny_clip, tmp_path):
    _, _, root = tiny_clip
    with pytest.raises(ConfigError, match=r"neither a local checkpoint file.*pass the path"):
        ClipEmbedder(TINY, str(tmp_path / "absent.safetensors"))
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match=r"could not load open_clip .*junk\.safetensors"):
        ClipEmbedder(TINY, str(tmp_path / "junk.safetensors"))
    with pytest.raises(ConfigError, match="needs pretrained weights"):
        check_clip_available(TINY, "")
    assert check_clip_available(TINY, str(root / "tiny.pt")).checkpoint == str(root / "tiny.pt")


def test_uncached_tag_offline_says_to_pass_a_local_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match=r"not in the local cache.*local checkpoint file"):
        check_clip_available("ViT-B-32", "openai", cache_dir=str(tmp_path))
    (tmp_path / "ViT-B-32.pt").write_bytes(b"x")  # the openai URL's file name in the clip cache
    found = check_clip_available("ViT-B-32", "openai", cache_dir=str(tmp_path))
    assert found.checkpoint == str(tmp_path / "ViT-B-32.pt") and found.tag_cfg["quick_gelu"]


CLS_CFG = {
    "kind": "classifier",
    "encoder": {"arch": "small_cnn", "in_channels": 1, "width": 4, "feat_dim": 8},
    "num_classes": 3,
}


@pytest.fixture
def classifier(tmp_path):
    torch.manual_seed(0)
    model = build_model(CLS_CFG)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval mode matters
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval(), write_checkpoint(tmp_path / "cls", model, CLS_CFG)


def test_classifier_embedder_is_normalised_penultimate_features(classifier):
    model, folder = classifier
    pngs = _pngs(5, 10, 1, seed=3)
    emb = ClassifierEmbedder(folder, channels=1, image_size=8, batch_size=2)
    got = emb.embed_images(pngs)
    with torch.no_grad():
        want = normalize(model.features(torch.from_numpy(to_tensor_array(pngs, 1, 8))).numpy())
    assert emb.dim == 8 and not emb.has_text
    assert got.dtype == np.float32 and got.shape == (5, 8)
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    # the classifier's own softmax comes from the same forward pass as the features
    both, probs = emb.embed_with_probs(pngs)
    with torch.no_grad():
        want_p = torch.softmax(model(torch.from_numpy(to_tensor_array(pngs, 1, 8))), 1).numpy()
    np.testing.assert_allclose(both, got, atol=1e-6)
    np.testing.assert_allclose(probs, want_p, atol=1e-6)
    with pytest.raises(ConfigError, match="text tower"):
        zero_shot_probs(emb, got, ["a", "b", "c"])
    with pytest.raises(ConfigError, match="takes 1-channel images"):
        ClassifierEmbedder(folder, channels=3, image_size=8)


def test_build_embedder_picks_by_config(classifier, tiny_clip):
    _, folder = classifier
    _, _, root = tiny_clip
    auto = FilterConfig(clip_model=TINY, clip_pretrained=str(root / "tiny.safetensors"))
    kw = {"classifier_folder": str(folder), "channels": 1, "device": "cpu"}
    assert isinstance(build_embedder(auto, image_size=8, **kw), ClassifierEmbedder)
    assert isinstance(build_embedder(auto, image_size=64, **kw), ClipEmbedder)
    forced = FilterConfig(embedder="classifier")
    with pytest.raises(ConfigError, match="no trained classifier checkpoint"):
        build_embedder(forced, classifier_folder="", channels=1, image_size=64)


def test_most_representative_picks_highest_own_class_probability():
    probs = np.array(
        [
            [0.6, 0.3, 0.1],  # class 0
            [0.9, 0.1, 0.0],  # class 0 ← best
            [0.2, 0.5, 0.3],  # class 1 ← tie, lowest index
            [0.1, 0.5, 0.4],  # class 1
            [0.0, 0.95, 0.05],  # class 0: high p_1, but labelled 0
        ]
    )
    labels = np.array([0, 0, 1, 1, 0])
    assert most_representative(probs, labels) == {0: 1, 1: 2}  # class 2 has no row
    with pytest.raises(ValueError, match="labels must lie"):
        most_representative(probs, np.array([0, 0, 1, 3, 0]))


def test_prototype_probs_and_fusion():
    image = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    protos = np.array([[3.0, 0.0], [0.0, 1.0]])
    got = prototype_probs(image, protos, temperature=0.5)
    s = np.sqrt(0.5)
    cos = np.array([[1.0, 0.0], [0.0, 1.0], [s, s]])
    want = np.exp(cos / 0.5) / np.exp(cos / 0.5).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(got, want, atol=1e-12)
    np.testing.assert_allclose(got[2], [0.5, 0.5])

    p = np.array([[0.6, 0.4], [0.45, 0.55]])
    p_hat = np.array([[0.1, 0.9], [0.9, 0.1]])
    np.testing.assert_allclose(fuse(p, p_hat, 0.5), [[0.65, 0.85], [0.9, 0.6]])
    assert pseudo_labels(p, p_hat, 0.0).tolist() == [0, 1]
    assert pseudo_labels(p, p_hat, 0.5).tolist() == [1, 0]
    with pytest.raises(ValueError, match="one shape"):
        fuse(p, p_hat[:1], 1.0)
