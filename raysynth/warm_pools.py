"""Warm actor pools: the stages of a pipeline (:class:`~raysynth.ray_data.PoolStage`) started
once and fed block after block, round after round — the long-lived counterpart of
:func:`raysynth.ray_data.map_pool`, whose pools live as long as one dataset. A synthesis of many rounds (quota regeneration, the closed loop) built a new Ray Data pipeline
per round, so every round started new generator, filter and writer actors and each loaded its
model again (on a GPU, a Stable Diffusion per actor per round). :class:`Pipeline` starts each
stage's pool once — sized as ``map_pool`` sizes it (:func:`~raysynth.ray_data.size_pool`: from
what is free after the pools before it), the same callable classes, called with the same batches
in the same format (Ray Data's own block ↔ batch conversions) — and :meth:`Pipeline.run` pushes
one round's blocks through the stages, actor to actor: the driver passes object references and
never holds an image; at most ``TASKS_IN_FLIGHT`` blocks are queued per first-stage actor.

Failures (what Ray Data's restarts give the cold pools): an actor that dies (its process killed,
its node removed) is replaced by a fresh one and every block it held is pushed through the
stages again from the first, as is a block whose intermediate result was lost with its node. A
block's output is deterministic and the synthetic writer names a part by the hash of its
``sample_id``\\ s, so a redone block overwrites its own part: nothing is lost or written twice.
An error raised by a stage's own code (or its constructor) stops the run and is raised. The
actors are killed when the pipeline closes (a ``with`` block), so later stages size their pools
from the resources they held.
"""

from __future__ import annotations

import collections
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from raysynth.ray_data import (
    POOL_BATCH,
    TASKS_IN_FLIGHT,
    PoolStage,
    driver_node_strategy,
    free_resources,
    size_pool,
)

log = logging.getLogger("raysynth.ray_data")

MAX_TRIES = 4  # a block lost this many times (an actor, node or object each time) stops the run


class StageHost:
    """The actor of one warm pool: builds the stage's callable class once and calls it on each
    block it is given, batch by batch (``batch_size`` rows; a call per block when None), in the
    stage's batch format; returns the rows out and the output block."""

    def __init__(self, fn: type, kwargs: dict[str, Any], batch_format: str,
                 batch_size: int | None) -> None:
        self.fn, self.kwargs, self.batch_format, self.batch_size = fn, kwargs, batch_format, batch_size
        self.per_round: dict[str, Any] | None = None
        self.call_fn = fn(**kwargs)

    def pid(self) -> int:
        return os.getpid()

    def call(self, block: pa.Table, per_round: dict[str, Any] | None = None) -> tuple[int, Any]:
        from ray.data.block import BlockAccessor

        if per_round is not None and per_round != self.per_round:  # e.g. the round's folder
            self.call_fn, self.per_round = self.fn(**{**self.kwargs, **per_round}), per_round
        step = self.batch_size or max(block.num_rows, 1)
        builder = None
        for i in range(0, max(block.num_rows, 1), step):
            part = block.slice(i, step)
            batch = (part if self.batch_format == "pyarrow"
                     else BlockAccessor.for_block(part).to_batch_format(self.batch_format))
            out = self.call_fn(batch)
            out = out if isinstance(out, pa.Table) else BlockAccessor.batch_to_block(out)
            builder = builder or BlockAccessor.for_block(out).builder()
            builder.add_block(out)
        table = builder.build()
        return table.num_rows, table


