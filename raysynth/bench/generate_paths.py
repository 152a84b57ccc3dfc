"""The two generate paths the benches time: the plain loop and the product's stage, stamped.

:func:`plain_generate` calls a fresh :class:`DiffusionGenerator` batch by batch without Ray
(:func:`~raysynth.bench.harness.plain_loop`); :func:`ray_generate` runs
:func:`raysynth.generate.stage.generate`, its generator pool stamping each batch inside the actor
(:class:`StampedGenerator`) — or the stages handed to it stamping instead.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from raysynth import columns as col
from raysynth.bench.harness import Timed, count_rows, plain_loop, read_stamps, stamp
from raysynth.config.schema import RunConfig
from raysynth.generate.actor import DiffusionGenerator, plan_table
from raysynth.generate.generators import GeneratorSpec
from raysynth.generate.stage import generate


class StampedGenerator(DiffusionGenerator):
    """``DiffusionGenerator`` that stamps each batch (:func:`~raysynth.bench.harness.stamp`)
    inside the actor, right after the call (the Ray side of the steady-state rate)."""

    stamps = ""  # set by :func:`stamped_generator`

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        out = super().__call__(batch)
        stamp(self.stamps, len(batch[col.SAMPLE_ID]))
        return out


def stamped_generator(stamps: str | Path) -> type:
    """A :class:`StampedGenerator` writing to ``stamps`` (``generate`` builds its pool's actors
    from a class and the spec alone)."""
    return type("StampedGenerator", (StampedGenerator,), {"stamps": str(stamps)})


def plain_generate(
    rows: list[dict], spec: GeneratorSpec, batch: int, threads: int, out: Path
) -> Timed:
    """The loop without Ray: load, generate batch by batch, write one Parquet file per batch."""
    return plain_loop(
        lambda: DiffusionGenerator(spec), lambda: plan_table(rows), batch, threads, out
    )


def ray_generate(
    rows: list[dict], spec: GeneratorSpec, cfg: RunConfig, out: Path, stages: list | None = None
) -> Timed:
    """The product's generate stage, stamped as batches leave the generator pool — or, with
    ``stages``, as those stages stamp into ``out.with_suffix(".stamps")``."""
    out.mkdir(parents=True, exist_ok=True)
    stamps = out.with_suffix(".stamps")
    start = time.time()
    if stages:
        generate(rows, spec, out, cfg.synthesis, stages=stages)
    else:
        generate(rows, spec, out, cfg.synthesis, generator=stamped_generator(stamps))
    wall = time.time() - start
    return Timed(wall, start, read_stamps(stamps), count_rows(out))
