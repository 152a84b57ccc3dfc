"""The filter paths the ``filter`` bench times: the plain loop and the product's stage, stamped.

:func:`plain_filter` calls a fresh :class:`FilterScorer` batch by batch without Ray
(:func:`~raysynth.bench.harness.plain_loop`); :func:`ray_filter` runs Parquet rows through
filter stages (:func:`filter_stage`, the pool as ``raysynth.filter.rounds`` wires it, its actors
stamping each batch: :class:`StampedFilterScorer`) and the product's write step;
:class:`Pools` are the pools the bench measures; :func:`replicate` makes a long input out of
generated rows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raysynth import columns as col
from raysynth.bench.harness import Timed, count_rows, plain_loop, read_stamps, stamp
from raysynth.config.schema import Resources, RunConfig
from raysynth.filter.stage import FilterScorer, FilterSpec
from raysynth.generate.stage import write_synthetic
from raysynth.generate.table import read_table
from raysynth.ray_data import from_tables, map_pool


class StampedFilterScorer(FilterScorer):
    """``FilterScorer`` that stamps each batch (:func:`~raysynth.bench.harness.stamp`) inside
    the actor (the Ray side of the steady-state rate)."""

    def __init__(self, spec: FilterSpec, stamps: str) -> None:
        super().__init__(spec)
        self.stamps = stamps

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        out = super().__call__(batch)
        stamp(self.stamps, len(batch[col.SAMPLE_ID]))
        return out


def filter_stage(
    fspec: FilterSpec,
    batch: int,
    cpus: float,
    gpus: float,
    max_actors: int,
    stamps: Path | None = None,
    min_actors: int = 1,
):
    """The filter pool as ``raysynth.filter.rounds`` wires it (a ``generate`` stage);
    with ``stamps``, its actors stamp every batch. ``min_actors = max_actors`` fixes its size."""
    fn, kwargs = FilterScorer, {"spec": fspec}
    if stamps is not None:
        fn, kwargs = StampedFilterScorer, {"spec": fspec, "stamps": str(stamps)}

    pool = Resources(batch, min_actors, max_actors, cpus, gpus)

    def stage(ds: Any) -> Any:
        return map_pool(ds, fn, pool, kwargs)

    return stage


def stamps(out: Path) -> Path:
    """Where the stages writing to ``out`` stamp their batches."""
    return out.with_suffix(".stamps")


@dataclass
class Pools:
    """The filter pools the bench measures, each stamping into :func:`stamps` of its output."""

    cfg: RunConfig
    fspec: FilterSpec
    cores: int
    gpus: float

    def product(self, out: Path):
        """The pool as the product configures it (``filter.pool``)."""
        f = self.cfg.filter.pool
        return filter_stage(
            self.fspec,
            f.batch_size,
            f.cpus_per_actor,
            f.gpus_per_actor,
            f.max_actors,
            stamps(out),
            f.min_actors,
        )

    def wide(self, out: Path, b: int):
        """One actor with every core (and the GPU, when there is one)."""
        return filter_stage(self.fspec, b, self.cores, self.gpus, 1, stamps(out))

    def alone(self, out: Path, b: int):
        """The filter alone at the same total cores: ``cores`` one-CPU actors (one GPU actor)."""
        if self.gpus:
            return self.wide(out, b)
        return filter_stage(self.fspec, b, 1, 0, self.cores, stamps(out), min_actors=self.cores)


def ray_filter(src: Path, stages: list, batch: int, out: Path) -> Timed:
    """The rows of ``src`` → stages → synthetic schema → ``write_parquet(out)``.

    The driver reads ``src`` and hands Ray Data one block per batch (``generate`` likewise hands
    over its plan from the driver): read tasks would need CPUs that a pool of ``cores`` actors
    may hold entirely.
    """
    stamps = out.with_suffix(".stamps")
    start = time.time()
    table = read_table(src)
    ds = from_tables([table.slice(i, batch) for i in range(0, table.num_rows, batch)])
    for stage in stages:
        ds = stage(ds)
    write_synthetic(ds, out)  # the same write step as ``generate``
    wall = time.time() - start
    return Timed(wall, start, read_stamps(stamps), count_rows(out))


def plain_filter(src: Path, fspec: FilterSpec, batch: int, threads: int, out: Path) -> Timed:
    """The loop without Ray over the same Parquet rows, one output file per batch."""
    return plain_loop(lambda: FilterScorer(fspec), lambda: read_table(src), batch, threads, out)


def replicate(src: Path, rows: int, out: Path) -> Path:
    """The rows of ``src`` repeated under new ``sample_id``s up to ``rows`` rows, as one Parquet
    file in ``out``: a long input for the filter (its cost does not depend on which images)."""
    table = read_table(src)
    parts, ids = [], table[col.SAMPLE_ID].to_pylist()
    for r in range(-(-rows // table.num_rows)):
        fresh = pa.array([f"{i}-copy{r}" for i in ids])
        parts.append(
            table.set_column(table.schema.get_field_index(col.SAMPLE_ID), col.SAMPLE_ID, fresh)
        )
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.concat_tables(parts).slice(0, rows), out / "part-00000.parquet")
    return out