@dataclass
class _Pool:
    """One stage's actors: which are ready (their constructor ran) and the blocks each holds."""

    stage: PoolStage
    sized: Any  # Resources
    actors: dict[Any, Any] = field(default_factory=dict)  # actor id → handle, started
    ready: dict[Any, int] = field(default_factory=dict)  # actor id → pid, constructed
    load: collections.Counter = field(default_factory=collections.Counter)
    replaced: int = 0
    remote: Any = None  # the ray.remote actor class

    def start(self) -> Any:
        import ray

        s, n = self.stage, self.sized
        if self.remote is None:  # the actor class, named after the callable (as Ray Data does)
            host = type(f"WarmPool({getattr(s.fn, '__name__', 'actor')})", (StageHost,), {})
            self.remote = ray.remote(
                num_cpus=n.cpus_per_actor, num_gpus=n.gpus_per_actor, max_restarts=0,
                max_task_retries=0,
                scheduling_strategy=driver_node_strategy() if s.on_driver_node else "SPREAD")(host)
        size = s.pool.batch_size if s.batch_size is POOL_BATCH else s.batch_size
        size = None if size == "default" else size
        actor = self.remote.remote(s.fn, s.kwargs, s.batch_format, size)
        self.actors[actor._actor_id] = actor
        return actor

    def pick(self) -> Any | None:
        """The ready actor holding the fewest blocks, if it holds fewer than the queue depth."""
        free = [a for a in self.ready if self.load[a] < TASKS_IN_FLIGHT]
        return min(free, key=lambda a: self.load[a]) if free else None

    def replace(self, actor_id: Any) -> Any | None:
        """Kill a failed actor and start another in its place (None if it was replaced already)."""
        import ray

        handle = self.actors.pop(actor_id, None)
        self.ready.pop(actor_id, None)
        if handle is None:
            return None
        ray.kill(handle, no_restart=True)
        self.replaced += 1
        if self.replaced > 4 * self.sized.max_actors + 4:
            raise RuntimeError(f"{self.stage.fn.__name__}: {self.replaced} actors died; giving "
                               "up (see the Ray logs of the dead actors for why)")
        log.warning("%s actor %s died; starting another, its blocks are redone",
                    self.stage.fn.__name__, actor_id.hex()[:8])
        return self.start()


class Pipeline:
    """Warm pools for ``stages`` (first to last), started by :meth:`open` (or entering a ``with``
    block) and killed by :meth:`close`; :meth:`run` feeds them one round's blocks."""

    def __init__(self, stages: Sequence[PoolStage]) -> None:
        self.stages = list(stages)
        self.pools: list[_Pool] = []
        self._pings: dict[Any, tuple[_Pool, Any]] = {}  # ready ref → pool, actor id

    def open(self) -> Pipeline:
        """Size the pools as :func:`~raysynth.ray_data.map_pool` sizes a pipeline's (each from
        what is free after the ``min_actors`` of the ones before it) and start them: each pool's
        ``min_actors``, then — first pool first — as many more, up to its fitted ``max_actors``,
        as the CPUs and GPUs left over hold (what Ray Data's autoscaling pools grow to)."""
        claimed = {"CPU": 0.0, "GPU": 0.0}
        for s in self.stages:
            sized = size_pool(getattr(s.fn, "__name__", "actor"), s.pool, claimed,
                              s.on_driver_node)
            claimed = {"CPU": claimed["CPU"] + sized.min_actors * sized.cpus_per_actor,
                       "GPU": claimed["GPU"] + sized.min_actors * sized.gpus_per_actor}
            self.pools.append(_Pool(s, sized))
        left = {k: v - claimed[k] for k, v in free_resources().items()}
        for pool in self.pools:
            n, need = pool.sized, {"CPU": pool.sized.cpus_per_actor, "GPU": pool.sized.gpus_per_actor}
            more = min([n.max_actors - n.min_actors,
                        *(math.floor(left[k] / need[k] + 1e-9) for k in need if need[k] > 0)])
            more = max(0, more)
            left = {k: left[k] - more * need[k] for k in left}
            for _ in range(n.min_actors + more):
                self._ping(pool, pool.start())
        return self

    def close(self, wait_s: float = 30.0) -> None:
        """Kill every actor and wait (up to ``wait_s``) until each is known dead, so that a pool
        sized next from the free resources sees theirs."""
        import ray

        handles = [h for pool in self.pools for h in pool.actors.values()]
        for handle in handles:
            ray.kill(handle, no_restart=True)
        if handles:  # a call on a killed actor fails once Ray knows it is dead
            ray.wait([h.pid.remote() for h in handles], num_returns=len(handles), timeout=wait_s)
        self.pools, self._pings = [], {}

    def __enter__(self) -> Pipeline:
        try:
            return self.open()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def pids(self) -> list[list[int]]:
        """Each stage's constructed actors' process ids (what a test compares across rounds)."""
        return [sorted(p.ready.values()) for p in self.pools]

    def _ping(self, pool: _Pool, actor: Any) -> None:
        self._pings[actor.pid.remote()] = (pool, actor._actor_id)

    def run(self, blocks: Sequence[pa.Table], per_round: dict[int, dict[str, Any]] | None = None,
            on_output: Callable[[pa.Table], None] | None = None) -> int:
        """Push every block through the stages; ``per_round[i]`` (if given) updates stage
        ``i``'s constructor kwargs for this round (the writer's folder); ``on_output`` gets each
        block's last-stage output as it arrives. Returns the rows out of the last stage."""
        per_round = per_round or {}
        kwargs = [per_round.get(i) for i in range(len(self.pools))]
        return _Run(self, list(blocks), kwargs, on_output).loop()


