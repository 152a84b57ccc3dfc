"""raysynth's actor pools run a callable class on the actor's task thread, one call at a time."""

import threading

import numpy as np
import pytest

from raysynth.ray_data import pool_strategy


def where_am_i() -> type:
    """A callable class defined here, so Ray pickles it by value (a test module is not
    importable in a worker)."""

    class WhereAmI:
        """Reports the thread each call runs on and how many calls run at once in its actor."""

        def __init__(self) -> None:
            self.running = 0
            self.lock = threading.Lock()

        def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            with self.lock:
                self.running += 1
                at_once = self.running
            try:
                n = len(batch["id"])
                return {
                    "x": batch["id"] * 2,
                    "main": np.full(n, threading.current_thread() is threading.main_thread()),
                    "at_once": np.full(n, at_once),
                }
            finally:
                with self.lock:
                    self.running -= 1

    return WhereAmI


def test_pool_strategy_sizes():
    fixed, scaling = pool_strategy(3), pool_strategy(1, 4)
    assert (fixed.min_size, fixed.max_size) == (3, 3)
    assert (scaling.min_size, scaling.max_size) == (1, 4)
    assert fixed.enable_true_multi_threading and scaling.enable_true_multi_threading
    assert fixed.max_tasks_in_flight_per_actor == scaling.max_tasks_in_flight_per_actor == 4
    assert pool_strategy(2, tasks_in_flight=1).max_tasks_in_flight_per_actor == 1


@pytest.mark.parametrize("strategy", [pool_strategy(1), pool_strategy(1, 2)])
def test_callable_class_runs_on_the_task_thread_one_call_at_a_time(ray_local, strategy):
    ds = ray_local.data.range(64, override_num_blocks=16).map_batches(
        where_am_i(), batch_size=4, batch_format="numpy", num_cpus=1, compute=strategy
    )
    rows = ds.take_all()
    assert sorted(int(r["x"]) for r in rows) == [2 * i for i in range(64)]
    # no hand-off to a ThreadPoolExecutor thread (Ray Data's default wrapper)
    assert all(bool(r["main"]) for r in rows)
    assert {int(r["at_once"]) for r in rows} == {1}  # never two calls at once in one actor
