"""Latent diffusion generators on tiny real pipelines saved to disk and loaded back offline."""

from __future__ import annotations

import io
import json
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from tiny_models import (
    SMALL,
    one_thread,  # noqa: F401
    unclip_pipeline,
)
from tiny_models import png as _png
from tiny_models import scheduler as _scheduler
from tiny_models import text_encoder as _text_encoder
from tiny_models import tokenizer as _tokenizer
from tiny_models import unet as _unet
from tiny_models import vae as _vae

from raysynth import columns as col
from raysynth.config.schema import FeedbackConfig, GeneratorConfig
from raysynth.errors import ConfigError, DataError
from raysynth.generate.factory import build_generator
from raysynth.generate.generators import GeneratorSpec, identity_json
from raysynth.generate.guidance import predicted_x0
from raysynth.generate.latent_sampling import _guidance_frame
from raysynth.generate.loading import (
    SCHEDULERS,
    check_adapters,
    check_model_available,
    check_scheduler,
)

CLASSES = ["cat", "dog"]

pytestmark = pytest.mark.usefixtures("one_thread")


# tiny components ---------------------------------------------------------------------------------


def _image_processor():
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(crop_size=32, size=32)


def _flagging_safety_checker():
    """A tiny SD safety checker whose concept thresholds are below any cosine: flags everything."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig

    vision = {**SMALL, "image_size": 32, "patch_size": 8}
    text = {**SMALL, "vocab_size": 80, "max_position_embeddings": 16}
    checker = StableDiffusionSafetyChecker(
        CLIPConfig(text_config=text, vision_config=vision, projection_dim=32)
    )
    checker.concept_embeds_weights.data.fill_(-2.0)
    return checker


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny SD and unCLIP pipelines, LoRA adapters, a classifier and real images, saved once."""
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig, get_peft_model_state_dict

    from raysynth.train.checkpoint import write_checkpoint
    from raysynth.train.models import build_model

    root = tmp_path_factory.mktemp("latent")
    torch.manual_seed(0)
    sd = StableDiffusionPipeline(
        vae=_vae(),
        text_encoder=_text_encoder(),
        tokenizer=_tokenizer(),
        unet=_unet(),
        scheduler=_scheduler(),
        safety_checker=_flagging_safety_checker(),
        feature_extractor=_image_processor(),
    )
    sd.save_pretrained(root / "sd")

    unclip = unclip_pipeline(_image_processor())
    unclip.save_pretrained(root / "unclip")

    def lora(unet, folder):
        cfg = LoraConfig(
            r=4,
            lora_alpha=4,
            target_modules=["to_q", "to_k", "to_v", "to_out.0"],
            init_lora_weights=False,  # random A and B: the adapter changes the output
        )
        unet.add_adapter(cfg)
        layers = get_peft_model_state_dict(unet)
        StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=layers)
        return folder

    lora_ok = lora(_unet(), root / "lora")
    lora_bad = lora(_unet(channels=(16, 32)), root / "lora_other_arch")

    classifier = build_model(
        {
            "kind": "classifier",
            "encoder": {"arch": "small_cnn", "in_channels": 3, "width": 4, "feat_dim": 8},
            "num_classes": 2,
        }
    )
    with torch.no_grad():  # a confident classifier: low entropy with a clear gradient
        classifier.fc.weight.mul_(20)
    clf_cfg = {
        "kind": "classifier",
        "encoder": {"arch": "small_cnn", "in_channels": 3, "width": 4, "feat_dim": 8},
        "num_classes": 2,
    }
    write_checkpoint(root / "classifier", classifier.eval(), clf_cfg)

    rng = np.random.default_rng(0)
    real = {
        "real-0": np.full((16, 16, 3), 230, np.uint8),
        "real-1": rng.integers(0, 255, (16, 16, 3), dtype=np.uint8),
    }
    table = pa.table(
        {
            col.SAMPLE_ID: list(real),
            col.IMAGE: pa.array([_png(a) for a in real.values()], pa.binary()),
        }
    )
    pq.write_table(table, root / "real.parquet")
    return {
        "sd": str(root / "sd"),
        "unclip": str(root / "unclip"),
        "lora": str(lora_ok),
        "lora_bad": str(lora_bad),
        "classifier": str(root / "classifier"),
        "real": str(root / "real.parquet"),
        "root": root,
    }


def _spec(models, kind="text2image", feedback=None, **gen) -> GeneratorSpec:
    cfg = GeneratorConfig(
        kind=kind,
        model=gen.pop("model", models["sd" if kind == "text2image" else "unclip"]),
        device="cpu",
        num_steps=gen.pop("num_steps", 3),
        **gen,
    )
    return GeneratorSpec(
        generator=cfg,
        feedback=feedback or FeedbackConfig(),
        class_names=CLASSES,
        classifier_folder=models["classifier"],
        real_images=models["real"],
    )


