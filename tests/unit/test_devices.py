"""Devices: a process Ray gave a GPU uses it or fails naming the cause; training that asks for a
GPU never silently runs on a GPU-less driver; CPU actors limit torch's threads to their CPUs."""

from __future__ import annotations

import pytest
import torch

from raysynth.config.schema import ScalingConfig
from raysynth.devices import cuda_problem, limit_threads, resolve_device
from raysynth.errors import ConfigError
from raysynth.train.session import workers

NO_CUDA = not torch.cuda.is_available()


@pytest.mark.skipif(not NO_CUDA, reason="checks the no-CUDA causes")
def test_a_process_given_a_gpu_without_cuda_fails_naming_the_cause():
    cause = cuda_problem()
    assert cause and ("CPU-only build" in cause or "no CUDA device is usable" in cause)
    with pytest.raises(ConfigError) as e:
        resolve_device("auto", "synthesis.generator.device", gpus=0.5)
    msg = str(e.value)
    assert "was given 0.5 GPU(s)" in msg and cause in msg
    assert "set synthesis.generator.device=cpu" in msg
    with pytest.raises(ConfigError, match="filter.device=cuda: CUDA is not usable"):
        resolve_device("cuda", "filter.device")
    assert resolve_device("auto", gpus=0) == torch.device("cpu")  # no GPU asked: the CPU
    assert resolve_device("cpu", gpus=1) == torch.device("cpu")  # explicitly the CPU


def test_cpu_only_torch_is_named(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    assert "CPU-only build" in cuda_problem()


@pytest.mark.skipif(not NO_CUDA, reason="the driver here has no GPU")
def test_gpu_training_on_a_gpu_less_driver_runs_on_one_ray_train_worker():
    assert workers(ScalingConfig(use_gpu=True, num_workers=0)) == 1
    assert workers(ScalingConfig(use_gpu=False, num_workers=0)) == 0
    assert workers(ScalingConfig(use_gpu=True, num_workers=3)) == 3


def test_cpu_actors_use_as_many_threads_as_cpus():
    before = torch.get_num_threads()
    try:
        limit_threads("cpu", 0.5)
        assert torch.get_num_threads() == 1
        limit_threads("cpu", 2)
        assert torch.get_num_threads() == 2
        limit_threads("cuda", 7)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(not NO_CUDA, reason="checks the no-CUDA causes")
def test_air_zero_shot_actors_given_a_gpu_fail_loudly_not_on_the_cpu():
    """The AiR zero-shot CLIP pool runs on ``filter.pool``: an actor that pool gives a GPU must
    use it or name the cause (its spec used to carry a zero-GPU pool and fall back silently)."""
    from raysynth.config import build_config
    from raysynth.filter.stage import _build
    from raysynth.flows.air import zero_shot_spec

    cfg = build_config(overrides={"flow": "air", "filter.pool.gpus_per_actor": 1})
    spec = zero_shot_spec(cfg, ["a", "b"])
    assert spec.embedder.filter.pool.gpus_per_actor == 1
    with pytest.raises(ConfigError, match="filter.device=auto: this process was given 1 GPU"):
        _build(spec.embedder)
