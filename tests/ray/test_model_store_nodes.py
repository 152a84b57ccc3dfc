"""A model placed only in the driver's Hugging Face cache reaches Ray workers whose caches are
empty, through the model store: each "node" is a worker with its own HF_HOME (runtime_env), all
offline (HF_HUB_OFFLINE=1), as nodes that share no disk with the driver. Each builds the product's
generator from the driver's spec — copying the store once, then nothing — and loads the pipeline
(saved in float32) in the configured bfloat16."""

from __future__ import annotations

from tiny_models import hub_cached_sd

from raysynth.config.schema import FeedbackConfig, GeneratorConfig
from raysynth.generate.generators import GeneratorSpec

HUB_ID = "raysynth-tests/tiny-sd-nodes"
COMMIT = "fedcba9876543210fedcba9876543210fedcba98"


def test_a_driver_cached_model_reaches_workers_with_empty_caches(ray_local, tmp_path, monkeypatch):
    import huggingface_hub.constants as c

    from raysynth.generate.model_source import resolve_model
    from raysynth.generate.model_store import publish

    dtype = "bfloat16"  # float16 loads are tested in tests/unit/test_model_store.py
    driver = tmp_path / "driver-hf"
    hub_cached_sd(driver, HUB_ID, COMMIT)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(driver / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ref = publish(HUB_ID, resolve_model(HUB_ID), str(tmp_path / "store"))  # the driver, once
    g = GeneratorConfig(kind="text2image", model=HUB_ID, dtype=dtype, device="cpu", num_steps=2,
                        image_size=16)
    spec = GeneratorSpec(g, FeedbackConfig(), ["cat"], model_ref=ref, batch_size=1)

    def build_on_node(spec: GeneratorSpec) -> dict:
        """In a Ray worker: this node's copy of the model, then the generator built from it."""
        import os

        import torch

        from raysynth.generate.factory import build_generator
        from raysynth.generate.model_store import local_copy

        folder, copied_before = local_copy(spec.model_ref)  # what the generator's load will find
        gen = build_generator(spec)
        row = {"sample_id": "s0", "label": 0, "class_name": "cat", "prompt": "a cat",
               "negative_prompt": "", "seed": 1, "round": 0, "cond_id": "", "index": 0}
        png = gen.generate([row])[0].png
        return {
            "hf_home": os.environ["HF_HOME"], "folder": str(folder), "copied": copied_before,
            "copied_again": local_copy(spec.model_ref)[1],
            "unet_dtype": str(gen.sampler.pipe.unet.dtype), "device": str(gen.sampler.device),
            "png": png[:8], "pid": os.getpid(), "threads": torch.get_num_threads(),
        }

    task = ray_local.remote(build_on_node)
    results = [
        ray_local.get(task.options(runtime_env={"env_vars": {
            "HF_HOME": str(tmp_path / node), "HF_HUB_OFFLINE": "1",
            "RAYSYNTH_MODEL_CACHE": "",
        }}).remote(spec), timeout=300)
        for node in ("node-a", "node-b")
    ]
    for node, r in zip(("node-a", "node-b"), results, strict=True):
        assert r["hf_home"] == str(tmp_path / node)
        assert r["folder"] == str(tmp_path / node / "raysynth-models" / ref.key / COMMIT)
        assert r["copied"] == sum(size for _rel, size in ref.files) > 0  # from the store, once
        assert r["copied_again"] == 0
        assert r["unet_dtype"] == f"torch.{dtype}" and r["device"] == "cpu"
        assert r["png"].startswith(b"\x89PNG")
    assert not (tmp_path / "node-a" / "hub").exists()  # the hub was never asked
