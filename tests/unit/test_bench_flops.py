"""The GPU bench's FLOP accounting, checked without a GPU: the SD-1.5-sized UNet the bench builds
costs what SD 1.5 costs per forward at 512 px (≈ 0.8 TFLOP), and the count scales as it must."""

import pytest

from raysynth.bench.flops import unet_tflop, unet_tflop_per_forward
from raysynth.bench.tiny_sd import SD15_UNET, save_small_sd


def test_sd15_sized_unet_costs_about_0_8_tflop_per_forward():
    tflop = unet_tflop(SD15_UNET)
    assert 0.6 < tflop < 1.0
    # convolutions dominate: a quarter of the pixels, about a quarter of the FLOPs
    half = unet_tflop({**SD15_UNET, "sample_size": SD15_UNET["sample_size"] // 2})
    assert 0.2 < half / tflop < 0.3


def test_flop_count_of_a_saved_pipeline_reads_its_unet_config(tmp_path):
    folder = save_small_sd(tmp_path / "sd")
    from diffusers import UNet2DConditionModel

    config = dict(UNet2DConditionModel.load_config(folder, subfolder="unet"))
    assert unet_tflop_per_forward(folder) == pytest.approx(unet_tflop(config))
    assert 0 < unet_tflop_per_forward(folder) < 1e-3  # a tiny model: well under a GFLOP
