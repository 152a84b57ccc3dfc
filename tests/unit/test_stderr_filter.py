"""Ray's known C++ noise on descriptor 2 is left out of a run's standard error (issue 17); every
other byte passes, in order, bars redrawn in place at once and a last line without a newline."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RAY_LINE = (b"[2026-12-04 12:00:00,000 E 71 71] core_worker.cc:2465: Actor with class name: "
            b"'MapWorker(MapBatches(Generate))' and ID: 'ab12' has constructor arguments in the "
            b"object store and max_restarts > 0. If the arguments in the object store go out of "
            b"scope or are lost, the actor restart will fail. See "
            b"https://github.com/ray-project/ray/issues/53727 for more details.\n")
CHILD = f"""
import os, sys, time
from raysynth import stderr_filter
stderr_filter.install()
os.write(2, b"before\\n" + {RAY_LINE!r})
sys.stderr.write("\\rbar 1/2"); sys.stderr.flush()
time.sleep(0.5)
print("bar drawn", flush=True)  # stdout: written once the bar's first draw is on stderr
sys.stderr.write("\\rbar 2/2\\n")
os.write(2, b"[2026 E 1 1] raylet.cc:9: another error\\n" + {RAY_LINE[:60]!r})
os.write(2, {RAY_LINE[60:]!r} + b"last, no newline")
"""


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60,
                          cwd=ROOT, env={"PYTHONPATH": str(ROOT)})


def test_ray_constructor_argument_line_is_dropped_and_the_rest_passes_in_order():
    out = _run(CHILD)
    assert out.returncode == 0, out.stderr
    assert out.stderr == (b"before\n\rbar 1/2\rbar 2/2\n[2026 E 1 1] raylet.cc:9: another "
                          b"error\nlast, no newline")
    assert out.stdout == b"bar drawn\n"


def test_without_the_filter_the_line_reaches_stderr():
    out = _run(CHILD.replace("stderr_filter.install()", ""))
    assert out.stderr.count(b"constructor arguments in the object store") == 2