class _Run:
    """One :meth:`Pipeline.run`: the driver's loop over the blocks in flight."""

    def __init__(self, pipe: Pipeline, blocks: list[pa.Table], per_round: list[Any],
                 on_output: Callable[[pa.Table], None] | None) -> None:
        self.pipe, self.blocks, self.on_output, self.per_round = pipe, blocks, on_output, per_round
        self.waiting: list[collections.deque] = [collections.deque() for _ in pipe.pools]
        self.waiting[0].extend((i, blocks[i]) for i in range(len(blocks)))
        self.flight: dict[Any, tuple[int, int, Any, Any]] = {}  # rows ref → block, stage, actor, out
        self.tries: collections.Counter = collections.Counter()  # block → times lost
        self.rows = 0

    def loop(self) -> int:
        import ray

        remaining = len(self.blocks)
        while remaining:
            self.submit()
            refs = [*self.flight, *self.pipe._pings]
            if not refs:
                raise RuntimeError("warm pools: blocks are waiting but no actor is started")
            (ref,), _ = ray.wait(refs, num_returns=1)
            if ref in self.pipe._pings:
                self.constructed(ref)
            else:
                remaining -= self.finished(ref)
        return self.rows

    def submit(self) -> None:
        """Hand waiting blocks to the ready actors with room, last stage first; a new block
        enters the first stage only while fewer than the queue depth per first-stage actor are
        in the pipeline."""
        pools = self.pipe.pools
        for s in reversed(range(len(pools))):
            while self.waiting[s]:
                if s == 0:
                    inside = len(self.flight) + sum(len(w) for w in self.waiting[1:])
                    if inside >= TASKS_IN_FLIGHT * max(1, len(pools[0].ready)):
                        break
                actor = pools[s].pick()
                if actor is None:
                    break
                block, data = self.waiting[s].popleft()
                rows, out = pools[s].actors[actor].call.options(num_returns=2).remote(
                    data, self.per_round[s])
                pools[s].load[actor] += 1
                self.flight[rows] = (block, s, actor, out)

    def constructed(self, ref: Any) -> None:
        import ray
        from ray.exceptions import RayActorError

        pool, actor = self.pipe._pings.pop(ref)
        try:
            pool.ready[actor] = ray.get(ref)
        except RayActorError as e:
            if e.actor_init_failed:  # its constructor raised: a real error, not a lost node
                raise
            if (new := pool.replace(actor)) is not None:
                self.pipe._ping(pool, new)

    def finished(self, ref: Any) -> int:
        """A stage's call on a block ended: pass its output on, or count the block done (1);
        redo the block from the first stage if an actor or an object was lost."""
        import ray
        from ray import exceptions as x

        # lost work (an actor, worker, node or object), not an error of the stage's code
        retryable = (x.RayActorError, x.ObjectLostError, x.NodeDiedError, x.WorkerCrashedError)
        block, s, actor, out = self.flight.pop(ref)
        pool = self.pipe.pools[s]
        pool.load[actor] -= 1
        try:
            ray.get(ref)
        except retryable as e:
            died = isinstance(e, x.RayActorError) and not isinstance(e, x.RayTaskError)
            if died and (new := pool.replace(actor)) is not None:  # the actor that ran it
                self.pipe._ping(pool, new)
            self.tries[block] += 1
            if self.tries[block] >= MAX_TRIES:
                raise RuntimeError(f"a block failed {MAX_TRIES} times in a row: {e}") from e
            log.warning("redoing a block lost at stage %s: %s", pool.stage.fn.__name__,
                        type(e).__name__)
            self.waiting[0].append((block, self.blocks[block]))
            return 0
        if s + 1 < len(self.pipe.pools):
            self.waiting[s + 1].append((block, out))
            return 0
        table = ray.get(out)
        self.rows += table.num_rows
        if self.on_output is not None:
            self.on_output(table)
        return 1
