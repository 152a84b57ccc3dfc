"""``raysynth run`` without an address starts its own local Ray: a stale cluster address file
(``ray_current_cluster``, left by a head that died uncleanly) pointing at a dead address must not
make it join — or hang on — that address."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import ray
from raysynth.cli import _connect_ray
_connect_ray(None)
print("GCS", ray.get_runtime_context().gcs_address, flush=True)
ray.shutdown()
"""


def test_a_stale_cluster_file_does_not_hang_the_run():
    tmp = Path(tempfile.mkdtemp(prefix="rs-stale-", dir="/tmp"))  # short: Ray's socket paths
    try:
        (tmp / "ray").mkdir()  # Ray's temp dir under RAY_TMPDIR, where ray.init() looks
        (tmp / "ray" / "ray_current_cluster").write_text("127.0.0.1:9\n")  # nothing listens
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env.update(RAY_TMPDIR=str(tmp), PYTHONPATH=os.getcwd())
        for _ in range(2):  # once more only when Ray's fixed 30 s raylet wait ran out (load)
            out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True,
                                 text=True, timeout=180)  # the old code hangs here: fails
            if "timed out during startup" not in out.stderr:
                break
        assert out.returncode == 0, out.stderr[-2000:]
        (line,) = [x for x in out.stdout.splitlines() if x.startswith("GCS")]
        assert not line.endswith(":9")  # its own Ray, not the dead address
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
