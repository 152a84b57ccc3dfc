"""From a latent diffusion pipeline's final latents to stored images: the VAE decode (with its own
scaling factor, or its ``latents_mean`` / ``latents_std`` where the config has them; in float32
when an SDXL VAE in float16 says ``force_upcast``), SDXL's invisible watermark where the pipeline
adds one, the feedback criterion of the final image, the safety checker, and PNG encoding at the
output size and channels. :meth:`LatentOutput.decode_for_classifier` is the differentiable decode
feedback guidance backpropagates through.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from raysynth.generate.generators import GeneratedImage, png_bytes
from raysynth.generate.guidance import FeedbackGuidance


def upcast_sdxl_vae(pipe: Any) -> None:
    """The SDXL VAE overflows in float16: decode in float32 where its config says
    ``force_upcast`` (as ``StableDiffusionXLPipeline``)."""
    if pipe.vae.dtype == torch.float16 and pipe.vae.config.get("force_upcast", False):
        pipe.vae.to(torch.float32)


class LatentOutput:
    """Decoding, scoring, safety checking and encoding of one loaded pipeline's latents.

    ``channels`` and ``image_size`` (0: the model's own) are those of the stored images;
    ``safety_checker`` says whether the pipeline's checker runs.
    """

    def __init__(
        self, pipe: Any, channels: int, image_size: int, safety_checker: bool, device: torch.device
    ) -> None:
        self.pipe = pipe
        self.channels = channels
        self.image_size = image_size
        self.safety_checker = safety_checker
        self.device = device

    def vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents ``[B, C, h, w]`` → images ``[B, 3, H, W]`` in about [-1, 1] (differentiable).

        Unscaled by the VAE's own ``scaling_factor`` (0.18215 SD, 0.13025 SDXL), or
        denormalised with its ``latents_mean`` / ``latents_std`` where the config has them.
        """
        vae = self.pipe.vae
        cfg = vae.config
        mean, std = cfg.get("latents_mean"), cfg.get("latents_std")
        if mean is not None and std is not None:
            shape = (1, len(mean), 1, 1)
            mean_t = torch.tensor(mean, device=latents.device).view(shape)
            std_t = torch.tensor(std, device=latents.device).view(shape)
            latents = latents * std_t / cfg.scaling_factor + mean_t
        else:
            latents = latents / cfg.scaling_factor
        return vae.decode(latents.to(vae.dtype)).sample.float()

    def adapt_pixels(self, images: torch.Tensor) -> torch.Tensor:
        """Model-resolution RGB in [-1, 1] → what the classifier sees: the output size and
        channels of the stored images (differentiable twin of :meth:`to_png`)."""
        if self.channels == 1:
            w = torch.tensor([0.299, 0.587, 0.114], device=images.device, dtype=images.dtype)
            images = (images * w.view(1, 3, 1, 1)).sum(1, keepdim=True)
        if self.image_size and images.shape[-1] != self.image_size:
            size = (self.image_size, self.image_size)
            images = F.interpolate(images, size=size, mode="bilinear", antialias=True)
        return images

    def decode_for_classifier(self, latents: torch.Tensor) -> torch.Tensor:
        return self.adapt_pixels(self.vae_decode(latents))

    def finish(
        self,
        latents: torch.Tensor,
        labels: torch.Tensor,
        pixel_feedback: FeedbackGuidance | None,
    ) -> list[GeneratedImage]:
        """Decode, score (``pixel_feedback``'s criterion on the decoded pixels), safety-check and
        encode the final latents."""
        with torch.no_grad():
            pixels = self.vae_decode(latents)
            watermark = getattr(self.pipe, "watermark", None)
            if watermark is not None:  # SDXL's invisible watermark, where the pipeline adds it
                pixels = watermark.apply_watermark(pixels).to(pixels.device, pixels.dtype)
            pixels = pixels.clamp(-1, 1)
            crit: list[float | None] = [None] * len(latents)
            if pixel_feedback is not None:
                values = pixel_feedback.evaluate(pixels, labels).float().cpu()
                crit = [float(v) for v in values]
        arrays = ((pixels + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        flags = self.safety_flags(arrays)
        return [
            GeneratedImage(None if flagged else self.to_png(a), c, flagged)
            for a, c, flagged in zip(arrays, crit, flags)
        ]

    def to_png(self, image: np.ndarray) -> bytes:
        """``uint8 [H, W, 3]`` → PNG at the output size (PIL bicubic, antialiased) and channels."""
        from PIL import Image

        img = Image.fromarray(image)
        if self.image_size and img.size != (self.image_size, self.image_size):
            img = img.resize((self.image_size, self.image_size), Image.Resampling.BICUBIC)
        if self.channels == 1:
            return png_bytes(np.asarray(img.convert("L"))[..., None])
        return png_bytes(np.asarray(img))

    def safety_flags(self, images: np.ndarray) -> list[bool]:
        """The pipeline's safety checker on ``uint8 [B, H, W, 3]``; all False when it is off."""
        checker = getattr(self.pipe, "safety_checker", None)
        if not self.safety_checker or checker is None:
            return [False] * len(images)
        from PIL import Image

        inputs = self.pipe.feature_extractor(
            [Image.fromarray(a) for a in images], return_tensors="pt"
        )
        clip_input = inputs.pixel_values.to(self.device, checker.dtype)
        with torch.no_grad():
            _, flags = checker(clip_input=clip_input, images=images.astype(np.float32) / 255)
        return [bool(f) for f in flags]
