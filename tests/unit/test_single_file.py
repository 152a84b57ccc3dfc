"""Single-file checkpoints (``.safetensors`` in the original SD layout): a tiny SD pipeline saved by
the test as one file loads through diffusers' ``from_single_file`` with the same weights and
generates the same images as its diffusers folder; CosXL's EDM v-prediction scheduler is set up."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from ldm_layout import save_single_file
from PIL import Image
from tiny_models import one_thread, save_sd  # noqa: F401

from raysynth import columns as col
from raysynth.config.schema import FeedbackConfig, GeneratorConfig
from raysynth.errors import ConfigError
from raysynth.generate.factory import build_generator
from raysynth.generate.generators import GeneratorSpec
from raysynth.generate.loading import check_model_available, load_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from diffusers import StableDiffusionPipeline

    root = tmp_path_factory.mktemp("single_file")
    folder = save_sd(root / "sd")
    pipe = StableDiffusionPipeline.from_pretrained(folder)
    return {"folder": folder, "file": str(save_single_file(pipe, root / "tiny-sd.safetensors"))}


def _cfg(tiny, **kw) -> GeneratorConfig:
    return GeneratorConfig(**{"kind": "text2image", "model": tiny["file"], "device": "cpu",
                              "single_file_config": tiny["folder"], "num_steps": 2, **kw})


def test_single_file_loads_the_same_weights_and_generates_the_same_images(tiny):
    from diffusers import StableDiffusionPipeline

    pipe = load_pipeline(_cfg(tiny), torch.device("cpu"))
    ref = StableDiffusionPipeline.from_pretrained(tiny["folder"])
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(ref, name).state_dict(), getattr(pipe, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    rows = [{col.SEED: 3, col.PROMPT: "a photo of a cat", col.NEGATIVE_PROMPT: "", col.LABEL: 0}]

    def images(model: str, **kw) -> list[bytes]:
        cfg = _cfg(tiny, model=model, **kw)
        spec = GeneratorSpec(generator=cfg, feedback=FeedbackConfig(), class_names=["cat"])
        return [r.png for r in build_generator(spec).generate(rows)]

    one = images(tiny["file"])
    assert np.asarray(Image.open(io.BytesIO(one[0]))).shape == (16, 16, 3)
    assert one == images(tiny["folder"])  # the single file is the same model


def test_cosxl_scheduler_is_edm_with_v_prediction(tiny):
    pipe = load_pipeline(_cfg(tiny, scheduler="edm_euler"), torch.device("cpu"))
    s = pipe.scheduler
    assert type(s).__name__ == "EDMEulerScheduler"
    assert (s.config.prediction_type, s.config.sigma_data, s.config.sigma_max) == (
        "v_prediction", 1.0, 120.0)
    pipe = load_pipeline(_cfg(tiny, prediction_type="v_prediction"), torch.device("cpu"))
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    # raysynth's sampler runs the EDM schedule (the tiny model is not trained for it: only the
    # run and the output shape are checked)
    spec = GeneratorSpec(generator=_cfg(tiny, scheduler="edm_euler"), feedback=FeedbackConfig(),
                         class_names=["cat"])
    rows = [{col.SEED: 1, col.PROMPT: "a cat", col.NEGATIVE_PROMPT: "", col.LABEL: 0}]
    png = build_generator(spec).generate(rows)[0].png
    assert np.asarray(Image.open(io.BytesIO(png))).shape == (16, 16, 3)


def test_single_file_errors_say_what_to_pass(tiny, tmp_path):
    with pytest.raises(ConfigError, match="single_file_config to a diffusers pipeline"):
        check_model_available(_cfg(tiny, single_file_config=""))
    with pytest.raises(ConfigError, match="no such checkpoint file"):
        check_model_available(_cfg(tiny, model=str(tmp_path / "nope.safetensors")))
    assert check_model_available(_cfg(tiny))["_class_name"] == "StableDiffusionPipeline"
