"""``run.log`` on an object store, where a file cannot be appended to: the handler keeps the log's
text (what the object held when it was attached, then every record) and puts the whole object
again, at most every few seconds and on close. A reader sees a complete earlier log or the newer
one; a crash loses at most the last seconds of records."""

from __future__ import annotations

import logging
import time

from raysynth.files import atomic_write_text
from raysynth.storage import RemotePath


class ObjectLogHandler(logging.Handler):
    def __init__(self, path: RemotePath, every_s: float = 5.0) -> None:
        super().__init__()
        self.path, self.every_s = path, every_s
        try:
            self._lines = [path.read_text()] if path.is_file() else []
        except OSError:
            self._lines = []
        self._last = 0.0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._lines.append(self.format(record) + "\n")
        except Exception:  # noqa: BLE001 - logging must not raise
            self.handleError(record)
            return
        if time.monotonic() - self._last >= self.every_s or record.levelno >= logging.WARNING:
            self.flush()

    def flush(self) -> None:
        self.acquire()
        try:
            atomic_write_text(self.path, "".join(self._lines))
            self._last = time.monotonic()
        except OSError:
            pass  # the store is unreachable: the next flush writes everything again
        finally:
            self.release()

    def close(self) -> None:
        self.flush()
        super().close()
