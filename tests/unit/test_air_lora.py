"""AiR LoRA fine-tuning (METHODS §4 step 2) on tiny real models, without Ray.

The Ray Train path (local mode, resume, DDP with 2 workers) is in tests/ray/test_air_lora_ray.py.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import (
    bar_digits,
    one_thread,  # noqa: F401
    pixel_config,
    save_sd,
    sd_images,
)

from raysynth import columns as col
from raysynth.config.schema import FeedbackConfig, GeneratorConfig
from raysynth.errors import ConfigError, DataError
from raysynth.generate.factory import build_generator
from raysynth.generate.generators import GeneratorSpec
from raysynth.generate.loading import load_pipeline
from raysynth.generate.lora.loop import denoising_loss, draw_batch, fit_lora, save_adapter
from raysynth.generate.lora.model import AdapterState, add_lora
from raysynth.generate.lora.spec import PIXEL_SPEC, RESULT_FILE, LoraTrainSpec, lora_prompt
from raysynth.generate.lora.tasks import build_pixel_task, build_sd_task, shard
from raysynth.generate.lora.train import train_pixel_lora, train_sd_lora
from raysynth.generate.pixel import PixelDiffusionConfig, load_pixel_model, save_pixel_model
from raysynth.generate.pixel_generator import check_pixel_adapters
from raysynth.generate.pixel_training import train_pixel_model
from raysynth.train.checkpoint import restore_training, write_checkpoint

CLASSES = ["cat", "dog"]
SD_SPEC = LoraTrainSpec(learning_rate=1e-2, steps=60, batch_size=4, checkpoint_every=0)
PIXEL_TRAIN_SPEC = LoraTrainSpec(
    **{**PIXEL_SPEC.to_dict(), "learning_rate": 1e-2, "steps": 60, "batch_size": 8}
)
PIXEL_CFG = pixel_config(train_steps=30, batch_size=8, seed=3)


pytestmark = pytest.mark.usefixtures("one_thread")


# tiny data and models (Stable Diffusion: tests/tiny_models.py) -----------------------------------


digits = bar_digits


def save_tiny_pixel(folder, cfg: PixelDiffusionConfig = PIXEL_CFG) -> str:
    x, y = digits()
    unet, sched_cfg = train_pixel_model(x, y, cfg, device="cpu")
    save_pixel_model(folder, unet, sched_cfg, cfg, ["a", "b", "c"])
    return str(folder)


def flipped_digits() -> tuple[np.ndarray, np.ndarray]:
    """The "new dataset" the adapter learns: other digits, upside down."""
    x, y = digits(12, seed=5)
    return np.ascontiguousarray(x[:, :, ::-1]), y


def _eval_loss(task, model=None) -> float:
    """Mean loss over one fixed batch of 64 draws (same images, noise and timesteps every call)."""
    with torch.no_grad():
        return float(denoising_loss(model or task.unet, task, *draw_batch(task, 64, 123, 0, 0)))


def _snapshot(modules: dict) -> dict[str, torch.Tensor]:
    return {
        f"{m}.{n}": p.detach().clone()
        for m, module in modules.items()
        for n, p in module.named_parameters()
        if "lora_" not in n
    }


def _train(task, spec, folder) -> dict:
    base = _snapshot(task.frozen)
    adapter_init = {n: p.detach().clone() for n, p in task.unet.named_parameters() if "lora_" in n}
    before = _eval_loss(task)
    losses = fit_lora(task, spec)
    after = _eval_loss(task)
    save_adapter(task, folder, {"spec": spec.to_dict(), "losses": losses})
    return {
        "task": task,
        "base": base,
        "adapter_init": adapter_init,
        "before": before,
        "after": after,
        "losses": losses,
        "folder": str(folder),
    }


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    root = tmp_path_factory.mktemp("air_sd")
    model = save_sd(root / "sd")
    pipe = load_pipeline(GeneratorConfig(kind="text2image", model=model), torch.device("cpu"))
    images, labels = sd_images(width=20)  # not square: the loader crops
    task = build_sd_task(pipe, images, labels, CLASSES, "Pets:", SD_SPEC, torch.device("cpu"))
    return {"model": model, **_train(task, SD_SPEC, root / "adapter")}


@pytest.fixture(scope="module")
def pixel(tmp_path_factory):
    root = tmp_path_factory.mktemp("air_pixel")
    model = save_tiny_pixel(root / "pixel")
    x, y = flipped_digits()
    task = build_pixel_task(load_pixel_model(model), x, y, PIXEL_TRAIN_SPEC, torch.device("cpu"))
    return {"model": model, **_train(task, PIXEL_TRAIN_SPEC, root / "adapter")}


# the spec and the data -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("rank", 0, "air.lora.rank: must be >= 1"),
        ("alpha", 0.0, "air.lora.alpha: must be > 0"),
        ("target_modules", "to_q", "air.lora.target_modules: give a list"),
        ("target_modules", (), "air.lora.target_modules: needs at least one"),
        ("learning_rate", -1.0, "air.lora.learning_rate"),
        ("steps", 0, "air.lora.steps"),
        ("batch_size", 0, "air.lora.batch_size"),
        ("checkpoint_every", -1, "air.lora.checkpoint_every"),
        ("dtype", "float64", "air.lora.dtype: got 'float64'; choose one of"),
    ],
)
def test_spec_errors_name_the_field(field, value, message):
    with pytest.raises(ConfigError, match=message):
        LoraTrainSpec(**{field: value})


def test_spec_defaults_and_prompt():
    spec = LoraTrainSpec(target_modules=["to_q", "to_v"])
    assert spec.target_modules == ("to_q", "to_v")
    assert LoraTrainSpec().target_modules == ("to_q", "to_k", "to_v", "to_out.0")
    assert (LoraTrainSpec().rank, LoraTrainSpec().alpha, LoraTrainSpec().learning_rate) == (
        4,
        4,
        1e-4,
    )
    assert lora_prompt("Flowers:", "thorn apple") == "Flowers: thorn apple"
    assert lora_prompt("", "thorn apple") == "thorn apple"


def test_workers_take_equal_disjoint_shards():
    assert [list(shard(7, r, 3)) for r in range(3)] == [[0, 3], [1, 4], [2, 5]]
    with pytest.raises(DataError, match="cannot be shared by 2 workers"):
        shard(1, 0, 2)


def test_bad_inputs_fail_on_the_driver_before_any_training(tmp_path, pixel):
    images, labels = sd_images(width=20)
    with pytest.raises(ConfigError, match="model_index.json is missing"):
        train_sd_lora(str(tmp_path / "none"), images, labels, CLASSES, "", tmp_path / "out")
    with pytest.raises(ConfigError, match="is not a pixel diffusion model"):
        train_pixel_lora(tmp_path / "none", *flipped_digits(), tmp_path / "out")
    x, y = flipped_digits()
    with pytest.raises(DataError, match="12 training images but 11 labels"):
        train_pixel_lora(pixel["model"], x, y[:-1], tmp_path / "out")
    with pytest.raises(DataError, match=r"labels must lie in \[0, 3\)"):
        train_pixel_lora(pixel["model"], x, y + 1, tmp_path / "out")
    with pytest.raises(DataError, match=r"needs images \[N, 1, 8, 8\]"):
        train_pixel_lora(pixel["model"], x[:, :, :4], y, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_targets_that_match_no_layer_are_a_config_error(pixel):
    model = load_pixel_model(pixel["model"])
    with pytest.raises(ConfigError, match=r"air.lora.target_modules=\['to_qkv'\] name no layer"):
        add_lora(model.unet, LoraTrainSpec(target_modules=("to_qkv",)))


# Stable Diffusion ----------------------------------------------------------------------------------


def test_sd_lora_lowers_the_denoising_loss(sd):
    assert sd["after"] < 0.92 * sd["before"], (sd["before"], sd["after"])
    assert len(sd["losses"]) == SD_SPEC.steps and all(np.isfinite(sd["losses"]))


def test_sd_lora_changes_only_the_adapter(sd):
    task = sd["task"]
    assert set(task.frozen) == {"unet", "vae", "text_encoder"}
    now = _snapshot(task.frozen)
    assert now.keys() == sd["base"].keys() and len(now) > 100
    assert all(torch.equal(now[k], sd["base"][k]) for k in now)
    assert all(
        not p.requires_grad
        for m in task.frozen.values()
        for n, p in m.named_parameters()
        if "lora_" not in n
    )
    adapter = {n: p for n, p in task.unet.named_parameters() if "lora_" in n}
    assert adapter.keys() == sd["adapter_init"].keys()
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in adapter} == {
        "to_q",
        "to_k",
        "to_v",
        "0",
    }
    assert all(not torch.equal(p, sd["adapter_init"][n]) for n, p in adapter.items())


def _sd_spec(sd, **gen) -> GeneratorSpec:
    cfg = GeneratorConfig(kind="text2image", model=sd["model"], device="cpu", num_steps=3, **gen)
    return GeneratorSpec(generator=cfg, feedback=FeedbackConfig(), class_names=CLASSES)


def _row(seed, prompt="Pets: cat", label=0):
    return {col.SEED: seed, col.PROMPT: prompt, col.NEGATIVE_PROMPT: "", col.LABEL: label}


def _decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png))).astype(np.int16)


def test_sd_adapter_loads_into_the_generator_and_changes_its_output(sd):
    rows = [_row(5), _row(6, "Pets: dog", 1)]
    base = [r.png for r in build_generator(_sd_spec(sd)).generate(rows)]
    gen = build_generator(_sd_spec(sd, lora=(sd["folder"],)))
    adapted = [r.png for r in gen.generate(rows)]
    assert all(np.abs(_decode(a) - _decode(b)).max() > 2 for a, b in zip(adapted, base))
    off = build_generator(_sd_spec(sd, lora=(sd["folder"],), lora_weights=(0.0,)))
    for a, b in zip((r.png for r in off.generate(rows)), base):
        assert np.abs(_decode(a) - _decode(b)).max() <= 1  # weight 0: the base model
    assert gen.identity()["lora"] == [sd["folder"]]
    meta = json.loads((Path(sd["folder"]) / RESULT_FILE).read_text())
    assert meta["kind"] == "text2image" and meta["resolution"] == 16
    assert meta["prompts"] == {"cat": "Pets: cat", "dog": "Pets: dog"}
    assert meta["losses"] == sd["losses"] and meta["spec"]["rank"] == 4


# the pixel model -----------------------------------------------------------------------------------


def test_pixel_lora_lowers_the_denoising_loss(pixel):
    assert pixel["after"] < 0.8 * pixel["before"], (pixel["before"], pixel["after"])


def test_pixel_lora_changes_only_the_adapter(pixel):
    task = pixel["task"]
    now = _snapshot(task.frozen)
    assert now.keys() == pixel["base"].keys()
    assert all(torch.equal(now[k], pixel["base"][k]) for k in now)
    adapter = {n: p for n, p in task.unet.named_parameters() if "lora_" in n}
    layers = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in adapter}
    assert layers == {"conv1", "conv2", "to_q", "to_k", "to_v", "0"}
    assert all(not torch.equal(p, pixel["adapter_init"][n]) for n, p in adapter.items())
    # every base weight still equals the saved model's (peft moved adapted layers to base_layer)
    reloaded = load_pixel_model(pixel["model"]).unet.state_dict()
    now = {k.removeprefix("unet.").replace(".base_layer", ""): v for k, v in now.items()}
    assert now.keys() == reloaded.keys()
    assert all(torch.equal(reloaded[k], v) for k, v in now.items())


def _pixel_spec(pixel, **gen) -> GeneratorSpec:
    cfg = GeneratorConfig(kind="pixel", device="cpu", num_steps=4, guidance_scale=2.0, **gen)
    return GeneratorSpec(
        generator=cfg,
        feedback=FeedbackConfig(),
        class_names=["a", "b", "c"],
        pixel_folder=pixel["model"],
        channels=1,
    )


def test_pixel_adapter_loads_into_the_generator_and_changes_its_output(pixel):
    rows = [{col.LABEL: c, col.SEED: 10 + c} for c in range(3)]
    base = [_decode(r.png) for r in build_generator(_pixel_spec(pixel)).generate(rows)]
    gen = build_generator(_pixel_spec(pixel, lora=(pixel["folder"],)))
    adapted = [_decode(r.png) for r in gen.generate(rows)]
    assert all(np.abs(a - b).max() > 2 for a, b in zip(adapted, base))
    off = build_generator(_pixel_spec(pixel, lora=(pixel["folder"],), lora_weights=(0.0,)))
    assert all(np.abs(_decode(r.png) - b).max() <= 1 for r, b in zip(off.generate(rows), base))
    ident = gen.identity()
    assert ident["lora"] == [pixel["folder"]] and ident["lora_weights"] == [1.0]
    assert build_generator(_pixel_spec(pixel)).identity()["lora"] == []
    # two adapters, the second switched off: the same images as the first alone
    both = build_generator(
        _pixel_spec(pixel, lora=(pixel["folder"], pixel["folder"]), lora_weights=(1.0, 0.0))
    )
    assert all(np.abs(_decode(r.png) - a).max() <= 1 for r, a in zip(both.generate(rows), adapted))


def test_pixel_adapter_that_does_not_fit_names_it(pixel, tmp_path):
    missing = _pixel_spec(pixel, lora=(pixel["folder"], str(tmp_path / "nothing")))
    with pytest.raises(ConfigError, match=r"lora\[1\]='.*nothing' is not a pixel-model LoRA"):
        check_pixel_adapters(missing.generator)  # on the driver, before any actor starts
    with pytest.raises(ConfigError, match=r"lora\[1\]='.*nothing' is not a pixel-model LoRA"):
        build_generator(missing)
    # an adapter trained for a wider model: shapes differ
    wide_cfg = PixelDiffusionConfig(
        **{**PIXEL_CFG.to_dict(), "block_out_channels": (8, 16), "train_steps": 1}
    )
    wide = load_pixel_model(save_tiny_pixel(tmp_path / "wide", wide_cfg))
    task = build_pixel_task(wide, *flipped_digits(), PIXEL_SPEC, torch.device("cpu"))
    save_adapter(task, tmp_path / "wide_adapter", {})
    with pytest.raises(ConfigError, match=r"(?s)lora\[0\]='.*wide_adapter' does not fit.*size"):
        build_generator(_pixel_spec(pixel, lora=(str(tmp_path / "wide_adapter"),)))
    # an adapter with layers this model lacks: a model without mid-block attention
    flat_cfg = PixelDiffusionConfig(
        **{**PIXEL_CFG.to_dict(), "mid_attention": False, "train_steps": 1}
    )
    spec = _pixel_spec(pixel, lora=(pixel["folder"],))
    spec.pixel_folder = save_tiny_pixel(tmp_path / "flat", flat_cfg)
    with pytest.raises(ConfigError, match=r"lora\[0\]='.*adapter' does not fit.*attentions"):
        build_generator(spec)


# what a checkpoint holds -----------------------------------------------------------------------


def test_adapter_state_checkpoints_the_adapter_and_losses_only(pixel, tmp_path):
    task = pixel["task"]
    state = AdapterState(task.unet)
    state.losses = [0.5, 0.25]
    adapter_names = {n for n, p in task.unet.named_parameters() if p.requires_grad}
    assert {k.replace("/", ".") for k in state.adapter} == adapter_names
    assert all("lora_" in n for n in adapter_names)
    opt = torch.optim.AdamW(state.parameters(), lr=1e-3)
    folder = write_checkpoint(tmp_path / "ckpt", state, {"kind": "test"}, opt, {"epoch": 1})
    from safetensors.torch import load_file

    saved = load_file(str(folder / "model.safetensors"))
    assert set(saved) == {f"adapter.{k}" for k in state.adapter} | {"_extra_state"}
    # restoring writes into the model's own adapter tensors and brings the losses back
    fresh = build_pixel_task(
        load_pixel_model(pixel["model"]), *flipped_digits(), PIXEL_SPEC, torch.device("cpu")
    )
    fresh_state = AdapterState(fresh.unet)
    restore_training(folder, fresh_state, torch.optim.AdamW(fresh_state.parameters(), lr=1e-3))
    assert fresh_state.losses == [0.5, 0.25]
    trained = dict(task.unet.named_parameters())
    for n, p in fresh.unet.named_parameters():
        if "lora_" in n:
            assert torch.equal(p, trained[n]), n