def _row(seed, prompt="a photo of a cat", negative="", label=0, cond="real-0"):
    return {
        col.SEED: seed,
        col.PROMPT: prompt,
        col.NEGATIVE_PROMPT: negative,
        col.LABEL: label,
        col.COND_ID: cond,
    }


def _pngs(results):
    return [r.png for r in results]


def _decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


# text2image ------------------------------------------------------------------------------------


def test_text2image_is_deterministic_per_row_whatever_the_batch(models):
    gen = build_generator(_spec(models))
    rows = [_row(1), _row(2, "a photo of a dog", label=1), _row(3)]
    full = _pngs(gen.generate(rows))
    assert _pngs(gen.generate([rows[2], rows[0]])) == [full[2], full[0]]
    assert _pngs(gen.generate([rows[1]])) == [full[1]]
    # a freshly loaded generator gives the same bytes
    assert _pngs(build_generator(_spec(models)).generate(rows)) == full
    assert full[0] != full[2]  # same prompt, different seed
    assert _decode(full[0]).shape == (16, 16, 3)


def test_ddim_eta_samples_ancestrally_and_stays_per_row_deterministic(models):
    gen = build_generator(_spec(models, eta=1.0))
    rows = [_row(1), _row(2, "a photo of a dog", label=1), _row(3)]
    full = _pngs(gen.generate(rows))
    assert _pngs(gen.generate([rows[2], rows[0]])) == [full[2], full[0]]
    plain = _pngs(build_generator(_spec(models)).generate(rows))
    assert all(a != b for a, b in zip(full, plain))  # the per-step noise changes every image
    assert gen.identity()["eta"] == 1.0


def test_identity_names_model_scheduler_and_settings(models):
    gen = build_generator(_spec(models, scheduler="euler", guidance_scale=2.5))
    ident = json.loads(identity_json(gen))
    assert ident["model"] == models["sd"]
    assert ident["scheduler"] == "EulerDiscreteScheduler"
    assert ident["scheduler_config"]["beta_schedule"] == "scaled_linear"
    assert ident["prediction_type"] == "epsilon"
    assert (ident["num_steps"], ident["guidance_scale"]) == (3, 2.5)
    assert ident["lora"] == [] and ident["feedback"]["criterion"] == "none"


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_every_scheduler_samples_deterministically(models, name):
    gen = build_generator(_spec(models, scheduler=name, num_steps=4))  # pndm's PRK needs 4
    assert type(gen.sampler.new_scheduler()).__name__ == SCHEDULERS[name]
    rows = [_row(5), _row(6)]
    first = _pngs(gen.generate(rows))
    assert _pngs(gen.generate(rows[1:])) == first[1:]  # ancestral noise is per row too


def test_negative_prompt_changes_the_image(models):
    gen = build_generator(_spec(models, guidance_scale=4.0))
    plain, negative = gen.generate([_row(7), _row(7, negative="blurry dark")])
    assert plain.png != negative.png


def test_output_size_and_channels_follow_the_spec(models):
    spec = replace(_spec(models), image_size=8, channels=1)
    (out,) = build_generator(spec).generate([_row(1)])
    img = Image.open(io.BytesIO(out.png))
    assert (img.mode, img.size) == ("L", (8, 8))


@pytest.mark.parametrize(
    ("scheduler", "guidance_scale", "negatives"),
    [("ddim", 4.0, None), ("ddim", 4.0, ("blurry", "dark photo")), ("euler", 1.0, None)],
)
def test_loop_reproduces_the_sd_pipeline_call(models, scheduler, guidance_scale, negatives):
    """Same scheduler, seeds, no feedback: the shared loop gives ``StableDiffusionPipeline``'s
    own images (the conditioning and CFG batch are wired as the library wires them)."""
    from raysynth.generate.latent_sampling import _prompts, _row_generators

    gen = build_generator(_spec(models, scheduler=scheduler, guidance_scale=guidance_scale))
    s = gen.sampler
    neg = negatives or ("", "")
    rows = [_row(51, "a photo of a cat", neg[0]), _row(52, "a dog", neg[1], label=1)]
    ref = s.pipe(
        prompt=[r[col.PROMPT] for r in rows],
        negative_prompt=None if negatives is None else list(negatives),
        num_inference_steps=s.spec.generator.num_steps,
        guidance_scale=guidance_scale,
        generator=[torch.Generator().manual_seed(r[col.SEED]) for r in rows],
        output_type="np",
    ).images
    generators = _row_generators(rows)
    noise = s.initial_latents(generators)
    latents = s.denoise(noise, generators, s.conditioning(*_prompts(rows)), torch.tensor([0, 1]))
    with torch.no_grad():
        ours = (s.vae_decode(latents) / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert ref.shape == ours.shape == (2, 16, 16, 3)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)
    pngs = np.stack([_decode(r.png) for r in gen.generate(rows)]).astype(int)
    assert np.abs(pngs - np.round(ref * 255)).max() <= 1


