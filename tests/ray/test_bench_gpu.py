"""``raysynth bench gpu --smoke``: every section of the GPU bench runs on the CPU with tiny models
(the code path CI keeps working; the figures of a real GPU come from ``raysynth bench gpu``)."""

from __future__ import annotations

import json

import pytest
from tiny_models import one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def test_bench_gpu_smoke_writes_every_section(ray_local, tmp_path):
    from raysynth.bench import gpu

    out = tmp_path / "bench-gpu.json"
    result = gpu.run(out=str(out), smoke=True)
    assert json.loads(out.read_text()) == json.loads(json.dumps(result, default=str))
    assert result["device"] == "cpu" and result["smoke"] is True
    runs = result["unet"]["runs"]
    assert [r["batch"] for r in runs] == list(gpu.SMOKE["batches"])
    assert all(r["images_per_s"] > 0 and r["tflops"] > 0 for r in runs)
    assert result["unet"]["tflop_per_forward"] > 0 and result["unet"]["peak_tflops"] is None
    assert 0 < result["vae_decode_share"] < 1
    g = result["guidance"]
    assert g["guided_s"] > 0 and g["ratio"] == pytest.approx(g["guided_s"] / g["unguided_s"])
    assert result["clip_image_tower_images_per_s"] > 0 and result["lora_step_s"] > 0
    r = result["ray_vs_plain"]
    assert r["ray_images_per_s"] > 0 and r["plain_images_per_s"] > 0 and r["ratio"] > 0


def test_peak_table_matches_device_names():
    from raysynth.bench.gpu import peak_tflops

    assert peak_tflops("NVIDIA H200") == 989.0
    assert peak_tflops("NVIDIA A10G") == 70.0 and peak_tflops("NVIDIA A10") == 125.0
    assert peak_tflops("NVIDIA L40S") == 362.0 and peak_tflops("NVIDIA L4") == 121.0
    assert peak_tflops("Some GPU") is None
