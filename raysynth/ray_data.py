"""The one Ray Data adapter: every stage's callable class runs on an actor pool through
:func:`map_pool`, the only place in the library that calls ``map_batches``; datasets are made and
read here too, so no stage module imports Ray.

A stage hands over its callable class and its :class:`~raysynth.config.schema.Resources`
(``synthesis.pool``, ``filter.pool``, …); what Ray Data needs beyond that (the pool strategy, the
queue depth, where the actors run, how many actors fit what the cluster has free) is decided here
once.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

from raysynth.config.schema import Resources
from raysynth.storage import AnyPath, fs_path

log = logging.getLogger("raysynth.ray_data")

TASKS_IN_FLIGHT = 4
POOL_BATCH = object()  # map_pool's default: the pool's own batch_size


def pool_strategy(
    min_size: int = 1, max_size: int | None = None, tasks_in_flight: int = TASKS_IN_FLIGHT
) -> Any:
    """``ActorPoolStrategy(min_size, max_size)`` (a fixed pool when ``max_size`` is None) whose
    callable class runs on the actor's own task thread, with ``tasks_in_flight`` batches queued
    per actor.

    - Ray Data's default (``enable_true_multi_threading=False``) hands each call to a one-thread
      executor while the task thread waits: with one call per actor at a time (as here) that
      overlaps nothing and adds a second busy thread contending for the GIL and the core.
    - Ray Data queues 2 tasks per actor; two generator actors on 2 cores then sat idle 6-8% of
      the time (``/proc/stat``); four keep them fed (1% idle).

    Together: two 1-CPU generator actors went from 141 to 158 images/s, one stayed at 96-98
    (``raysynth bench synthesis``, 2-core machine), same bytes out."""
    from ray.data import ActorPoolStrategy

    sizes = (
        {"size": min_size} if max_size is None else {"min_size": min_size, "max_size": max_size}
    )
    return ActorPoolStrategy(
        **sizes,
        max_tasks_in_flight_per_actor=tasks_in_flight,
        enable_true_multi_threading=True,
    )


def map_pool(
    ds: Any,
    fn: type,
    pool: Resources,
    kwargs: dict[str, Any] | None = None,
    batch_format: str = "numpy",
    batch_size: Any = POOL_BATCH,
    on_driver_node: bool = False,
) -> Any:
    """``ds.map_batches(fn)`` on an actor pool of ``pool``'s size and resources; ``fn`` is a
    callable class built once per actor with ``kwargs``.

    ``batch_size`` defaults to ``pool.batch_size`` (``None``: one call per block; ``"default"``:
    Ray Data's own). ``on_driver_node`` pins the actors to the driver's node (the synthetic
    writers). Ray Data restarts a killed actor and retries its batch (``max_restarts=-1``,
    ``max_task_retries=-1`` by default): nothing is lost (``tests/ray/test_synthesis.py``)."""
    extra: dict[str, Any] = {}
    if batch_size is not None and batch_size != "default":
        extra["batch_size"] = pool.batch_size if batch_size is POOL_BATCH else batch_size
    elif batch_size is None:
        extra["batch_size"] = None
    if on_driver_node:  # a label every node has (Ray 2.60: ``scheduling_strategy`` here is a
        extra["label_selector"] = {NODE_ID_LABEL: driver_node_id()}  # deprecated remote arg)
    upstream = _CLAIMS.get(ds, {})
    sized = size_pool(getattr(fn, "__name__", "actor"), pool, upstream, on_driver_node)
    out = ds.map_batches(
        fn,
        fn_constructor_kwargs=kwargs or {},
        batch_format=batch_format,
        compute=pool_strategy(sized.min_actors, sized.max_actors),
        num_cpus=sized.cpus_per_actor,
        num_gpus=sized.gpus_per_actor,
        **extra,
    )
    _CLAIMS[out] = {
        "CPU": upstream.get("CPU", 0.0) + sized.min_actors * sized.cpus_per_actor,
        "GPU": upstream.get("GPU", 0.0) + sized.min_actors * sized.gpus_per_actor,
    }
    return out


def size_pool(
    name: str, pool: Resources, claimed: dict[str, float], on_driver_node: bool = False
) -> Resources:
    """``pool`` fitted (:func:`fit_pool`) to the resources free after the pools before it
    (``claimed``); a pool pinned to the driver's node to that node's CPUs (a CPU-less head
    gets 0-CPU actors). Used by :func:`map_pool` and the warm pools (:mod:`raysynth.warm_pools`)."""
    free = {k: v - claimed.get(k, 0.0) for k, v in free_resources().items()}
    if on_driver_node:
        free["CPU"] = min(free.get("CPU", 0.0), driver_node_cpus())
    sized = fit_pool(pool, free)
    if sized != pool or pool.cpus_per_actor or pool.gpus_per_actor:
        log.info("%s pool: %s actor(s) of %g CPU, %g GPU (%.1f CPUs free after the stages "
                 "before it)", name,
                 sized.min_actors if sized.min_actors == sized.max_actors
                 else f"{sized.min_actors}-{sized.max_actors}",
                 sized.cpus_per_actor, sized.gpus_per_actor, free.get("CPU", 0.0))
    return sized


@dataclasses.dataclass(frozen=True, eq=False)
class PoolStage:
    """One actor-pool stage of a pipeline, as :func:`map_pool` takes it: the callable class,
    its pool, its constructor kwargs, the batch format and size (``POOL_BATCH``: the pool's;
    ``None`` or ``"default"``: a call per block) and whether it is pinned to the driver's node.
    Called on a dataset it is that ``map_pool`` (a cold, per-dataset pool); the warm pools
    (:mod:`raysynth.warm_pools`) start it once and feed it round after round."""

    fn: type
    pool: Resources
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    batch_format: str = "numpy"
    batch_size: Any = POOL_BATCH
    on_driver_node: bool = False

    def __call__(self, ds: Any) -> Any:
        return map_pool(ds, self.fn, self.pool, self.kwargs, self.batch_format, self.batch_size,
                        self.on_driver_node)


# What the pools mapped so far onto a dataset hold at least (min_actors × resources): a pool
# further down the same pipeline is sized from what is free after them.
_CLAIMS: weakref.WeakKeyDictionary[Any, dict[str, float]] = weakref.WeakKeyDictionary()


def free_resources() -> dict[str, float]:
    """The CPUs and GPUs the connected cluster has free now (``ray.available_resources()``):
    what a job's driver reserved, other pools and leftover actors are not in it."""
    import ray

    free = ray.available_resources()
    return {"CPU": float(free.get("CPU", 0.0)), "GPU": float(free.get("GPU", 0.0))}


def fit_pool(pool: Resources, free: dict[str, float]) -> Resources:
    """``pool`` sized to the ``free`` CPUs/GPUs: at most as many actors as fit (never fewer than
    ``min_actors``); when even ``min_actors`` do not fit the CPUs, each actor asks for its share
    of what is free (possibly 0), so a pool never waits on CPUs its own job holds (e.g. a 2-CPU
    head with the job's driver and an earlier pool on it). GPUs are never shrunk."""
    cpu, gpu = max(free.get("CPU", 0.0), 0.0), max(free.get("GPU", 0.0), 0.0)
    fits = math.inf if pool.cpus_per_actor <= 0 else math.floor(cpu / pool.cpus_per_actor + 1e-9)
    if pool.gpus_per_actor > 0:
        fits = min(fits, math.floor(gpu / pool.gpus_per_actor + 1e-9))
    n = max(pool.min_actors, min(pool.max_actors, fits))
    sized = dataclasses.replace(pool, max_actors=n)
    if pool.cpus_per_actor * pool.min_actors > cpu + 1e-9:
        share = math.floor(cpu / pool.min_actors * 100) / 100
        sized = dataclasses.replace(sized, cpus_per_actor=share)
    return sized


def show_progress(on: bool) -> None:
    """Ray Data's own progress output in this driver: its bars on a terminal, elsewhere the block
    it logs every 10 s per dataset, and its INFO lines (:mod:`raysynth.progress` reports instead)."""
    import logging

    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = on
    logging.getLogger("ray.data").setLevel(logging.INFO if on else logging.WARNING)
    # ... and not its warning that they are off ("Progress bars disabled. To enable, …")
    logging.getLogger("ray.data._internal.progress").setLevel(
        logging.NOTSET if on else logging.ERROR)


NODE_ID_LABEL = "ray.io/node-id"  # the label Ray gives every node: its node id


def driver_node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def driver_node_strategy() -> Any:
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(driver_node_id(), soft=False)


def from_tables(tables: Sequence[Any]) -> Any:
    """A dataset whose blocks are ``tables`` (pyarrow), one block each, in order."""
    import ray

    return ray.data.from_arrow(list(tables))


def read_parquet(path: str | AnyPath, columns: Sequence[str] | None = None) -> Any:
    """A dataset over the Parquet file(s) at ``path`` (local, a URI or a run directory's
    ``RemotePath``: read through its filesystem on every node), only ``columns`` when given."""
    import ray

    fs, where = fs_path(path)
    ds = ray.data.read_parquet(where, filesystem=fs)
    return ds.select_columns(list(columns)) if columns else ds


def iter_numpy(ds: Any, columns: Sequence[str] | None = None) -> Iterator[dict[str, Any]]:
    """Every block of ``ds`` as a dict of numpy arrays (``columns`` only, when given), in the
    order Ray Data yields them — the driver sees one block at a time."""
    if columns:
        ds = ds.select_columns(list(columns))
    yield from ds.iter_batches(batch_format="numpy", batch_size=None)


def cluster_resources() -> dict[str, float]:
    """The connected Ray cluster's total resources (``CPU``, ``GPU``, …)."""
    import ray

    return dict(ray.cluster_resources())


def driver_node_cpus() -> float:
    """The CPUs of the node this driver runs on (what a pool pinned there can use)."""
    import ray

    here = ray.get_runtime_context().get_node_id()
    return next((float(n["Resources"].get("CPU", 0.0)) for n in ray.nodes()
                 if n["NodeID"] == here and n["Alive"]), float(cluster_resources().get("CPU", 1)))


def call_in_actor(num_cpus: float, fn: Any) -> Any:
    """``fn()`` run inside a fresh actor given ``num_cpus`` CPUs (what a pool's actor sees, e.g.
    its torch threads); the actor is killed afterwards."""
    import ray

    class Probe:
        def call(self) -> Any:
            return fn()

    probe = ray.remote(num_cpus=num_cpus)(Probe).remote()
    try:
        return ray.get(probe.call.remote())
    finally:
        ray.kill(probe)


def image_table(
    files: Sequence[str],
    columns: Sequence[str],
    accepted_only: bool = False,
    drop: frozenset[tuple[str, str]] = frozenset(),
) -> Any:
    """A dataset over the Parquet ``files`` of an image table (``columns`` only; nothing is
    read until a consumer iterates it). ``accepted_only`` keeps the rows whose ``accepted`` is
    true; ``drop`` names ``(file, sample_id)`` rows to leave out (a synthetic table's repeated
    ids: only their first occurrence is kept). Each block is one Parquet row group or file, so a
    Train worker iterating its shard holds a few blocks at a time."""
    import ray

    from raysynth import columns as col

    wanted = list(dict.fromkeys([*columns, *([col.ACCEPTED] if accepted_only else []),
                                 *([col.SAMPLE_ID] if drop else [])]))
    ds = ray.data.read_parquet(list(files), columns=wanted, include_paths=bool(drop))
    if accepted_only:
        ds = ds.filter(lambda row: bool(row[col.ACCEPTED]))
    if drop:
        ds = ds.filter(lambda row: (row["path"], row[col.SAMPLE_ID]) not in drop)
    return ds.select_columns(list(columns))


def flagged_union(first: Any, second: Any | None, flag: str) -> Any:
    """``first`` ∪ ``second`` (None: ``first`` alone) with a boolean column ``flag``: false on
    ``first``'s rows, true on ``second``'s (the contrastive encoder's real and synthetic rows)."""
    import pyarrow as pa

    parts = [(first, False)] + ([] if second is None else [(second, True)])
    flagged = [ds.add_column(flag, lambda t, v=v: pa.array([v] * t.num_rows, pa.bool_()),
                             batch_format="pyarrow") for ds, v in parts]
    return flagged[0].union(*flagged[1:]) if len(flagged) > 1 else flagged[0]


def shuffled(ds: Any, seed: int | None = None) -> Any:
    """``ds`` shuffled once (``seed``) into the object store in blocks of ~512 rows, read in a
    new block order each pass (the reader's local buffer mixes rows: ``train.streams``). Done on
    the driver before a Train run: no read task then waits for CPUs its workers hold, and an
    epoch pays no read or shuffle barrier. Blocks spill to disk; the driver holds references."""
    once = ds.random_shuffle(seed=seed).repartition(target_num_rows_per_block=512)
    return once.materialize().randomize_block_order()


def cached(ds: Any) -> Any:
    """``ds`` read once into the object store, before the Train run that reads it."""
    return ds.materialize()
