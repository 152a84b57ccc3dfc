"""``flow: air`` end to end on tiny real models (a Stable Diffusion pipeline and an open_clip model
built from config and saved to disk): pseudo-labels → LoRA → generation with the adapter →
prototypes, fusion and prompt learning → report; then a resumed run redoes nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tiny_models import png, save_clip, save_sd

from raysynth import columns as col
from raysynth.config import build_config
from raysynth.errors import ConfigError
from raysynth.flows.run import run_flow
from raysynth.generate.table import read_table

CLASSES = ("blue", "green", "red")


def _image_folder(root, per_class: int = 11):
    """Noisy 32×32 images whose dominant colour is their class (blue, green, red)."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(0, 90, (32, 32, 3), dtype=np.uint8)
            img[..., 2 - c] += 150  # blue → channel 2, green → 1, red → 0
            (root / name / f"{i}.png").write_bytes(png(img))
    return root


@pytest.fixture(scope="module")
def air_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("air")
    return {
        "data": str(_image_folder(root / "images")),
        "sd": save_sd(root / "sd"),
        "clip": save_clip(root / "clip", seed=3),
    }


def _config(setup, **extra):
    overrides = {
        "flow": "air",
        "preset": "air-tiny",
        "data.source": "imagefolder",
        "data.path": setup["data"],
        "data.image_size": 32,
        "data.k": 6,
        "data.pool_per_class": 0,
        "data.val_per_class": 2,
        "data.test_per_class": 3,
        "synthesis.quota": "fixed",
        "synthesis.per_class": 2,
        "synthesis.prompt": "{context} {class}",
        "synthesis.context": "colors",
        "synthesis.generator.kind": "text2image",
        "synthesis.generator.model": setup["sd"],
        "synthesis.generator.num_steps": 2,
        "synthesis.generator.image_size": 32,
        "synthesis.pool.batch_size": 3,
        "synthesis.pool.cpus_per_actor": 0.5,
        "filter.pool.cpus_per_actor": 0.5,
        "air.clip_model": setup["clip"],
        "air.clip_pretrained": "",
        "air.top_k": 3,
        "air.lora.steps": 4,
        "air.lora.batch_size": 2,
        "air.iterations": 2,
        "air.steps_per_iteration": 3,
        "air.n_ctx": 4,
        **extra,
    }
    return build_config(overrides=overrides)


def _softmax_cos(x: np.ndarray, y: np.ndarray, tau: float) -> np.ndarray:
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    y = y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)
    logits = x @ y.T / tau
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def fused_by_hand(out, air: dict, tau: float, name: str) -> tuple[float, float]:
    """(text-only, fused) accuracy of ``air/<name>.npz``, recomputed here from the stored CLIP
    embeddings: p̂ from the cosine to each class's prototype (the synthetic image the report
    names), then argmax(p + λ p̂)."""
    z, syn = np.load(out / "air" / f"{name}.npz"), np.load(out / "air" / "synthetic.npz")
    row = {str(s): i for i, s in enumerate(syn["ids"])}
    proto = np.stack([syn["emb"][row[air["prototypes"][c]]] for c in CLASSES])
    p, truth = z["probs"], z["true_labels"]
    p_hat = _softmax_cos(z["emb"], proto, tau)
    fused = np.argmax(p + air["lam"] * p_hat, axis=1)
    return float(np.mean(p.argmax(1) == truth)), float(np.mean(fused == truth))


