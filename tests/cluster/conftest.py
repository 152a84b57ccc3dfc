"""One no-shared-disk cluster (``harness.py``) for every test of tests/cluster/, started on first
use and stopped at the end of the session; the tests skip with the reason when the machine cannot
run it (not root, no ``unshare``, no moto)."""

from __future__ import annotations

import pytest
from harness import can_run, shared_storage, start_cluster, stop_cluster


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
