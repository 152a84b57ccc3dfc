"""The epochs of a training run on the driver's progress view (issue 17): :class:`EpochBar`, the
counter of one run, and :func:`epoch_relay`, which brings the epochs that Ray Train workers report
on other processes (or nodes) to it. ``train/session.py`` wires both; a loop run in the driver
(Ray Train's local mode) calls the bar directly."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from raysynth.progress import Counter

# The bar of the run the driver trains now, set only in the driver process: a loop that finds it
# set runs in the driver (Ray Train's local mode) and shows its epochs directly.
_DRIVER: dict[str, EpochBar | None] = {"bar": None}


@contextmanager
def epoch_bar(name: str, in_driver: bool) -> Iterator[EpochBar]:
    """The :class:`EpochBar` of the run ``name`` for the block, closed at its end; ``in_driver``:
    the run's loop runs in this process and finds it (:func:`driver_epoch`)."""
    bar = EpochBar(name)
    _DRIVER["bar"] = bar if in_driver else None
    try:
        yield bar
    finally:
        _DRIVER["bar"] = None
        bar.close()


def driver_epoch(epoch: int, epochs: int, loss: float) -> bool:
    """Show the epoch on the driver's bar when this loop runs in the driver; whether it did."""
    bar = _DRIVER["bar"]
    if bar is not None:
        bar(epoch, epochs, loss)
    return bar is not None


class EpochBar:
    """The progress counter of one training run's epochs (``training NAME``), opened at the
    first epoch reported (a resumed run starts at its checkpoint's epoch); in a log, a line at
    every quarter of the run and at its end."""

    def __init__(self, name: str) -> None:
        self.name, self.bar = name, None

    def __call__(self, epoch: int, epochs: int, loss: float) -> None:
        if self.bar is None:
            # a resumed run's first epoch is its checkpoint's next: those before are done
            self.bar = Counter(f"training {self.name}", epochs, "epochs", max(1, epochs // 4),
                               start=epoch)
        self.bar.update(max(0, epoch + 1 - self.bar.done), loss=float(loss))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def epoch_relay(bar: EpochBar) -> tuple[Any, Callable[[], None]]:
    """A Ray Train ``UserCallback`` that runs on the Train controller and forwards rank 0's
    epoch reports to ``bar`` in this driver (through a 0-CPU ``ray.util.queue.Queue`` drained
    by a thread), and the function that stops the relay once the run has ended."""
    import threading

    from ray.train import UserCallback
    from ray.util.queue import Empty, Queue

    queue = Queue(actor_options={"num_cpus": 0})

    class EpochRelay(UserCallback):
        def after_report(self, run_context: Any, metrics: list, checkpoint: Any) -> None:
            m = metrics[0] if metrics else {}
            if "epochs" in m:
                queue.put_nowait((int(m["epoch"]), int(m["epochs"]), float(m["loss"])))

    done = threading.Event()

    def drain() -> None:
        while True:
            try:
                bar(*queue.get(timeout=0.5))
            except Empty:
                if done.is_set():
                    return
            except Exception:  # the queue's actor is gone: the run is over
                return

    thread = threading.Thread(target=drain, name="raysynth-epochs", daemon=True)
    thread.start()

    def stop() -> None:
        done.set()
        thread.join(timeout=10)
        queue.shutdown()

    return EpochRelay(), stop