def test_air_flow_runs_end_to_end_and_resumes(ray_local, tmp_path, air_setup):
    search = {"air.search": True, "tune.num_samples": 2, "tune.n_initial_points": 1}
    cfg = _config(air_setup, **search)
    out = tmp_path / "run"
    report = run_flow(cfg, out)

    air = report["air"]
    assert air["unlabeled"] == 3 * 6 and air["labels_known"] is True
    assert air["synthetic"] == 3 * 2
    for key in ("text", "fused", "prompt"):
        assert 0.0 <= air["pseudo_label_accuracy"][key] <= 1.0
    assert set(air["test_accuracy"]) == {"zero_shot", "fused", "prompt", "prompt_fused"}
    assert [h["iteration"] for h in air["history"]] == [1, 2]
    # λ and β came from a 2-trial Tune search on the val split
    assert air["search"]["trials"] == 2
    assert (air["lam"], air["beta"]) == (air["search"]["lam"], air["search"]["beta"])
    # the LoRA step trained on the top-3 pseudo-labelled images per class, 4 steps
    assert air["lora"]["steps"] == 4 and 0 < air["lora"]["images"] <= 3 * 3
    adapter = out / "air" / "lora"
    assert (adapter / "pytorch_lora_weights.safetensors").is_file()
    # every generated image came from the adapted model, and each class has its prototype
    table = read_table(out / "synthetic", [col.SAMPLE_ID, col.LABEL, col.GENERATOR])
    assert table.num_rows == 6
    assert all(str(adapter) in g for g in table[col.GENERATOR].to_pylist())
    assert set(air["prototypes"]) == set(CLASSES)
    by_id = dict(zip(table[col.SAMPLE_ID].to_pylist(), table[col.LABEL].to_pylist()))
    assert {CLASSES[by_id[sid]] for sid in air["prototypes"].values()} == set(CLASSES)
    # fused test accuracy is what argmax(p + λ p̂) gives on the stored embeddings
    tau = cfg.air.temperature
    z = np.load(out / "air" / "test.npz")
    assert z["probs"].shape == (9, 3) and z["true_labels"].tolist() == [0] * 3 + [1] * 3 + [2] * 3
    text, fused = fused_by_hand(out, air, tau, "test")
    assert air["test_accuracy"]["zero_shot"] == pytest.approx(text)
    assert air["test_accuracy"]["fused"] == pytest.approx(fused)
    text, fused = fused_by_hand(out, air, tau, "unlabeled")
    assert air["pseudo_label_accuracy"]["text"] == pytest.approx(text)
    assert air["pseudo_label_accuracy"]["fused"] == pytest.approx(fused)
    assert json.loads((out / "report.json").read_text())["air"] == air
    html = (out / "report.html").read_text()
    assert "AiR: pseudo-labels and prompt learning" in html and "Prototype per class" in html
    assert "pseudo-label accuracy" in (out / "report.md").read_text()

    # --resume: nothing is trained or generated again
    kept = ("lora/air_lora.json", "unlabeled.npz", "search.json")
    stamps = {p: p.stat().st_mtime_ns for p in (out / "air" / k for k in kept)}
    again = run_flow(cfg, out, resume=True)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert read_table(out / "synthetic", [col.SAMPLE_ID]).num_rows == 6
    assert again["air"]["pseudo_label_accuracy"] == air["pseudo_label_accuracy"]


def test_air_flow_refuses_the_pixel_generator(tmp_path, air_setup):
    cfg = _config(air_setup, **{"synthesis.generator.kind": "pixel"})
    with pytest.raises(ConfigError, match="flow=air adapts a pretrained text-to-image model"):
        run_flow(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "air").exists()


def test_a_missing_unlabeled_folder_stops_before_anything_is_written(tmp_path, air_setup):
    cfg = _config(air_setup, **{"air.unlabeled_path": str(tmp_path / "nope")})
    with pytest.raises(ConfigError, match=r"air.unlabeled_path=.*nope' does not exist"):
        run_flow(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_air_flow_without_val_and_test_splits_reports_pseudo_labels_only(
    ray_local, tmp_path, air_setup
):
    cfg = _config(air_setup, **{"data.val_per_class": 0, "data.test_per_class": 0})
    out = tmp_path / "run"
    air = run_flow(cfg, out)["air"]
    assert air["test_accuracy"] == {} and air["search"] is None
    text, fused = fused_by_hand(out, air, cfg.air.temperature, "unlabeled")
    assert air["pseudo_label_accuracy"]["text"] == pytest.approx(text)
    assert air["pseudo_label_accuracy"]["fused"] == pytest.approx(fused)
    assert not (out / "air" / "test.npz").exists() and not (out / "air" / "val.npz").exists()
    assert all(h["val_acc"] is None for h in air["history"])  # NaN → null in report.json
