"""Ray's known C++ noise on descriptor 2 is left out of a run's standard error (issue 17); every
other byte passes, in order, bars redrawn in place at once and a last line without a newline."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from terminal import read_terminal

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



TERMINAL_CHILD = CHILD.replace(
    "stderr_filter.install()",
    "stderr_filter.install()\n"
    "print(sys.stderr.isatty(), os.get_terminal_size(2), flush=True)")


def test_on_a_terminal_the_process_still_writes_to_a_terminal_of_the_same_size():
    """A terminal's process keeps a terminal on descriptor 2 (live progress bars are drawn by
    detection, at the terminal's width), and the terminal gets the same bytes minus Ray's line."""
    import fcntl
    import os
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 111, 0, 0))
    proc = subprocess.Popen([sys.executable, "-c", TERMINAL_CHILD], stdout=subprocess.PIPE,
                            stderr=slave, cwd=ROOT, env={"PYTHONPATH": str(ROOT)})
    os.close(slave)
    written = read_terminal(master, timeout=60)
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert stdout.splitlines()[0] == b"True os.terminal_size(columns=111, lines=33)"
    # the outer terminal turns \n into \r\n as a terminal does; nothing else changes
    assert written == (b"before\r\n\rbar 1/2\rbar 2/2\r\n[2026 E 1 1] raylet.cc:9: "
                                b"another error\r\nlast, no newline")
