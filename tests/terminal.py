"""Reading what a child process writes to a pseudo-terminal (the progress view's and the stderr
filter's terminal tests)."""

from __future__ import annotations

import os
import time


def read_terminal(master: int, timeout: float = 900) -> bytes:
    """Everything written to the pseudo-terminal whose master side is ``master`` until its last
    writer closes it (or ``timeout`` s pass); closes ``master``."""
    chunks: list[bytes] = []
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return b"".join(chunks)
