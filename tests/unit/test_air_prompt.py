"""AiR prompt learning (METHODS §4 steps 4–5): CoOp context on a tiny real open_clip text tower.

Image embeddings are precomputed ``[N, 16]`` vectors (clusters around random class centres), as
training sees them; the text side is the real tiny model, saved and loaded as a ``local-dir:``
folder like a user's model.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from tiny_models import save_clip

from raysynth.errors import ConfigError, RunDirError
from raysynth.filter.select import cosine_softmax
from raysynth.pseudolabel.prompt import PromptConfig, PromptData, load_context
from raysynth.pseudolabel.prompt_encoder import PromptTextEncoder
from raysynth.pseudolabel.prompt_train import PromptTrialSpec, run_prompt_trial, train_prompt

torch.set_num_threads(1)

NAMES = ["rose", "tulip", "thorn apple"]
FAST = PromptConfig(n_ctx=4, iterations=3, steps=15, top_k=8)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return save_clip(tmp_path_factory.mktemp("prompt") / "clip")


def _load(name):
    model, _, _ = open_clip.create_model_and_transforms(name)
    return model.eval(), open_clip.get_tokenizer(name)


def _data(seed: int = 0, n: int = 30, syn_shift: float = 0.0) -> PromptData:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(3, 16))
    y = np.repeat(np.arange(3), n)
    real = centers[y] + 1.5 * rng.normal(size=(len(y), 16))
    zero_shot = cosine_softmax(real, centers + 2.5 * rng.normal(size=(3, 16)), 0.05)
    ys = np.repeat(np.arange(3), 5)
    syn = centers[ys] + 0.5 * rng.normal(size=(len(ys), 16)) + syn_shift
    protos = centers + 0.3 * rng.normal(size=(3, 16))
    return PromptData(real, zero_shot, protos, syn, ys, true_labels=y, val_emb=real, val_labels=y)


@pytest.mark.parametrize("custom_text", [False, True])
def test_prompt_with_hand_words_as_context_is_encode_text(tmp_path, custom_text):
    """ctx = the token embeddings of "a photo of a" reproduces open_clip's encode_text exactly,
    for CLIP and CustomTextCLIP layouts: the prompt path is the model's own text path."""
    name = save_clip(tmp_path / "m", **({"custom_text": True} if custom_text else {}))
    model, tokenizer = _load(name)
    assert type(model).__name__ == ("CustomTextCLIP" if custom_text else "CLIP")
    enc = PromptTextEncoder(model, tokenizer, NAMES, n_ctx=4)
    words = tokenizer(["a photo of a"])[0, 1:5]
    table = model.text.token_embedding if custom_text else model.token_embedding
    with torch.no_grad():
        enc.set_context(table(words))
        want = F.normalize(
            model.encode_text(tokenizer([f"a photo of a {c}." for c in NAMES])), dim=-1
        )
    torch.testing.assert_close(enc(), want, atol=1e-6, rtol=0)
    assert [n for n, _ in enc.named_parameters()] == ["ctx"]


