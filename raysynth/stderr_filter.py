"""Ray's known noise on the driver's standard error, left out without ``--verbose``.

Ray's C++ core worker writes some lines straight to file descriptor 2, past Python's logging,
so no logger level reaches them. The one a raysynth run meets is the error-level

    core_worker.cc:NNNN: Actor with class name: 'MapWorker(…)' … has constructor arguments in the
    object store and max_restarts > 0. If the arguments … are lost, the actor restart will fail.
    See https://github.com/ray-project/ray/issues/53727 …

which every Ray Data actor pool's creation prints once per process: Ray Data hands each pool's
callable class over by reference and keeps that reference for as long as the dataset runs, so
the restart it warns about works (raysynth's own kill tests restart such actors). It reads like a
failure to a user who has done nothing wrong.

:func:`install` puts a pipe (on a terminal: a pseudo-terminal) in front of descriptor 2: a thread copies every line through to the
real standard error except those lines (:data:`NOISE`). Called after ``ray.init`` (processes Ray
starts then keep the real descriptor); :func:`uninstall` (also at exit) puts it back and flushes.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import re
import sys
import termios
import threading
import tty
from typing import Any

NOISE = (re.compile(rb"core_worker\.cc:\d+: Actor .*has constructor arguments in the object store"),)

_installed: list[tuple[int, threading.Thread]] = []  # (the real descriptor 2, the copier)


def is_noise(line: bytes) -> bool:
    return any(p.search(line) for p in NOISE)


def install() -> None:
    """Filter descriptor 2 of this process from now on (once; no-op when already filtering).
    On a terminal the filter is a pseudo-terminal of the same size in raw mode, so the process
    still writes to a terminal (its progress bars stay live bars) and bytes pass unchanged."""
    if _installed:
        return
    sys.stderr.flush()
    real = os.dup(2)
    if os.isatty(real):
        read, write = os.openpty()
        tty.setraw(write)
        with contextlib.suppress(OSError):
            size = fcntl.ioctl(real, termios.TIOCGWINSZ, b"\0" * 8)
            fcntl.ioctl(write, termios.TIOCSWINSZ, size)
    else:
        read, write = os.pipe()
    os.dup2(write, 2)
    os.close(write)
    thread = threading.Thread(target=_copy, args=(read, real), name="stderr-filter", daemon=True)
    thread.start()
    _installed.append((real, thread))
    atexit.register(uninstall)


def uninstall() -> None:
    """Give descriptor 2 back to the real standard error once every line before has passed."""
    if not _installed:
        return
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.flush()
    real, thread = _installed.pop()
    os.dup2(real, 2)  # closes the pipe's last write end: the thread sees EOF
    thread.join(timeout=5)
    if not thread.is_alive():  # else a child still holds the pipe: the copier keeps its target
        os.close(real)


def _copy(read: int, real: int) -> None:
    held = b""  # the start of a line that may be Ray's (its C++ lines begin "[")
    with os.fdopen(read, "rb", buffering=0) as pipe:
        while chunk := _read(pipe):
            *lines, held = (held + chunk).split(b"\n")
            out = b"".join(line + b"\n" for line in lines if not is_noise(line))
            if held and not held.startswith(b"["):  # a bar redrawn in place, a prompt: now
                out, held = out + held, b""
            _write(real, out)
    if not is_noise(held):
        _write(real, held)


def _read(pipe: Any) -> bytes:
    try:
        return pipe.read(65536)
    except OSError:  # EIO: a pseudo-terminal's last writer closed it
        return b""


def _write(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]
