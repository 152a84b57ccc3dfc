"""Builds the generator a :class:`~raysynth.generate.generators.GeneratorSpec` names
(``synthesis.generator.kind``): the pixel model, Stable Diffusion / SDXL or Stable unCLIP. Called
once per actor; it is the one module that knows every generator implementation.
"""

from __future__ import annotations

from raysynth.errors import ConfigError
from raysynth.generate.generators import Generator, GeneratorSpec
from raysynth.generate.pixel_generator import PixelGenerator
from raysynth.generate.text2image import Text2ImageGenerator
from raysynth.generate.unclip import UnclipGenerator


def build_generator(spec: GeneratorSpec) -> Generator:
    """Construct the generator a spec names (called once per actor)."""
    kind = spec.generator.kind
    if kind == "pixel":
        return PixelGenerator(spec)
    if kind == "text2image":
        return Text2ImageGenerator(spec)
    if kind == "unclip":
        return UnclipGenerator(spec)
    raise ConfigError(f"synthesis.generator.kind={kind!r} is not a generator raysynth knows")