def test_unsupported_text_towers_and_long_prompts_are_config_errors(tmp_path):
    coca_like = save_clip(tmp_path / "cls", custom_text=True)
    model, tokenizer = _load(coca_like)
    model.text.cls_emb = torch.nn.Parameter(torch.zeros(32))
    with pytest.raises(ConfigError, match="class token"):
        PromptTextEncoder(model, tokenizer, NAMES)

    class HFLike(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.text = torch.nn.Linear(2, 2)

    with pytest.raises(ConfigError, match="Linear text tower.*open_clip's own transformer"):
        PromptTextEncoder(HFLike(), tokenizer, NAMES)
    model, tokenizer = _load(save_clip(tmp_path / "plain"))
    with pytest.raises(ConfigError, match="exceed the text tower's 24 tokens; lower n_ctx"):
        PromptTextEncoder(model, tokenizer, ["a rather long name"], n_ctx=20)


def test_prompt_learning_lowers_the_loss_and_trains_only_the_context(clip_dir):
    model, tokenizer = _load(clip_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    enc = PromptTextEncoder(model, tokenizer, NAMES, n_ctx=4, seed=3)
    torch.manual_seed(123)  # the context comes from its own seeded generator, not the global RNG
    init = enc.ctx.detach().clone()
    gen = torch.Generator().manual_seed(3)
    torch.testing.assert_close(init, torch.randn(4, 32, generator=gen) * 0.02, atol=0, rtol=0)
    reports = []
    res = train_prompt(enc, _data(), FAST, on_iteration=reports.append)

    h = res.history
    assert len(h) == 3 and reports == h and [r["iteration"] for r in h] == [1, 2, 3]
    assert h[0]["loss_last"] < 0.5 * h[0]["loss_first"]  # each iteration descends
    assert all(r["loss_last"] < r["loss_first"] for r in h)
    assert h[-1]["loss_last"] < h[0]["loss_first"]
    for r in h:
        assert 0 <= r["pseudo_acc"] <= 1 and 0 <= r["selected_acc"] <= 1 and 0 <= r["val_acc"] <= 1
    assert not torch.equal(res.ctx, init)
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert torch.equal(after[k], v), f"{k} changed"
    assert all(p.grad is None for p in model.parameters())
    assert res.pseudo_labels.shape == (90,) and res.probs.shape == (90, 3)
    np.testing.assert_allclose(res.probs, enc.probs(_data().real_emb), atol=1e-6)


def test_pseudo_labels_are_the_fused_top_k(clip_dir):
    """Iteration 1 trains on argmax(p + λ p̂) over the top-K per class; λ = 0 is text-only."""
    model, tokenizer = _load(clip_dir)
    data = _data()
    cfg = dataclasses.replace(FAST, lam=0.0, top_k=0, iterations=1)
    text_only = train_prompt(PromptTextEncoder(model, tokenizer, NAMES, n_ctx=4), data, cfg)
    want = np.mean(np.argmax(data.zero_shot, 1) == data.true_labels)
    assert text_only.history[0]["pseudo_acc"] == pytest.approx(want)
    assert text_only.history[0]["selected_acc"] == pytest.approx(want)  # top_k=0: every row
    fused = train_prompt(PromptTextEncoder(model, tokenizer, NAMES, n_ctx=4), data, FAST)
    p_hat = cosine_softmax(data.real_emb, data.prototypes, 0.01)
    want_fused = np.mean(np.argmax(data.zero_shot + p_hat, 1) == data.true_labels)
    assert fused.history[0]["pseudo_acc"] == pytest.approx(want_fused)
    assert want_fused > want + 0.05  # the prototypes help on this data (0.90 vs 0.79)


def test_beta_zero_ignores_the_synthetic_images(clip_dir):
    model, tokenizer = _load(clip_dir)
    a, b = _data(), _data(syn_shift=3.0)
    b.syn_labels = b.syn_labels[::-1].copy()

    def run(data, beta):
        enc = PromptTextEncoder(model, tokenizer, NAMES, n_ctx=4)
        return train_prompt(enc, data, dataclasses.replace(FAST, beta=beta))

    ra, rb = run(a, 0.0), run(b, 0.0)
    assert torch.equal(ra.ctx, rb.ctx) and ra.history == rb.history
    assert not torch.equal(run(a, 1.0).ctx, run(b, 1.0).ctx)
    no_syn = PromptData(a.real_emb, a.zero_shot, a.prototypes, np.zeros((0, 16)), np.zeros(0))
    assert torch.equal(run(no_syn, 1.0).ctx, ra.ctx)


def test_context_save_load_round_trip(clip_dir, tmp_path):
    model, tokenizer = _load(clip_dir)
    enc = PromptTextEncoder(model, tokenizer, NAMES, n_ctx=4)
    res = train_prompt(enc, _data(), FAST)
    folder = res.save(tmp_path / "prompt", model_name=clip_dir)
    ctx, meta = load_context(folder)
    assert torch.equal(ctx, res.ctx) and ctx.dtype == torch.float32
    assert meta["class_names"] == NAMES and meta["n_ctx"] == 4 and meta["width"] == 32
    assert meta["model"] == clip_dir and meta["config"]["lam"] == 1.0
    assert [h["loss_last"] for h in meta["history"]] == pytest.approx(res.losses)
    fresh = PromptTextEncoder(model, tokenizer, NAMES, n_ctx=4, seed=99)
    fresh.set_context(ctx)
    torch.testing.assert_close(fresh(), enc(), atol=0, rtol=0)
    with pytest.raises(ConfigError, match=r"does not fit this encoder's \(8, 32\)"):
        PromptTextEncoder(model, tokenizer, NAMES, n_ctx=8).set_context(ctx)
    with pytest.raises(RunDirError, match="no context.safetensors"):
        load_context(tmp_path)


def test_trial_reports_validation_accuracy_per_iteration(clip_dir):
    spec = PromptTrialSpec(clip_dir, "", tuple(NAMES), FAST)
    reports = []
    res = run_prompt_trial({"lam": 0.5, "beta": 0.0}, _data(), spec, report=reports.append)
    assert res.config.lam == 0.5 and res.config.beta == 0.0 and res.config.n_ctx == 4
    assert len(reports) == 3 and all(0 <= r["val_acc"] <= 1 for r in reports)
    assert reports[-1]["val_acc"] == res.history[-1]["val_acc"]
    model, tokenizer = _load(clip_dir)
    enc = PromptTextEncoder(model, tokenizer, NAMES, n_ctx=4)
    enc.set_context(res.ctx)
    pred = enc.probs(_data().real_emb).argmax(1)
    assert reports[-1]["val_acc"] == pytest.approx(np.mean(pred == _data().true_labels))
    no_val = _data()
    no_val.val_emb = no_val.val_labels = None
    with pytest.raises(ConfigError, match="labelled validation split"):
        run_prompt_trial({}, no_val, spec, report=reports.append)
    assert math.isnan(train_prompt(enc, no_val, FAST).history[0]["val_acc"])