# feedback guidance -------------------------------------------------------------------------------


def test_feedback_with_zero_scale_is_exactly_unguided(models):
    rows = [_row(11), _row(12, label=1)]
    plain = _pngs(build_generator(_spec(models)).generate(rows))
    zero = FeedbackConfig(criterion="entropy", scale=0.0, every=1)
    results = build_generator(_spec(models, feedback=zero)).generate(rows)
    assert _pngs(results) == plain
    assert all(r.criterion is None for r in results)


@pytest.mark.parametrize("scheduler", ["ddim", "euler"])
def test_feedback_changes_images_and_reports_the_criterion(models, scheduler):
    rows = [_row(11), _row(12, label=1)]
    plain = _pngs(build_generator(_spec(models, scheduler=scheduler)).generate(rows))
    fb = FeedbackConfig(criterion="entropy", scale=0.5, every=1)
    gen = build_generator(_spec(models, feedback=fb, scheduler=scheduler))
    guided = gen.generate(rows)
    assert all(g.png != p for g, p in zip(guided, plain))
    assert all(g.criterion is not None and np.isfinite(g.criterion) for g in guided)
    assert _pngs(gen.generate(rows[1:])) == _pngs(guided)[1:]  # still per-row deterministic


def test_one_guided_step_raises_the_entropy_of_the_decoded_prediction(models):
    fb_cfg = FeedbackConfig(criterion="entropy", scale=0.02, every=1)
    gen = build_generator(_spec(models, feedback=fb_cfg))
    fb = gen.sampler.feedback
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(2, 4, 8, 8, generator=g)
    eps = torch.randn(2, 4, 8, 8, generator=g)
    abar = gen.sampler.new_scheduler().alphas_cumprod
    y = torch.tensor([0, 1])
    t = 300
    new, before = fb.apply(0, x_t, eps, t, abar, "epsilon", y)
    with torch.no_grad():
        after = fb.evaluate(predicted_x0(new, eps, abar[t], "epsilon"), y)
        # the criterion is computed on the VAE decode of x̂0 (3-channel pixels)
        direct = fb.evaluate(predicted_x0(x_t, eps, abar[t], "epsilon"), y)
    torch.testing.assert_close(before, direct)
    assert not torch.equal(new, x_t)
    assert (after > before).all(), (before, after)


def test_euler_guidance_frame_matches_the_schedulers_own_prediction():
    """Euler keeps ``x0 + σε``; guidance works on ``c·latents`` with ᾱ = 1/(σ²+1)."""
    from diffusers import EulerDiscreteScheduler

    sched = EulerDiscreteScheduler.from_config(_scheduler("v_prediction").config)
    sched.set_timesteps(4)
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 8, 8, generator=g) * sched.init_noise_sigma
    v = torch.randn(1, 4, 8, 8, generator=g)
    t = sched.timesteps[1]
    x_in = sched.scale_model_input(latents, t)
    c, abar = _guidance_frame(sched, t)
    torch.testing.assert_close(x_in, latents * c)
    expected = sched.step(v, t, latents).pred_original_sample
    torch.testing.assert_close(predicted_x0(x_in, v, abar, "v_prediction"), expected)


def test_pndm_with_too_few_steps_is_a_config_error(models):
    with pytest.raises(ConfigError, match="num_steps=2"):
        build_generator(_spec(models, scheduler="pndm", num_steps=2))


# model, scheduler and prediction type --------------------------------------------------------------


def test_prediction_type_is_the_models_own(models):
    for scheduler in ("ddim", "euler", "dpm_solver"):
        gen = build_generator(_spec(models, kind="unclip", scheduler=scheduler))
        assert gen.sampler.prediction_type == "v_prediction"
        assert gen.sampler.new_scheduler().config.prediction_type == "v_prediction"
    assert build_generator(_spec(models)).sampler.prediction_type == "epsilon"


def test_missing_model_folder_is_a_config_error(models, tmp_path):
    missing = GeneratorConfig(kind="text2image", model=str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="nope"):
        check_model_available(missing)
    with pytest.raises(ConfigError, match="nope"):
        build_generator(_spec(models, model=str(tmp_path / "nope")))


def test_uncached_hub_id_is_a_config_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = GeneratorConfig(kind="text2image", model="raysynth-tests/not-a-real-model")
    with pytest.raises(ConfigError, match="cannot be loaded offline.*local folder"):
        check_model_available(cfg)


