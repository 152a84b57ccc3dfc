"""On CUDA: a tiny pipeline saved in float32, placed only in a Hugging Face cache under a hub id,
goes through the model store to an empty node cache and loads on the GPU in float16 / bfloat16
(every module in that dtype), and the generator made from it samples there. Skipped without CUDA."""

from __future__ import annotations

import pytest
import torch
from tiny_models import hub_cached_sd

pytestmark = pytest.mark.gpu

HUB_ID = "raysynth-tests/tiny-sd-gpu"
COMMIT = "00112233445566778899aabbccddeeff00112233"


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_store_copy_loads_on_cuda_in_the_configured_dtype(tmp_path, monkeypatch, dtype):
    import huggingface_hub.constants as c

    from raysynth.config.schema import FeedbackConfig, GeneratorConfig
    from raysynth.generate.factory import build_generator
    from raysynth.generate.generators import GeneratorSpec
    from raysynth.generate.model_source import resolve_model
    from raysynth.generate.model_store import local_copy, publish

    hub_cached_sd(tmp_path / "driver", HUB_ID, COMMIT)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "driver" / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ref = publish(HUB_ID, resolve_model(HUB_ID), str(tmp_path / "store"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "node"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "node" / "hub"))
    g = GeneratorConfig(kind="text2image", model=HUB_ID, dtype=dtype, num_steps=2, image_size=16)
    gen = build_generator(GeneratorSpec(g, FeedbackConfig(), ["cat"], model_ref=ref, gpus=1.0))
    assert local_copy(ref)[1] == 0  # the generator's load copied it; now it is there
    pipe = gen.sampler.pipe
    for name in ("unet", "vae", "text_encoder"):
        params = list(getattr(pipe, name).parameters())
        assert {p.dtype for p in params} == {getattr(torch, dtype)}, name
        assert all(p.is_cuda for p in params), name
    row = {"sample_id": "s0", "label": 0, "class_name": "cat", "prompt": "a cat",
           "negative_prompt": "", "seed": 1, "round": 0, "cond_id": "", "index": 0}
    assert gen.generate([row])[0].png.startswith(b"\x89PNG")
