"""Which torch device a process computes on: the one place that turns a configured device name
(``auto`` | ``cpu`` | ``cuda``) into a ``torch.device``.

Call it inside the process that does the work (an actor, a trial, a Train worker), never on the
driver on its behalf: ``auto`` means "the GPU this process can see", which only that process knows.
A process that Ray gave a GPU (``gpus > 0``) uses it or fails with the cause (:func:`cuda_problem`:
a CPU-only torch wheel, no NVIDIA driver or device, a driver too old for torch's CUDA build) —
never a silent fall-back to the CPU; ``cpu`` set explicitly is the one way to compute on the CPU
anyway.
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


def cuda_problem() -> str | None:
    """Why this process cannot compute with CUDA, in words; None when it can."""
    import torch

    if torch.version.cuda is None:
        return (
            f"torch {torch.__version__} is a CPU-only build (torch.version.cuda is None); install "
            "a CUDA build of torch on this node (pip install torch --index-url "
            "https://download.pytorch.org/whl/cu128, or use cluster/Dockerfile's image)"
        )
    if torch.cuda.is_available():
        return None
    try:
        torch.cuda.init()  # raises with the CUDA runtime's own reason
        reason = "torch.cuda.device_count() is 0"
    except Exception as exc:  # RuntimeError / AssertionError, depending on the cause
        reason = " ".join(str(exc).split())[:400]
    if "too old" in reason.lower():
        return (
            f"the NVIDIA driver is too old for torch {torch.__version__} (built for CUDA "
            f"{torch.version.cuda}): {reason}; update the driver or install a torch build for "
            "an older CUDA"
        )
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return (
        f"no CUDA device is usable in this process (CUDA_VISIBLE_DEVICES={visible!r}): {reason}; "
        "the node has no NVIDIA GPU or driver"
    )


def resolve_device(name: str = "auto", key: str = "device", hint: str = "", gpus: float = 0) -> Any:
    """``auto`` → ``cuda`` when this process sees a CUDA device, else ``cpu`` — unless the process
    was given ``gpus`` > 0 by Ray, which makes a missing CUDA a :class:`ConfigError` with its
    cause; ``cpu`` as is; ``cuda`` without a CUDA device is a :class:`ConfigError` naming ``key``
    (and ``hint``, what to set instead)."""
    import torch

    if name == "cpu":
        return torch.device("cpu")
    if cuda_available():
        return torch.device("cuda")
    if name == "auto" and gpus <= 0:
        return torch.device("cpu")
    problem = cuda_problem()
    given = f"this process was given {gpus:g} GPU(s) but " if gpus > 0 else ""
    raise ConfigError(
        f"{key}={name}: {given}CUDA is not usable here: {problem}. Fix the node, or set "
        f"{key}=cpu to compute on the CPU" + (f", or {hint}" if hint else "")
    )


def limit_threads(device: Any, cpus: float) -> None:
    """A CPU actor computes with as many torch threads as the CPUs Ray gave it (at least 1),
    not one per core of the node, which the node's other actors share."""
    import torch

    if str(device) == "cpu":
        torch.set_num_threads(max(1, int(cpus)))


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
