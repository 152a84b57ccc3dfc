"""The pixel diffusion generator: seeded training, save/load via from_pretrained, cache, sampling."""

import json

import numpy as np
import pytest
import torch
from tiny_models import bar_digits

from raysynth.errors import ConfigError, DataError, RunDirError
from raysynth.generate.pixel import (
    META_FILE,
    PixelDiffusionConfig,
    load_pixel_model,
    save_pixel_model,
)
from raysynth.generate.pixel_training import cache_key, load_or_train, train_pixel_model
from raysynth.generate.sampling import sample_pixel

TINY = PixelDiffusionConfig(
    image_size=8,
    in_channels=1,
    num_classes=3,
    block_out_channels=(4, 8),
    layers_per_block=1,
    norm_num_groups=4,
    train_steps=3,
    batch_size=8,
    seed=3,
)


_digits = bar_digits


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    x, y = _digits()
    unet, sched_cfg = train_pixel_model(x, y, TINY, device="cpu")
    folder = tmp_path_factory.mktemp("pixel") / "model"
    save_pixel_model(folder, unet, sched_cfg, TINY, ["a", "b", "c"])
    return unet, sched_cfg, folder


def test_training_is_seeded():
    x, y = _digits()
    a, _ = train_pixel_model(x, y, TINY, device="cpu")
    b, _ = train_pixel_model(x, y, TINY, device="cpu")
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    c, _ = train_pixel_model(x, y, PixelDiffusionConfig(**{**TINY.to_dict(), "seed": 4}))
    assert not torch.equal(sa["conv_in.weight"], c.state_dict()["conv_in.weight"])


def test_model_has_a_null_class_and_the_loss_is_reported_per_step():
    x, y = _digits()
    losses = []
    unet, sched_cfg = train_pixel_model(x, y, TINY, on_step=lambda s, v: losses.append((s, v)))
    assert unet.config.num_class_embeds == TINY.num_classes + 1
    assert [s for s, _ in losses] == [0, 1, 2]
    assert all(np.isfinite(v) and v > 0 for _, v in losses)
    assert sched_cfg["prediction_type"] == "epsilon"
    assert sched_cfg["timestep_spacing"] == "trailing"


