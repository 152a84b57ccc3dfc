"""Which torch device a process computes on: the one place that turns a configured device name
(``auto`` | ``cpu`` | ``cuda``) into a ``torch.device``.

Call it inside the process that does the work (an actor, a trial, a Train worker), never on the
driver on its behalf: ``auto`` means "the GPU this process can see", which only that process knows.
Also the one place that sets torch's CPU threads for a stage (:func:`torch_threads`, restored after).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from raysynth.errors import ConfigError


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def resolve_device(name: str = "auto", key: str = "device", hint: str = "") -> Any:
    """``auto`` → ``cuda`` when this process sees a CUDA device, else ``cpu``; ``cpu`` as is;
    ``cuda`` without a CUDA device is a :class:`ConfigError` naming ``key`` (and ``hint``, what
    to set instead)."""
    import torch

    if name == "auto":
        return torch.device("cuda" if cuda_available() else "cpu")
    if name == "cuda" and not cuda_available():
        raise ConfigError(
            f"{key}=cuda but this process has no CUDA device; use auto or cpu"
            + (f", or {hint}" if hint else "")
        )
    return torch.device(name)


def cores() -> int:
    """The CPU cores this process may run on (its affinity mask; ``os.cpu_count()`` elsewhere)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def threads_for(configured: int = 0) -> int:
    """Torch threads for work this process does itself: ``configured``, or every core (0)."""
    return int(configured) if configured > 0 else cores()


@contextmanager
def torch_threads(n: int) -> Iterator[int]:
    """Run the block with ``torch.set_num_threads(n)`` and restore the previous count after, so
    a stage never leaves its thread count to the next one (a training loop that sets one thread
    in the driver used to leave every later driver stage on one core)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)
