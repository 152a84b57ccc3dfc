"""The base types every diffusion generator raysynth drives shares (DESIGN §1).

A :class:`Generator` turns plan rows into images. It is built once per Ray Data actor (models load
in the actor's ``__init__``) from a :class:`GeneratorSpec` — plain data that travels to the actors
— by :func:`raysynth.generate.factory.build_generator`. ``pixel`` is the class-conditional pixel
model raysynth trains (the digits preset, :mod:`raysynth.generate.pixel_generator`); ``text2image``
and ``unclip`` are latent diffusion pipelines loaded with diffusers' own ``from_pretrained``
(:mod:`raysynth.generate.text2image`, :mod:`raysynth.generate.unclip`). This module holds only what
they share — the spec, the protocol, the result type, dtypes, device resolution and PNG encoding —
and imports none of them.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from raysynth import devices
from raysynth.config.schema import FeedbackConfig, GeneratorConfig
from raysynth.storage import RemotePath

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class GeneratedImage:
    """One result: PNG bytes (None when the safety checker dropped it), the feedback criterion
    of the final image (None without feedback guidance), and whether it was flagged."""

    png: bytes | None
    criterion: float | None = None
    flagged: bool = False


@dataclass
class GeneratorSpec:
    """Everything an actor needs to build its generator (small, picklable).

    ``pixel_folder``: the trained pixel model (kind ``pixel``); ``classifier_folder``: the
    guiding classifier checkpoint (feedback guidance); ``gaussians``: per-class mean, precision
    and log-det for the hardness criterion (numpy arrays); ``real_images``: path of the real
    Parquet split whose images condition unCLIP (looked up by ``cond_id``).
    """

    generator: GeneratorConfig
    feedback: FeedbackConfig
    class_names: list[str]
    pixel_folder: str | RemotePath = ""  # a RemotePath: in the run directory on shared storage
    classifier_folder: str | RemotePath = ""
    gaussians: dict[str, np.ndarray] | None = None
    real_images: str | RemotePath = ""
    channels: int = 3
    image_size: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    # the driver-resolved model (a ModelRef of raysynth.generate.model_store; None: load
    # generator.model as configured), the GPUs and rows per call of each generator actor
    model_ref: Any = None
    gpus: float = 0.0
    batch_size: int = 1


class Generator(Protocol):
    """Makes one image per plan row; same row (same seed) → byte-identical image."""

    def identity(self) -> dict[str, Any]:
        """Provenance stored with every image: model, scheduler and config, guidance, LoRA."""
        ...

    def generate(self, rows: list[dict[str, Any]]) -> list[GeneratedImage]: ...


def resolve_device(name: str, gpus: float = 0.0) -> torch.device:
    """The generator actor's device; ``gpus`` > 0 (Ray gave it a GPU) makes a CUDA that does not
    work an error with its cause, not a silent CPU."""
    return devices.resolve_device(
        name, "synthesis.generator.device",
        "give the actors GPUs with synthesis.pool.gpus_per_actor", gpus=gpus,
    )


def png_bytes(image: np.ndarray) -> bytes:
    """``uint8 [H, W, C]`` → PNG bytes (deterministic encoder settings)."""
    from PIL import Image

    arr = image[..., 0] if image.shape[-1] == 1 else image
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def identity_json(gen: Generator) -> str:
    return json.dumps(gen.identity(), sort_keys=True, default=str)
