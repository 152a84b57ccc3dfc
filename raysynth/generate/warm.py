"""The generate stage for many rounds on warm pools: the generator, filter and writer actors
start once per synthesis stage and are fed round after round (:mod:`raysynth.warm_pools`).

:func:`raysynth.generate.stage.generate` builds a Ray Data pipeline per call, so a synthesis of
several rounds started every pool (and loaded every model) once per round. :class:`WarmGenerate`
is the same call — the rows whose ``sample_id`` is not written yet, in the same blocks, through
the same callable classes, written by the same :class:`~raysynth.generate.table.PartWriter` into
``<out_root>/<name>/`` — on pools started when it is entered and killed when it is left. The
``sample_id``\\ s already written are read from ``out_root`` once, at the first round, and kept
(each part it writes adds its own), so a round's check for what is left to make reads no file
— :func:`~raysynth.generate.stage.generate` reads every part of every round before each round,
a cost that grows with the rounds (and with each file's latency on an object store)::

    with WarmGenerate(spec, out_root, cfg.synthesis, [filter_stage]) as generate:
        for r in rounds:
            generate(rows_of(r), f"round-{r:03d}")
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from raysynth import columns as col
from raysynth.config.schema import SynthesisConfig
from raysynth.generate.actor import DiffusionGenerator
from raysynth.generate.generators import GeneratorSpec
from raysynth.generate.stage import (
    GenerationStats,
    finished,
    plan_blocks,
    still_to_make,
    writer_stage,
    writers_for,
)
from raysynth.generate.table import existing_ids, part_ids, part_name
from raysynth.ray_data import PoolStage
from raysynth.storage import as_path
from raysynth.warm_pools import Pipeline


class WarmGenerate:
    """``generate(rows, name, on_written)`` round after round on pools started once: the
    generator pool (``synthesis.pool``, callable class ``generator``), then ``stages`` (e.g. the
    filter's :class:`~raysynth.ray_data.PoolStage`), then the synthetic writers. Use it as a
    context manager: the pools start with the first round that has rows to make (a resumed
    stage whose rows are all written starts none) and are killed when the ``with`` block ends
    or fails."""

    def __init__(self, spec: GeneratorSpec, out_root: str | Path, cfg: SynthesisConfig,
                 stages: Sequence[PoolStage] = (), generator: type = DiffusionGenerator) -> None:
        self.out_root, self.cfg = as_path(out_root), cfg
        self.pipeline = Pipeline([
            PoolStage(generator, cfg.pool, {"spec": spec}), *stages,
            writer_stage(self.out_root, writers_for(cfg.pool)),
        ])
        self.started = False
        # the sample ids written under out_root: read once, then each part this object writes
        # added as it is written (a round's check reads no part; None: read it again)
        self.written: set[str] | None = None

    def __enter__(self) -> WarmGenerate:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.pipeline.close()

    def __call__(self, rows: list[dict[str, Any]], name: str = "round-000",
                 on_written: Callable[[int], None] | None = None) -> GenerationStats:
        """Generate the rows not written under ``out_root`` yet into ``out_root/name/`` (as
        :func:`~raysynth.generate.stage.generate`; ``on_written(n)`` as each part is written)."""
        t0 = time.perf_counter()
        if self.written is None:
            self.written = existing_ids(self.out_root)
        todo, stats = still_to_make(rows, self.out_root, self.written)
        if todo:
            if not self.started:
                self.started = True
                self.pipeline.open()
            last = len(self.pipeline.stages) - 1
            blocks = plan_blocks(todo, self.cfg.pool)
            ids = [b.column(col.SAMPLE_ID).to_pylist() for b in blocks]
            by_part = {part_name(i): i for i in ids}
            done = self.written

            def written(part: Any) -> None:
                for file in part.column("file").to_pylist():  # a stage that drops rows: read it
                    done.update(by_part.get(file) or part_ids(self.out_root / name / file))
                n = int(sum(part.column("rows").to_pylist()))
                if on_written is not None and n:
                    on_written(n)

            try:
                self.pipeline.run(blocks, {last: {"path": self.out_root / name}}, written)
            except BaseException:
                self.written = None  # a failed round: the next one reads what is there
                raise
        return finished(stats, name, t0)

    def pids(self) -> list[list[int]]:
        """Each pool's actor process ids (generator first, writers last)."""
        return self.pipeline.pids()
