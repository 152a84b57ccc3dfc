"""One no-shared-disk cluster (``harness.py``) for every test of tests/cluster/, started on first
use and stopped at the end of the session; the tests skip with the reason when the machine cannot
run it (not root, no ``unshare``, no moto).

They take minutes (a 3-node Ray cluster and several full runs), more than the plain test run can
spend, so they run only when selected by marker: ``python -m pytest -q -m cluster tests/cluster``.
"""

from __future__ import annotations

import pytest
from harness import can_run, shared_storage, start_cluster, stop_cluster


def pytest_collection_modifyitems(config, items):
    if "cluster" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="starts a 3-node Ray cluster (minutes): select with -m cluster")
    for item in items:
        if item.get_closest_marker("cluster") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def cluster(request):
    why = can_run()
    if why:
        pytest.skip(why)
    s3 = shared_storage(request.getfixturevalue("s3_server"))
    c = start_cluster(s3)
    try:
        yield c
    finally:
        stop_cluster(c)
