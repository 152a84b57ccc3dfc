"""The (λ, β) search of AiR prompt learning on Ray Tune + HyperOpt, on a tiny open_clip model.

Each trial loads the model by name from a ``local-dir:`` folder (nothing captured from the driver)
and reports the validation accuracy after every iteration.
"""

from __future__ import annotations

import json

import numpy as np
import open_clip
import pytest
import torch
from safetensors.torch import save_file

from raysynth.config.schema import RunConfig, TuneConfig
from raysynth.filter.select import cosine_softmax
from raysynth.pseudolabel.prompt import PromptConfig, PromptData
from raysynth.pseudolabel.prompt_train import PromptTrialSpec
from raysynth.tune.prompt import search_prompt_params

torch.set_num_threads(1)

MODEL_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.mark.slow
def test_search_evaluates_the_warm_start_points_and_returns_the_best(ray_local, tmp_path):
    folder = tmp_path / "clip"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": MODEL_CFG}))
    torch.manual_seed(0)
    name = f"local-dir:{folder}"
    model, _, _ = open_clip.create_model_and_transforms(name)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "m.safetensors")
    )

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 16))
    y = np.repeat(np.arange(3), 20)
    real = centers[y] + rng.normal(size=(60, 16))
    data = PromptData(
        real,
        cosine_softmax(real, centers + 2 * rng.normal(size=(3, 16)), 0.05),
        centers,
        centers[y[::4]] + 0.5 * rng.normal(size=(15, 16)),
        y[::4],
        true_labels=y,
        val_emb=real,
        val_labels=y,
    )
    spec = PromptTrialSpec(
        name, "", ("rose", "tulip", "lily"), PromptConfig(n_ctx=4, iterations=2, steps=5)
    )
    cfg = RunConfig(tune=TuneConfig(num_samples=3, n_initial_points=1, max_concurrent=2))

    best = search_prompt_params(data, spec, cfg, tmp_path / "tune")

    assert best["trials"] == 3
    assert 0 <= best["lam"] <= 2 and 0 <= best["beta"] <= 2 and 0 <= best["val_acc"] <= 1
    rows = [
        json.loads(line)
        for f in (tmp_path / "tune" / "prompt").glob("*/result.json")
        for line in f.read_text().splitlines()
    ]
    assert {r["training_iteration"] for r in rows} == {1, 2}  # one report per iteration
    last = [r for r in rows if r["training_iteration"] == 2]
    assert best["val_acc"] == max(r["val_acc"] for r in last)
    tried = {(r["config"]["lam"], r["config"]["beta"]) for r in last}
    assert {(0.0, 0.0), (1.0, 1.0)} <= tried  # text-only and the paper's default go first
