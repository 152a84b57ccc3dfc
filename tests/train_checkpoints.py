"""What Ray Train has registered in a run's ``train/<run>/`` folder, for the tests that stop a
driver in the middle of a final training run (tests/e2e/test_stress_resume.py on a local Ray,
tests/cluster/test_no_shared_disk.py on the no-shared-disk cluster)."""

from __future__ import annotations

import json
from collections.abc import Callable, Collection

SNAPSHOT = "checkpoint_manager_snapshot.json"


def registered(keys: Collection[str], read: Callable[[str], bytes]) -> str | None:
    """The newest checkpoint Ray Train's controller has registered for one training run (its
    snapshot, what a new run of the same name resumes from): its folder name, when that holds a
    training state (not the metrics-only checkpoint of the last report). ``keys``: the objects
    under the run's folder, relative to it; ``read(key)``: one of them. A checkpoint put in
    storage but not yet registered when the driver dies is not one Ray Train resumes from."""
    if SNAPSHOT not in keys:
        return None
    snapshot = json.loads(read(SNAPSHOT))
    folder = (snapshot.get("latest_checkpoint_result") or {}).get("checkpoint_dir_name")
    return folder if folder and f"{folder}/state.json" in keys else None
