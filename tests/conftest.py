"""Shared fixtures. Tiers: unit (no Ray), ray (local Ray, 2 CPUs), e2e (the CLI), gpu (CUDA)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "0")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI sets it (raysynth/cli.py)


@pytest.fixture(scope="session")
def _ray_session():
    """Shuts down whatever Ray instance the session left connected."""
    yield
    import ray

    ray.shutdown()


@pytest.fixture
def ray_local(_ray_session):
    """A local Ray instance with 2 CPUs for the tests that need one.

    Started on first use and kept for the session; started again when a module that runs its
    own cluster (tests/ray/test_multinode.py shuts this one down first) has disconnected it, so
    the tests pass in any order.
    """
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    return ray


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
