"""Shared fixtures. Tiers: unit (no Ray), ray (local Ray, 2 CPUs), e2e (the CLI), gpu (CUDA),
cluster (a 3-node Ray cluster whose nodes share no disk, tests/cluster/: in the plain run where the
machine can run it, `-m "not cluster"` to leave it out)."""

from __future__ import annotations

import itertools
import os

import pytest

os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "0")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # the suite shares 2 cores with Ray workers


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


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible server (moto's) on a free loopback port, for the session; pyarrow's
    S3 filesystem reaches it through the standard environment variables (set for the session)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true"}
    import boto3

    boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                 aws_access_key_id="test", aws_secret_access_key="test").create_bucket(
        Bucket="raysynth-test")
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        yield env
    server.stop()


@pytest.fixture
def s3_root(s3_server, request):
    """A fresh, empty folder ``s3://raysynth-test/<test>-<n>`` on the session's S3 server."""
    from raysynth.storage import path

    n = next(_S3_COUNTER)
    name = "".join(c if c.isalnum() else "-" for c in request.node.name)[:60]
    return path(f"s3://raysynth-test/{name}-{n}")


_S3_COUNTER = itertools.count()


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
