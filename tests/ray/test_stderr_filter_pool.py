"""Ray's own 'constructor arguments in the object store' line from a real Ray Data actor pool
(issue 17): the CLI's connection drops it without --verbose and keeps it with it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


REAL_POOL = """
import sys
import numpy as np
from raysynth import cli, ray_data
from raysynth.config.schema import Resources

class Double:
    def __call__(self, batch):
        return {"x": batch["x"] * 2}

cli._connect_ray(None, verbose=sys.argv[1] == "verbose")
import ray
ds = ray_data.map_pool(ray.data.from_items([{"x": i} for i in range(8)]), Double,
                       Resources(min_actors=1, max_actors=1, cpus_per_actor=0.5, batch_size=4))
print(sorted(int(v) for b in ray_data.iter_numpy(ds) for v in b["x"]), flush=True)
"""


def test_a_real_ray_data_pool_prints_the_line_only_with_verbose(tmp_path):
    """Ray 2.60's own line, from a real Ray Data actor pool started the CLI's way: present with
    --verbose (so the pattern is the line Ray prints), absent without."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(ROOT)
    runs = {mode: subprocess.run([sys.executable, "-c", REAL_POOL, mode], capture_output=True,
                                 timeout=300, cwd=tmp_path, env=env)
            for mode in ("verbose", "quiet")}
    for out in runs.values():
        assert out.returncode == 0, out.stderr[-3000:]
        assert out.stdout.splitlines()[-1] == b"[0, 2, 4, 6, 8, 10, 12, 14]"
    assert b"constructor arguments in the object store" in runs["verbose"].stderr
    assert b"constructor arguments in the object store" not in runs["quiet"].stderr
