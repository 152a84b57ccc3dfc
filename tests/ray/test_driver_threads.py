"""A training loop that runs in the driver (Ray Train local mode, ``train.num_workers=0``: the
real-split classifier, the final runs) gets ``train.driver_threads`` torch threads and leaves the
driver's count as it found it (issue 17: the loop's ``torch.set_num_threads(1)`` stayed set and
the pixel model then trained on one core of two)."""

from __future__ import annotations

import sys

import ray.cloudpickle
import torch

from raysynth.config.schema import ScalingConfig
from raysynth.train.session import TrainSession, run_trainer

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def thread_loop(config: dict) -> None:
    """What the library's loops do first (``loops._threads``), then report the count."""
    if config.get("threads"):
        torch.set_num_threads(int(config["threads"]))
    TrainSession().report({"threads": torch.get_num_threads()})


def test_local_mode_loop_runs_on_the_driver_threads_and_restores_them(tmp_path):
    before = torch.get_num_threads()
    torch.set_num_threads(3)  # whatever the driver had
    try:
        # the flows pass train.cpus_per_worker (1) as the loop's threads
        metrics = run_trainer(thread_loop, {"threads": 1}, ScalingConfig(driver_threads=2),
                              "threads", tmp_path)
        assert metrics["threads"] == 2  # train.driver_threads, not the worker's 1
        assert torch.get_num_threads() == 3  # restored for the next driver stage
    finally:
        torch.set_num_threads(before)
