"""The ``unclip`` generator: Stable unCLIP 2.1 (``StableUnCLIPImg2ImgPipeline``), one image per plan
row from its prompt and the real image its ``cond_id`` names, sampled by the shared
:class:`~raysynth.generate.latent_sampling.LatentSampler`.

The UNet's ``class_labels`` are the CLIP image embedding of the real image named by the row's
``cond_id`` (noised at ``noise_level`` 0 by the pipeline's own normaliser and noising scheduler)
concatenated with the sinusoidal noise-level embedding; the unconditional branch is the all-zero
vector, as in the diffusers pipeline. With probability ``image_dropout`` (a per-row draw) the
conditional vector is zeroed too — the same "no image" input the model saw in training — so only
the prompt conditions that row (paper 002's dual conditioning with dropout for diversity).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import torch

from raysynth import columns as col
from raysynth.errors import ConfigError, DataError
from raysynth.generate.generators import GeneratedImage, GeneratorSpec
from raysynth.generate.latent_conditioning import EMBED_CACHE_SIZE
from raysynth.generate.latent_sampling import LatentSampler
from raysynth.generate.loading import KEY


class UnclipGenerator:
    """Stable unCLIP 2.1: the row's prompt plus the CLIP image embedding of its ``cond_id`` image."""

    def __init__(self, spec: GeneratorSpec) -> None:
        if not spec.real_images:
            raise ConfigError(
                f"{KEY}.kind=unclip conditions on real images: the generator spec needs "
                "real_images (the real split's Parquet path)"
            )
        self.sampler = LatentSampler(spec)
        self.real_images = spec.real_images
        self._embeds: dict[str, torch.Tensor] = {}

    def identity(self) -> dict[str, Any]:
        return {
            **self.sampler.identity(),
            "image_dropout": self.sampler.spec.generator.image_dropout,
            "noise_level": 0,
            "image_conditioning": "CLIP image embedding of cond_id; dropped → zero vector",
        }

    def generate(self, rows: list[dict[str, Any]]) -> list[GeneratedImage]:
        return self.sampler.generate(rows, self.image_conditioning)

    def image_conditioning(
        self, rows: Sequence[dict[str, Any]], generators: list[torch.Generator]
    ) -> torch.Tensor:
        """``[B, 2E]``: noised image embedding ⊕ noise-level embedding, zeroed where dropped.

        Per row, after its initial latents: one uniform draw decides the dropout, then the
        embedding noise (``noise_level`` 0 still adds ``√(1−ᾱ_0)`` of it).
        """
        pipe = self.sampler.pipe
        embeds = self.image_embeddings([r.get(col.COND_ID) for r in rows])
        p = self.sampler.spec.generator.image_dropout
        drop = torch.tensor([float(torch.rand((), generator=g)) < p for g in generators])
        noise = torch.stack([torch.randn(embeds.shape[1], generator=g) for g in generators])
        with torch.no_grad():
            out = pipe.noise_image_embeddings(
                embeds, noise_level=0, noise=noise.to(embeds.device, embeds.dtype)
            )
        return out * (~drop).to(out.device, out.dtype).unsqueeze(1)

    def image_embeddings(self, cond_ids: Sequence[Any]) -> torch.Tensor:
        """``[B, E]`` CLIP image embeddings, each image encoded alone and cached by id."""
        missing = sorted({str(i) for i in cond_ids if i is not None} - set(self._embeds))
        if None in cond_ids:
            raise DataError(f"unCLIP rows need a {col.COND_ID}; a row of this batch has none")
        if missing:
            if len(self._embeds) + len(missing) > EMBED_CACHE_SIZE:
                self._embeds.clear()
            for cid, png in self._read_images(missing).items():
                self._embeds[cid] = self._encode_image(png)
        return torch.stack([self._embeds[str(i)] for i in cond_ids])

    def _read_images(self, ids: list[str]) -> dict[str, bytes]:
        import pyarrow.parquet as pq

        from raysynth.storage import fs_path

        fs, where = fs_path(self.real_images)  # local, or the run directory's store
        table = pq.read_table(
            where,
            filesystem=fs,
            columns=[col.SAMPLE_ID, col.IMAGE],
            filters=[(col.SAMPLE_ID, "in", ids)],
        )
        found = dict(
            zip(table.column(col.SAMPLE_ID).to_pylist(), table.column(col.IMAGE).to_pylist())
        )
        absent = [i for i in ids if i not in found]
        if absent:
            raise DataError(
                f"cond_id {absent[:5]} not found in the real images {self.real_images}; the plan "
                "must name real sample_ids of that split"
            )
        return found

    def _encode_image(self, png: bytes) -> torch.Tensor:
        from PIL import Image

        pipe = self.sampler.pipe
        image = Image.open(io.BytesIO(png)).convert("RGB")
        pixels = pipe.feature_extractor(images=image, return_tensors="pt").pixel_values
        encoder = pipe.image_encoder
        with torch.no_grad():
            return encoder(pixels.to(self.sampler.device, encoder.dtype)).image_embeds[0]
