"""Kill an actor mid-work: the tests that a lost actor loses and duplicates nothing."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any


def kill_while_working(work: Callable[[], Any], class_name: str, before: frozenset = frozenset(),
                       timeout: float = 120) -> dict | None:
    """Run ``work()`` in a thread; a second after an alive actor whose class name contains
    ``class_name`` (and whose id is not in ``before``) is seen, SIGKILL its process; wait for
    ``work`` to end. Returns the killed actor's record (None if none was seen in time)."""
    from ray._private.state import actors

    worker = threading.Thread(target=work)
    worker.start()
    killed = None
    deadline = time.time() + timeout
    while killed is None and time.time() < deadline and worker.is_alive():
        for actor_id, a in actors().items():
            if (actor_id not in before and a["State"] == "ALIVE" and a["Pid"]
                    and class_name in a["ActorClassName"]):
                time.sleep(1.0)  # let it take a batch first
                os.kill(a["Pid"], signal.SIGKILL)  # the actor's process dies mid-batch
                killed = a
                break
        time.sleep(0.2)
    worker.join(timeout=300)
    return killed
