"""Each driver-side stage runs on the threads it is configured for and restores the previous
count (issue 17); pools fit the free resources; the progress counters' lines."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from raysynth.config.schema import Resources
from raysynth.devices import cores, threads_for, torch_threads
from raysynth.generate.pixel import PixelDiffusionConfig
from raysynth.generate.pixel_training import train_pixel_model
from raysynth.progress import counter
from raysynth.ray_data import fit_pool


@pytest.fixture
def one_thread():
    """The driver as a stage that set one thread (the real-split classifier's loop) left it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_torch_threads_sets_and_restores_even_on_error(one_thread):
    with torch_threads(3) as n:
        assert n == 3 and torch.get_num_threads() == 3
    assert torch.get_num_threads() == 1
    with pytest.raises(RuntimeError), torch_threads(2):
        raise RuntimeError("stage failed")
    assert torch.get_num_threads() == 1
    assert threads_for(0) == cores() >= 1 and threads_for(5) == 5


@pytest.mark.parametrize("threads", [0, 2])
def test_pixel_model_trains_on_the_configured_threads(one_thread, threads):
    """Fails when the pixel model trains on the thread count a previous stage left (1)."""
    cfg = PixelDiffusionConfig(image_size=8, in_channels=1, num_classes=2, block_out_channels=(8, 16),
                               train_steps=3, batch_size=4)
    x = np.random.default_rng(0).random((6, 1, 8, 8), np.float32)
    seen: list[int] = []
    train_pixel_model(x, np.array([0, 1] * 3), cfg, on_step=lambda s, loss: seen.append(
        torch.get_num_threads()), device="cpu", threads=threads)
    assert seen == [threads or cores()] * 3
    assert torch.get_num_threads() == 1  # restored for whatever comes next


def test_fit_pool_sizes_from_the_free_resources():
    gen = Resources(min_actors=1, max_actors=4, cpus_per_actor=1.0)
    assert fit_pool(gen, {"CPU": 2.0, "GPU": 0.0}).max_actors == 2  # what fits
    assert fit_pool(gen, {"CPU": 9.0, "GPU": 0.0}).max_actors == 4  # never above the config
    one = Resources(min_actors=1, max_actors=1, cpus_per_actor=1.0)
    assert fit_pool(one, {"CPU": 2.0, "GPU": 0.0}) == one  # fits: unchanged
    # 2-CPU head, the job's driver and an earlier pool hold 1.5: the actor asks for what is free
    squeezed = fit_pool(one, {"CPU": 0.5, "GPU": 0.0})
    assert (squeezed.min_actors, squeezed.max_actors, squeezed.cpus_per_actor) == (1, 1, 0.5)
    assert fit_pool(one, {"CPU": 0.0, "GPU": 0.0}).cpus_per_actor == 0.0
    two = Resources(min_actors=2, max_actors=2, cpus_per_actor=1.0)
    assert fit_pool(two, {"CPU": 1.0, "GPU": 0.0}).cpus_per_actor == 0.5
    gpu = Resources(min_actors=1, max_actors=4, cpus_per_actor=1.0, gpus_per_actor=0.5)
    assert fit_pool(gpu, {"CPU": 8.0, "GPU": 1.0}).max_actors == 2  # GPUs bound it too
    assert fit_pool(Resources(cpus_per_actor=0.5, min_actors=1, max_actors=3),
                    {"CPU": 1.0, "GPU": 0.0}).max_actors == 2


def test_counter_writes_a_line_per_step_with_count_and_eta(monkeypatch, caplog):
    monkeypatch.setenv("RAYSYNTH_PROGRESS", "lines")
    caplog.set_level(logging.INFO, "raysynth.progress")
    with counter("search", 3, "trials") as c:
        c.update(1, best=0.5)
        c.update(1, best=0.75)
        c.update(1)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines  # one per trial, none extra at the end
    assert lines[0].startswith("  search: 1/3 trials, best 0.500 (") and "ETA" in lines[0]
    assert lines[2].startswith("  search: 3/3 trials, best 0.750 (") and "ETA" not in lines[2]
    caplog.clear()
    with counter("pixel model", 1200, "steps", log_every=500) as c:
        for _ in range(1200):
            c.update(1)
    counts = [r.getMessage().split(":")[1].split()[0] for r in caplog.records]
    assert counts == ["500/1200", "1000/1200", "1200/1200"]
