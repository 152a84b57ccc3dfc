"""SDXL through the shared latent loop, on a tiny pipeline saved to disk and loaded back offline.

The equivalence tests prove the conditioning is wired right: with the same scheduler, seeds and no
feedback guidance, raysynth's loop reproduces ``StableDiffusionXLPipeline.__call__``.
"""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import (
    one_thread,  # noqa: F401
    text_config,
    text_encoder,
    tokenizer,
    vae,
)
from tiny_models import unet as tiny_unet

from raysynth import columns as col
from raysynth.config.schema import FeedbackConfig, GeneratorConfig
from raysynth.errors import ConfigError
from raysynth.generate.factory import build_generator
from raysynth.generate.generators import GeneratorSpec, identity_json
from raysynth.generate.latent_sampling import _prompts, _row_generators
from raysynth.generate.loading import check_model_available

CLASSES = ["cat", "dog"]
TIME_EMBED_DIM = 4
PROJECTION_DIM = 32

pytestmark = pytest.mark.usefixtures("one_thread")


# tiny SDXL components (the SD 1.x ones of tests/tiny_models.py, with SDXL's conditioning) --------


def _unet():
    """An SDXL-style UNet: cross-attention over both encoders' states (32 + 32), and the
    ``text_time`` added embedding of 6 time ids and text_encoder_2's pooled projection."""
    return tiny_unet(
        cross_attention_dim=64,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=6 * TIME_EMBED_DIM + PROJECTION_DIM,
    )