def test_save_load_round_trip(trained):
    unet, sched_cfg, folder = trained
    assert (folder / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert (folder / "scheduler" / "scheduler_config.json").is_file()
    assert json.loads((folder / META_FILE).read_text())["class_names"] == ["a", "b", "c"]
    loaded = load_pixel_model(folder, "cpu", torch.float32)
    assert loaded.config == TINY
    assert loaded.class_names == ["a", "b", "c"]
    assert loaded.scheduler_config["prediction_type"] == "epsilon"
    ref = unet.state_dict()
    assert all(torch.equal(ref[k], v) for k, v in loaded.unet.state_dict().items())
    kw = {"labels": [0, 2], "seeds": [5, 6], "num_steps": 4}
    a, _ = sample_pixel(unet, sched_cfg, **kw)
    b, _ = sample_pixel(loaded.unet, loaded.scheduler_config, **kw)
    assert np.array_equal(a, b)


def test_same_seed_gives_the_same_image_whatever_the_batch(trained):
    unet, sched_cfg, _ = trained
    images, crit = sample_pixel(unet, sched_cfg, [0, 1, 2], [11, 12, 13], num_steps=5)
    assert images.shape == (3, 8, 8, 1) and images.dtype == np.uint8
    assert crit is None
    again, _ = sample_pixel(unet, sched_cfg, [0, 1, 2], [11, 12, 13], num_steps=5)
    assert np.array_equal(images, again)
    other_batch, _ = sample_pixel(unet, sched_cfg, [2, 1, 0], [13, 99, 11], num_steps=5)
    assert np.array_equal(other_batch[0], images[2])
    assert np.array_equal(other_batch[2], images[0])
    single, _ = sample_pixel(unet, sched_cfg, [1], [12], num_steps=5)
    assert np.array_equal(single[0], images[1])


def test_negative_labels_and_eta_keep_images_batch_independent(trained):
    unet, sched_cfg, _ = trained
    kw = {"num_steps": 4, "guidance_scale": 3.0, "eta": 1.0}
    pair, _ = sample_pixel(unet, sched_cfg, [0, 1], [1, 2], negative_labels=[2, None], **kw)
    one, _ = sample_pixel(unet, sched_cfg, [1], [2], negative_labels=[None], **kw)
    assert np.array_equal(pair[1], one[0])
    plain, _ = sample_pixel(unet, sched_cfg, [0], [1], num_steps=4, guidance_scale=3.0, eta=1.0)
    assert not np.array_equal(pair[0], plain[0])  # the negative class changed image 0


def test_different_seeds_give_different_images(trained):
    unet, sched_cfg, _ = trained
    images, _ = sample_pixel(unet, sched_cfg, [0, 0], [1, 2], num_steps=4)
    assert not np.array_equal(images[0], images[1])


def test_v_prediction_round_trips_through_the_saved_scheduler(tmp_path):
    x, y = _digits()
    cfg = PixelDiffusionConfig(**{**TINY.to_dict(), "prediction_type": "v_prediction"})
    unet, sched_cfg = train_pixel_model(x, y, cfg)
    save_pixel_model(tmp_path / "m", unet, sched_cfg, cfg)
    loaded = load_pixel_model(tmp_path / "m")
    assert loaded.scheduler_config["prediction_type"] == "v_prediction"
    images, _ = sample_pixel(loaded.unet, loaded.scheduler_config, [1], [0], num_steps=3)
    assert images.shape == (1, 8, 8, 1)


def test_cache_key_follows_data_and_config():
    x, y = _digits()
    key = cache_key(x, y, TINY)
    assert key == cache_key(x.copy(), y.copy(), TINY)
    x2 = x.copy()
    x2[0, 0, 0, 0] += 0.01
    y2 = y.copy()
    y2[0] = 1
    others = {
        cache_key(x2, y, TINY),
        cache_key(x, y2, TINY),
        cache_key(x, y, PixelDiffusionConfig(**{**TINY.to_dict(), "train_steps": 4})),
        cache_key(x, y, PixelDiffusionConfig(**{**TINY.to_dict(), "seed": 0})),
    }
    assert len(others) == 4 and key not in others


def test_load_or_train_reuses_the_cache(tmp_path):
    x, y = _digits()
    steps = []
    folder = load_or_train(tmp_path / "generator", x, y, TINY, on_step=lambda s, v: steps.append(s))
    assert folder == tmp_path / "generator" / cache_key(x, y, TINY)
    assert len(steps) == TINY.train_steps
    assert sorted(p.name for p in (tmp_path / "generator").iterdir()) == [folder.name]  # no temp
    again = load_or_train(tmp_path / "generator", x, y, TINY, on_step=lambda s, v: steps.append(s))
    assert again == folder and len(steps) == TINY.train_steps  # not trained again
    (folder / META_FILE).unlink()  # an incomplete folder is replaced, not trusted
    load_or_train(tmp_path / "generator", x, y, TINY, on_step=lambda s, v: steps.append(s))
    assert len(steps) == 2 * TINY.train_steps
    assert load_pixel_model(folder).config == TINY


def test_missing_model_folder_says_what_was_tried(tmp_path):
    with pytest.raises(RunDirError, match="load_or_train") as err:
        load_pixel_model(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(err.value)


def test_bad_inputs_are_clear_errors(trained):
    unet, sched_cfg, _ = trained
    x, y = _digits()
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        train_pixel_model(x * 2, y, TINY)
    with pytest.raises(DataError, match="labels"):
        train_pixel_model(x, y + 3, TINY)
    with pytest.raises(ConfigError, match="norm_num_groups"):
        PixelDiffusionConfig(block_out_channels=(6, 8), norm_num_groups=4)
    with pytest.raises(ConfigError, match="prediction_type"):
        PixelDiffusionConfig(prediction_type="x0")
    with pytest.raises(ConfigError, match="seed per image"):
        sample_pixel(unet, sched_cfg, [0, 1], [1])
    with pytest.raises(ConfigError, match="outside"):
        sample_pixel(unet, sched_cfg, [3], [1])
