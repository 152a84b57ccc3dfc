"""The ``text2image`` generator: Stable Diffusion 1.x/2.x or SDXL (recognised by the pipeline's
class), one image per plan row from its prompt, negative prompt and seed, sampled by the shared
:class:`~raysynth.generate.latent_sampling.LatentSampler`.
"""

from __future__ import annotations

from typing import Any

from raysynth.generate.generators import GeneratedImage, GeneratorSpec
from raysynth.generate.latent_sampling import LatentSampler


class Text2ImageGenerator:
    """Stable Diffusion 1.x/2.x or SDXL: the row's prompt, negative prompt and seed → one image."""

    def __init__(self, spec: GeneratorSpec) -> None:
        self.sampler = LatentSampler(spec)

    def identity(self) -> dict[str, Any]:
        return self.sampler.identity()

    def generate(self, rows: list[dict[str, Any]]) -> list[GeneratedImage]:
        return self.sampler.generate(rows)