def _scheduler():
    """SDXL base's own scheduler config."""
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
        prediction_type="epsilon",
    )


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny SDXL pipeline (and a force_zeros=false copy), a LoRA adapter and a classifier."""
    from diffusers import StableDiffusionXLPipeline
    from peft import LoraConfig, get_peft_model_state_dict
    from transformers import CLIPTextModelWithProjection

    from raysynth.train.checkpoint import write_checkpoint
    from raysynth.train.models import build_model

    root = tmp_path_factory.mktemp("sdxl")
    torch.manual_seed(0)
    pipe = StableDiffusionXLPipeline(
        vae=vae(scaling_factor=0.13025, force_upcast=True),  # SDXL's VAE settings
        text_encoder=text_encoder(),
        text_encoder_2=CLIPTextModelWithProjection(text_config(projection_dim=PROJECTION_DIM)),
        tokenizer=tokenizer(),
        tokenizer_2=tokenizer(),
        unet=_unet(),
        scheduler=_scheduler(),
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    pipe.save_pretrained(root / "sdxl")
    shutil.copytree(root / "sdxl", root / "sdxl_no_zeros")
    index = root / "sdxl_no_zeros" / "model_index.json"
    info = json.loads(index.read_text())
    info["force_zeros_for_empty_prompt"] = False
    index.write_text(json.dumps(info))

    unet = _unet()
    unet.add_adapter(
        LoraConfig(
            r=4,
            lora_alpha=4,
            target_modules=["to_q", "to_k", "to_v", "to_out.0"],
            init_lora_weights=False,  # random A and B: the adapter changes the output
        )
    )
    StableDiffusionXLPipeline.save_lora_weights(
        root / "lora", unet_lora_layers=get_peft_model_state_dict(unet)
    )

    clf_cfg = {
        "kind": "classifier",
        "encoder": {"arch": "small_cnn", "in_channels": 3, "width": 4, "feat_dim": 8},
        "num_classes": 2,
    }
    classifier = build_model(clf_cfg)
    with torch.no_grad():  # a confident classifier: low entropy with a clear gradient
        classifier.fc.weight.mul_(20)
    write_checkpoint(root / "classifier", classifier.eval(), clf_cfg)
    return {
        "sdxl": str(root / "sdxl"),
        "sdxl_no_zeros": str(root / "sdxl_no_zeros"),
        "lora": str(root / "lora"),
        "classifier": str(root / "classifier"),
    }


def _spec(models, feedback=None, **gen) -> GeneratorSpec:
    cfg = GeneratorConfig(
        kind="text2image",
        model=gen.pop("model", models["sdxl"]),
        device="cpu",
        num_steps=gen.pop("num_steps", 3),
        **gen,
    )
    return GeneratorSpec(
        generator=cfg,
        feedback=feedback or FeedbackConfig(),
        class_names=CLASSES,
        classifier_folder=models["classifier"],
    )


def _row(seed, prompt="a photo of a cat", negative="", label=0):
    return {col.SEED: seed, col.PROMPT: prompt, col.NEGATIVE_PROMPT: negative, col.LABEL: label}


def _pngs(results):
    return [r.png for r in results]


def _decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


# the generator -----------------------------------------------------------------------------------


def test_sdxl_folder_loads_as_text2image_and_is_deterministic_per_row(models):
    gen = build_generator(_spec(models))
    assert type(gen.sampler.pipe).__name__ == "StableDiffusionXLPipeline"
    rows = [_row(1), _row(2, "a photo of a dog", label=1), _row(3)]
    full = _pngs(gen.generate(rows))
    assert _pngs(gen.generate([rows[2], rows[0]])) == [full[2], full[0]]
    assert _pngs(gen.generate([rows[1]])) == [full[1]]
    assert _pngs(build_generator(_spec(models)).generate(rows)) == full
    assert full[0] != full[2]  # same prompt, different seed
    assert _decode(full[0]).shape == (16, 16, 3)


def test_sdxl_identity_records_the_pipeline_and_its_conditioning(models):
    ident = json.loads(identity_json(build_generator(_spec(models, scheduler="euler"))))
    assert ident["kind"] == "text2image" and ident["pipeline"] == "StableDiffusionXLPipeline"
    assert ident["scheduler"] == "EulerDiscreteScheduler"
    assert ident["scheduler_config"]["timestep_spacing"] == "leading"  # the model's own config
    assert ident["micro_conditioning"] == {
        "original_size": [16, 16],
        "crops_coords_top_left": [0, 0],
        "target_size": [16, 16],
    }
    assert ident["force_zeros_for_empty_prompt"] is True
    assert "all-zero" in ident["negative_prompt"]
    assert ident["safety_checker"] is False and ident["watermark"] is False


def test_negative_prompt_changes_the_image(models):
    gen = build_generator(_spec(models, guidance_scale=4.0))
    plain, negative = gen.generate([_row(7), _row(7, negative="blurry dark")])
    assert plain.png != negative.png


def test_empty_negative_prompt_follows_force_zeros_for_empty_prompt(models):
    rows = [_row(8)]
    zeros = build_generator(_spec(models, guidance_scale=4.0))
    empty = build_generator(_spec(models, model=models["sdxl_no_zeros"], guidance_scale=4.0))
    assert _pngs(zeros.generate(rows)) != _pngs(empty.generate(rows))
    cond = zeros.sampler.conditioning(["a cat"], [""])
    assert not cond.encoder_hidden_states[0].any()  # the unconditional half
    assert not cond.added_cond_kwargs["text_embeds"][0].any()
    assert cond.encoder_hidden_states[1].any()
    assert empty.sampler.conditioning(["a cat"], [""]).encoder_hidden_states[0].any()


def test_conditioning_shapes_follow_the_two_encoders(models):
    s = build_generator(_spec(models, guidance_scale=4.0)).sampler
    cond = s.conditioning(["a cat", "a dog"], ["", "dark"])
    assert cond.encoder_hidden_states.shape == (4, 16, 64)  # [uncond; cond], 32 + 32 features
    assert cond.added_cond_kwargs["text_embeds"].shape == (4, PROJECTION_DIM)
    assert cond.added_cond_kwargs["time_ids"].tolist() == [[16, 16, 0, 0, 16, 16]] * 4
    assert cond.class_labels is None
    unguided = build_generator(_spec(models, guidance_scale=1.0)).sampler
    assert unguided.conditioning(["a cat"], ["dark"]).encoder_hidden_states.shape[0] == 1


def test_output_size_and_channels_follow_the_spec(models):
    spec = replace(_spec(models), image_size=8, channels=1)
    (out,) = build_generator(spec).generate([_row(1)])
    img = Image.open(io.BytesIO(out.png))
    assert (img.mode, img.size) == ("L", (8, 8))


def test_float16_decodes_with_a_float32_vae(models):
    s = build_generator(_spec(models, dtype="float16")).sampler
    assert s.pipe.unet.dtype == torch.float16
    assert s.pipe.vae.dtype == torch.float32  # force_upcast: the SDXL VAE overflows in fp16
    assert s.pipe.text_encoder_2.dtype == torch.float16
    assert s.identity()["vae_dtype"] == "float32"


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


# LoRA and safety checker -------------------------------------------------------------------------


def test_lora_adapter_changes_the_output(models):
    rows = [_row(21)]
    base = _pngs(build_generator(_spec(models)).generate(rows))
    gen = build_generator(_spec(models, lora=(models["lora"],)))
    assert _pngs(gen.generate(rows)) != base
    off = build_generator(_spec(models, lora=(models["lora"],), lora_weights=(0.0,)))
    assert _pngs(off.generate(rows)) == base  # weight 0 switches the adapter off
    assert gen.identity()["lora"] == [models["lora"]]


def test_safety_checker_is_a_config_error_for_sdxl(models):
    cfg = GeneratorConfig(kind="text2image", model=models["sdxl"], safety_checker=True)
    with pytest.raises(ConfigError, match="SDXL ships no safety checker"):
        check_model_available(cfg)
    with pytest.raises(ConfigError, match="safety_checker"):
        build_generator(_spec(models, safety_checker=True))


def test_sdxl_refiner_or_wrong_kind_is_a_config_error(models, tmp_path):
    (tmp_path / "model_index.json").write_text(
        json.dumps({"_class_name": "StableDiffusionXLImg2ImgPipeline"})
    )
    with pytest.raises(ConfigError, match="SDXL base model"):
        check_model_available(GeneratorConfig(kind="text2image", model=str(tmp_path)))
    with pytest.raises(ConfigError, match="set synthesis.generator.kind=text2image"):
        check_model_available(GeneratorConfig(kind="unclip", model=models["sdxl"]))


def test_unet_that_does_not_fit_the_micro_conditioning_is_a_config_error(models, tmp_path):
    folder = tmp_path / "bad"
    shutil.copytree(models["sdxl"], folder)
    config = folder / "unet" / "config.json"
    info = json.loads(config.read_text())
    info["addition_time_embed_dim"] = TIME_EMBED_DIM - 1  # 6 × 3 + 32 ≠ 56 inputs
    config.write_text(json.dumps(info))
    with pytest.raises(ConfigError, match="6 time ids"):
        build_generator(_spec(models, model=str(folder)))


def test_watermark_of_the_pipeline_is_applied(models):
    """Where invisible-watermark is installed SDXL's ``pipe(...)`` watermarks its output; so does
    raysynth (the watermarker sees [-1, 1] images, as in the pipeline)."""

    class Negate:
        def apply_watermark(self, images):
            assert images.min() >= -1.5 and images.shape[1] == 3
            return -images

    rows = [_row(31)]
    gen = build_generator(_spec(models))
    plain = _decode(gen.generate(rows)[0].png).astype(int)
    gen.sampler.pipe.watermark = Negate()
    marked = _decode(gen.generate(rows)[0].png).astype(int)
    assert np.abs(marked - (255 - plain)).max() <= 1
    assert gen.identity()["watermark"] is True


# equivalence with the library's own pipeline call -------------------------------------------------


def _loop_pixels(gen, rows) -> np.ndarray:
    """raysynth's loop up to float pixels in [0, 1], ``[B, H, W, 3]`` (what ``generate`` does
    before PNG encoding)."""
    s = gen.sampler
    generators = _row_generators(rows)
    noise = s.initial_latents(generators)
    prompts, negatives = _prompts(rows)
    labels = torch.tensor([r[col.LABEL] for r in rows])
    latents = s.denoise(noise, generators, s.conditioning(prompts, negatives), labels)
    with torch.no_grad():
        pixels = (s.vae_decode(latents) / 2 + 0.5).clamp(0, 1)
    return pixels.permute(0, 2, 3, 1).numpy()


def _library_pixels(gen, rows, guidance_scale, negatives) -> np.ndarray:
    return gen.sampler.pipe(
        prompt=[r[col.PROMPT] for r in rows],
        negative_prompt=negatives,
        num_inference_steps=gen.sampler.spec.generator.num_steps,
        guidance_scale=guidance_scale,
        generator=[torch.Generator().manual_seed(r[col.SEED]) for r in rows],
        output_type="np",
    ).images


@pytest.mark.parametrize(
    ("scheduler", "guidance_scale", "with_negatives", "model"),
    [
        ("euler", 5.0, True, "sdxl"),
        ("ddim", 5.0, True, "sdxl"),
        ("euler_ancestral", 5.0, True, "sdxl"),  # per-row step noise, same generator order
        ("euler", 5.0, False, "sdxl"),  # no negatives: force_zeros → zero embeddings
        ("euler", 5.0, False, "sdxl_no_zeros"),  # no negatives: the empty prompt
        ("euler", 1.0, False, "sdxl"),  # no classifier-free guidance
    ],
)
def test_loop_reproduces_the_sdxl_pipeline_call(
    models, scheduler, guidance_scale, with_negatives, model
):
    gen = build_generator(
        _spec(models, model=models[model], scheduler=scheduler, guidance_scale=guidance_scale)
    )
    negative = ("blurry", "dark photo") if with_negatives else ("", "")
    rows = [_row(41, "a photo of a cat", negative[0]), _row(42, "a dog", negative[1], label=1)]
    ref = _library_pixels(gen, rows, guidance_scale, list(negative) if with_negatives else None)
    ours = _loop_pixels(gen, rows)
    assert ref.shape == ours.shape == (2, 16, 16, 3)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)
    # and the stored PNGs are those images, rounded to 8 bits
    pngs = np.stack([_decode(r.png) for r in gen.generate(rows)]).astype(int)
    assert np.abs(pngs - np.round(ref * 255)).max() <= 1
