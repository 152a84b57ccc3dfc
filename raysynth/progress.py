"""Progress a person can follow: one counter per step of a stage (pixel-model steps, images of a
synthesis round, search trials, final runs) with its count, extra figures (accepted, best so far)
and the time left.

On a terminal (stderr is a TTY) a counter is a live ``tqdm`` bar that stays on screen when done;
anywhere else (``ray job logs``, a file, CI) it is a concise log line every ``log_every`` counts
and one when it is closed (with the final figures), so a non-interactive log gets a line per meaningful step, not a redraw.
``RAYSYNTH_PROGRESS=bars|lines`` overrides the choice. Stage modules call :func:`counter`; the
stage lines (``[i/n] name``) and their timings stay with ``flows.job.Progress``.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger("raysynth.progress")

ENV = "RAYSYNTH_PROGRESS"


def live() -> bool:
    """Whether counters draw bars (a terminal) or write log lines."""
    mode = os.environ.get(ENV, "")
    if mode in ("bars", "lines"):
        return mode == "bars"
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def _fixed_size() -> dict[str, Any]:
    """tqdm's size arguments: follow the terminal, or 100 x 20 when it reports no size (a fresh
    pseudo-terminal is 0 x 0, and tqdm then draws nothing)."""
    try:
        size = os.get_terminal_size(sys.stderr.fileno())
        if size.columns > 0 and size.lines > 0:
            return {"dynamic_ncols": True}
    except (OSError, ValueError, AttributeError):
        pass
    return {"ncols": 100, "nrows": 20}


def _fmt(fields: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items())


class Counter:
    """``done`` of ``total`` ``unit``s of one step, with named figures (``accepted=…``)."""

    def __init__(self, desc: str, total: int, unit: str, log_every: int = 1, start: int = 0
                 ) -> None:
        self.desc, self.total, self.unit = desc, int(total), unit
        self.log_every = max(1, int(log_every))
        self.done = self.start = int(start)  # counted before this process (a resumed run)
        self.fields: dict[str, Any] = {}
        self.t0 = time.perf_counter()
        self._logged = self.done
        self._bar = None
        if live():
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, initial=self.done, desc=desc, unit=unit, file=sys.stderr,
                             mininterval=0.5, leave=True, **_fixed_size())

    def update(self, n: int = 1, **fields: Any) -> None:
        """``n`` more done; ``fields`` replace the figures shown beside the count."""
        self.done += int(n)
        self.fields.update(fields)
        if self._bar is not None:
            if fields:
                self._bar.set_postfix_str(_fmt(self.fields), refresh=False)
            self._bar.update(int(n))
        elif self.done - self._logged >= self.log_every and self.done < self.total:
            self._line()  # the last line, with the final figures, is close()'s

    def eta(self) -> float | None:
        """Seconds left at the rate so far (None before the first count)."""
        if self.done <= self.start:
            return None
        elapsed = time.perf_counter() - self.t0
        return max(0.0, elapsed / (self.done - self.start) * (self.total - self.done))

    def _line(self) -> None:
        self._logged = self.done
        elapsed = time.perf_counter() - self.t0
        eta = self.eta()
        extra = f", {_fmt(self.fields)}" if self.fields else ""
        left = f", ETA {eta:.0f} s" if eta is not None and self.done < self.total else ""
        log.info("  %s: %d/%d %s%s (%.0f s%s)", self.desc, self.done, self.total, self.unit,
                 extra, elapsed, left)

    def close(self) -> None:
        if self._bar is not None:
            if self.fields:
                self._bar.set_postfix_str(_fmt(self.fields), refresh=False)
            self._bar.close()
            self._bar = None
        else:
            self._line()


@contextmanager
def counter(desc: str, total: int, unit: str, log_every: int = 1) -> Iterator[Counter]:
    """A :class:`Counter` for the block, closed (its last line written) at the end."""
    c = Counter(desc, total, unit, log_every)
    try:
        yield c
    finally:
        c.close()


# Ray's own progress and INFO lines (Ray Data's progress dumps, Train's "Reported metrics", Tune's
# status tables): off unless the CLI's --verbose turns them on (set_verbose).
_VERBOSE = {"on": False}


def set_verbose(on: bool) -> None:
    _VERBOSE["on"] = bool(on)


def verbose() -> bool:
    """Whether Ray's own progress output is wanted (``--verbose``)."""
    return _VERBOSE["on"]
