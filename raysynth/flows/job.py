"""What every flow is handed: the run directory, the config, the real data, the progress lines,
and how far to go (``until``: the name of the last stage to run, or ``None`` for all)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from raysynth.config.schema import RunConfig
from raysynth.flows.real import RealData
from raysynth.rundir import RunDir

log = logging.getLogger("raysynth.flows")


class Progress:
    """Stage-by-stage progress lines with the overall elapsed time, and per-stage timings."""

    def __init__(self, stages: list[str]) -> None:
        self.stages = stages
        self.t0 = time.perf_counter()
        self.timings: dict[str, float] = {}
        self._current: tuple[str, float] | None = None

    def start(self, name: str) -> None:
        self.finish()
        i = self.stages.index(name) + 1
        log.info("[%d/%d] %s (%.0f s elapsed)", i, len(self.stages), name, self.elapsed)
        self._current = (name, time.perf_counter())

    def finish(self) -> None:
        if self._current is not None:
            name, t = self._current
            self.timings[name] = time.perf_counter() - t
            log.info("      %s done in %.1f s", name, self.timings[name])
            self._current = None

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


@dataclass
class Job:
    """One ``raysynth run`` (or ``synthesize`` / ``tune``) of a flow."""

    run: RunDir
    cfg: RunConfig
    real: RealData
    progress: Progress
    resume: bool = False
    until: str | None = None  # the last stage to run; None: every stage and the report
    report: dict[str, Any] = field(default_factory=dict)

    def stage(self, name: str) -> None:
        """Start stage ``name`` (a progress line; the previous stage's time is recorded)."""
        self.progress.start(name)

    def stops_after(self, name: str) -> bool:
        """Whether the job ends after stage ``name`` (no report is written then)."""
        if self.until == name:
            self.progress.finish()
            return True
        return False
