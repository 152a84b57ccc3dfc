"""One no-shared-disk cluster (``harness.py``) for the tests of tests/cluster/ (one module),
started on first use and stopped when the module ends — not at the end of the session: in the plain
run, tests/cluster/ comes first and an idle 3-node cluster would otherwise sit through the rest of
the suite. The tests skip with the reason when the machine cannot run it (not root, no
``unshare``, no moto).

They run in the plain `python -m pytest -q` (CI) wherever the machine can run them; `-m "not
cluster"` deselects them, `python -m pytest -q -m cluster tests/cluster` runs only them.
"""

from __future__ import annotations

import pytest
from harness import can_run, shared_storage, start_cluster, stop_cluster
from jobdir import make_job_dir


@pytest.fixture(scope="module")
def cluster(request):
    why = can_run()
    if why:
        pytest.skip(why)
    import ray

    ray.shutdown()  # the session's local Ray (tests/conftest.py's ray_local), idle from here on
    s3 = shared_storage(request.getfixturevalue("s3_server"))
    c = start_cluster(s3)
    try:
        yield c
    finally:
        stop_cluster(c)


@pytest.fixture(scope="module")
def job_dir(cluster):
    return make_job_dir(cluster.root / "job", cluster.root / "hf")


@pytest.fixture(autouse=True)
def _workers_alive(request):
    """A worker node a test removed is started again (empty) before the next test needs it."""
    if "cluster" in request.fixturenames:
        request.getfixturevalue("cluster").restore_workers()
