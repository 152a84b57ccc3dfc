"""Which torch device a process computes on: the one place that turns a configured device name
(``auto`` | ``cpu`` | ``cuda``) into a ``torch.device``.

Call it inside the process that does the work (an actor, a trial, a Train worker), never on the
driver on its behalf: ``auto`` means "the GPU this process can see", which only that process knows.
"""

from __future__ import annotations

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
