"""One no-shared-disk cluster (``harness.py``) for every test of tests/cluster/, started on first
use and stopped at the end of the session; the tests skip with the reason when the machine cannot
run it (not root, no ``unshare``, no moto)."""

from __future__ import annotations

import pytest
from harness import can_run, start_cluster, stop_cluster


@pytest.fixture(scope="session")
def cluster():
    why = can_run()
    if why:
        pytest.skip(why)
    c = start_cluster()
    try:
        yield c
    finally:
        stop_cluster(c)
