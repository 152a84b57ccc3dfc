"""Plan → generate (→ filter) as one Ray Data streaming pipeline writing the synthetic table.

The driver holds the plan rows (small) and nothing else: images stream from the generator actor
pool through any scoring stages straight into Parquet files under ``<run>/synthetic/``. A rerun
on the same directory plans the same ``sample_id``s and generates only those not written yet.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raysynth import columns as col
from raysynth.config.schema import Resources, SynthesisConfig
from raysynth.generate.actor import DiffusionGenerator, plan_table
from raysynth.generate.generators import GeneratorSpec
from raysynth.generate.table import PartWriter, existing_ids
from raysynth.ray_data import PoolStage, from_tables, map_pool
from raysynth.storage import as_path

log = logging.getLogger("raysynth.generate")

Stage = Callable[[Any], Any]  # ray.data.Dataset → ray.data.Dataset


@dataclass
class GenerationStats:
    planned: int
    skipped: int  # already in the table (resume)
    generated: int
    wall_s: float


def batches_per_block(rows: int, batch_size: int, actors: int, most: int = 4) -> int:
    """Generator batches per Ray Data block: up to ``most``, while every one of ``actors`` still
    gets at least four blocks.

    Ray Data pays per task, not per batch: the driver schedules it, the actor fetches its block
    and seals its output, the kernel switches between them — about 15 ms a task on the 2-core
    machine, against ~90 ms for a digits batch of 8 (``raysynth bench synthesis``: two actors
    reached 82% of twice one actor's rate with a batch per block). Several batches per block
    spread that over several calls; at least four blocks per actor keep the pool balanced and
    a small round at one batch per block. A killed actor's retry redoes at most one block."""
    batches = -(-rows // batch_size)
    return max(1, min(most, batches // (4 * max(1, actors))))


def generate(
    rows: list[dict[str, Any]],
    spec: GeneratorSpec,
    out_root: str | Path,
    cfg: SynthesisConfig,
    stages: Sequence[Stage] = (),
    name: str = "round-000",
    generator: type = DiffusionGenerator,
    on_written: Callable[[int], None] | None = None,
) -> GenerationStats:
    """Generate the rows whose ``sample_id`` is not in ``out_root`` yet; stream them through
    ``stages`` (e.g. embed + filter) and write them to ``out_root/name/``. Needs Ray connected.

    ``generator`` is the pool's callable class: :class:`DiffusionGenerator` or a subclass (the
    benches stamp each batch as it leaves the generator); ``on_written(n)`` is called as each
    part of ``n`` images is written (progress)."""
    t0 = time.perf_counter()
    out_root = as_path(out_root)  # local or on the run directory's store
    todo, stats = still_to_make(rows, out_root)
    if todo:
        pool = cfg.pool
        ds = from_tables(plan_blocks(todo, pool))
        ds = map_pool(ds, generator, pool, {"spec": spec})
        for stage in stages:
            ds = stage(ds)
        write_synthetic(ds, out_root / name, writers=writers_for(pool), on_written=on_written)
    return finished(stats, name, t0)


def still_to_make(rows: list[dict[str, Any]], out_root: Any, done: set[str] | None = None,
                  ) -> tuple[list[dict[str, Any]], GenerationStats]:
    """The rows whose ``sample_id`` is not written under ``out_root`` yet (resume; ``done``: the
    ids written there, when the caller keeps them), and the round's stats so far."""
    done = existing_ids(out_root) if done is None else done
    todo = [r for r in rows if r[col.SAMPLE_ID] not in done]
    return todo, GenerationStats(len(rows), len(rows) - len(todo), len(todo), 0.0)


def plan_blocks(todo: list[dict[str, Any]], pool: Resources) -> list[Any]:
    """The plan rows as Arrow blocks of whole generator batches
    (:func:`batches_per_block`), so the actor pool can spread the work (no all-to-all
    repartition); the generator is called once per batch within a block. The first block is a
    single batch: a round's first images are written after one batch, not one block (the gap
    between rounds, ``raysynth bench rounds``), with no new batch shape for the generator. (A
    smaller first block was tried: it lowered that gap by moving time into the round — one more
    generator call, about 0.3 s of fixed cost per digits round — without making a round
    shorter.)"""
    plan = plan_table(todo)
    b = pool.batch_size
    per_block = b * batches_per_block(len(plan), b, pool.max_actors)
    first = min(b, per_block)
    return [plan.slice(0, first)] + [plan.slice(i, per_block)
                                     for i in range(first, len(plan), per_block)]


def writers_for(pool: Resources) -> int:
    """Synthetic writer actors for a generator pool: one per four generators."""
    return -(-pool.max_actors // 4)


def finished(stats: GenerationStats, name: str, t0: float) -> GenerationStats:
    stats.wall_s = time.perf_counter() - t0
    if stats.generated:
        log.info("%s: generated %d images (%d already there) in %.1f s", name, stats.generated,
                 stats.skipped, stats.wall_s)
    return stats


def writer_stage(path: Any, writers: int = 1) -> PoolStage:
    """The synthetic writers as a pool stage: ``writers`` zero-CPU :class:`PartWriter` actors on
    the driver's node, a call per block (:func:`write_synthetic`)."""
    n = max(1, writers)
    return PoolStage(PartWriter, Resources(min_actors=n, max_actors=n, cpus_per_actor=0),
                     {"path": as_path(path)}, "pyarrow", batch_size=None, on_driver_node=True)


def write_synthetic(
    ds: Any, path: str | Path, writers: int = 1, on_written: Callable[[int], None] | None = None
) -> int:
    """Stream the rows of ``ds`` into Parquet parts under ``path`` (synthetic schema); returns
    the rows written.

    The writes run in a fixed pool of ``writers`` long-lived zero-CPU actors (:class:`PartWriter`;
    ``generate`` starts one per four generator actors: a part takes milliseconds to write),
    started with the pipeline: they write even while the generator pools hold every CPU, and no
    process starts mid-stream (an autoscaling pool started its second writer there, which cost
    the two generators of a 2-core machine 0.8 s of CPU).
    Ray Data's ``write_parquet`` runs each block as a task instead; zero-CPU tasks are unbounded
    and each one beyond the few idle workers Ray keeps starts a fresh worker process — on a
    2-core machine that churn took 80% of the CPU from the generators (``raysynth bench
    synthesis``, two actors: 19 images/s, 103 with the writes bounded). The writers are pinned to
    the driver's node, so ``path`` is the driver's disk on any cluster (no shared filesystem
    needed); the images reach it through the object store, and the driver process itself only
    sees one small row per part.
    """
    ds = writer_stage(path, writers)(ds)
    written = 0
    for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
        n = int(sum(b["rows"]))
        written += n
        if on_written is not None and n:
            on_written(n)
    return written