def test_wrong_pipeline_kind_and_sdxl_refiner_are_config_errors(models, tmp_path):
    with pytest.raises(ConfigError, match="kind=unclip"):
        check_model_available(GeneratorConfig(kind="text2image", model=models["unclip"]))
    index = tmp_path / "model_index.json"
    # SDXL base is a text2image model (tests/unit/test_sdxl.py drives it) ...
    index.write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    assert check_model_available(GeneratorConfig(kind="text2image", model=str(tmp_path)))
    with pytest.raises(ConfigError, match="kind=text2image"):
        check_model_available(GeneratorConfig(kind="unclip", model=str(tmp_path)))
    # ... the SDXL refiner (img2img, no first text encoder) is not
    index.write_text(json.dumps({"_class_name": "StableDiffusionXLImg2ImgPipeline"}))
    with pytest.raises(ConfigError, match="SDXL.*base model"):
        check_model_available(GeneratorConfig(kind="text2image", model=str(tmp_path)))


def test_unknown_scheduler_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="heun.*ddim, ddpm, pndm, euler"):
        check_scheduler("heun")
    assert check_scheduler("dpm_solver").__name__ == "DPMSolverMultistepScheduler"


# LoRA ------------------------------------------------------------------------------------------


def test_lora_adapter_changes_the_output(models):
    rows = [_row(21)]
    base = _pngs(build_generator(_spec(models)).generate(rows))
    gen = build_generator(_spec(models, lora=(models["lora"],)))
    adapted = _pngs(gen.generate(rows))
    assert adapted != base
    half = build_generator(_spec(models, lora=(models["lora"],), lora_weights=(0.0,)))
    assert _pngs(half.generate(rows)) == base  # weight 0 switches the adapter off
    assert gen.identity()["lora"] == [models["lora"]]


def test_lora_for_another_architecture_names_the_adapter(models, tmp_path):
    with pytest.raises(ConfigError, match="(?s)lora_other_arch.*size mismatch"):
        build_generator(_spec(models, lora=(models["lora_bad"],)))
    # the same adapter with its target modules renamed away, and one for another component
    weights = load_file(f"{models['lora']}/pytorch_lora_weights.safetensors")
    for name, rename in (("absent", ("attn", "attnX")), ("elsewhere", ("unet.", "prior."))):
        (tmp_path / name).mkdir()
        moved = {k.replace(*rename): v for k, v in weights.items()}
        save_file(moved, str(tmp_path / name / "pytorch_lora_weights.safetensors"))
        with pytest.raises(ConfigError, match=f"lora\\[0\\]='.*{name}'"):
            build_generator(_spec(models, lora=(str(tmp_path / name),)))


def test_missing_adapter_folder_is_a_config_error(models, tmp_path):
    cfg = GeneratorConfig(kind="text2image", model=models["sd"], lora=(str(tmp_path / "x"),))
    with pytest.raises(ConfigError, match="lora\\[0\\]"):
        check_adapters(cfg)


# safety checker --------------------------------------------------------------------------------


def test_flagged_images_are_dropped_not_blacked_out(models):
    results = build_generator(_spec(models, safety_checker=True)).generate([_row(1), _row(2)])
    assert [(r.png, r.flagged) for r in results] == [(None, True), (None, True)]
    clean = build_generator(_spec(models)).generate([_row(1)])
    assert clean[0].png is not None and not clean[0].flagged


def test_safety_checker_on_a_model_without_one_is_a_config_error(models):
    with pytest.raises(ConfigError, match="safety checker"):
        build_generator(_spec(models, kind="unclip", safety_checker=True))


# unCLIP ----------------------------------------------------------------------------------------


def test_unclip_is_deterministic_and_uses_the_condition_image(models):
    gen = build_generator(_spec(models, kind="unclip"))
    rows = [_row(31), _row(31, cond="real-1"), _row(32, label=1)]
    full = _pngs(gen.generate(rows))
    assert _pngs(gen.generate([rows[2], rows[1]])) == [full[2], full[1]]
    assert full[0] != full[1]  # same seed and prompt, different real image
    assert _decode(full[0]).shape == (16, 16, 3)
    ident = gen.identity()
    assert ident["pipeline"] == "StableUnCLIPImg2ImgPipeline" and ident["image_dropout"] == 0


def test_unclip_image_dropout_drops_the_image_embedding(models):
    rows = [_row(41), _row(41, cond="real-1")]
    kept = _pngs(build_generator(_spec(models, kind="unclip")).generate(rows))
    dropped = _pngs(build_generator(_spec(models, kind="unclip", image_dropout=1.0)).generate(rows))
    assert dropped[0] != kept[0]
    # without the image embedding the condition image no longer matters
    assert dropped[0] == dropped[1]


def test_unclip_unknown_condition_id_is_a_data_error(models):
    gen = build_generator(_spec(models, kind="unclip"))
    with pytest.raises(DataError, match="real-9"):
        gen.generate([_row(1, cond="real-9")])
