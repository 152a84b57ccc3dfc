"""The open_clip embedder (``CLIP(I)`` of METHODS §3, ``F`` / ``G`` of §4) and CLIP zero-shot
class probabilities from its text tower (METHODS §4 step 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from raysynth.data.images import decode_png
from raysynth.errors import ConfigError
from raysynth.filter.clip_weights import resolve_clip_weights
from raysynth.filter.embedding import Embedder, unit_rows
from raysynth.filter.select import cosine_softmax
from raysynth.filter.threshold import normalize


class ClipEmbedder:
    """open_clip image and text towers, ``F(x)`` and ``G(t)`` of METHODS §4, unit-norm rows.

    Images are decoded from PNG bytes to RGB (grey is replicated, alpha composited on white) and
    go through the model's own evaluation transform (resize, centre crop, normalise).
    """

    has_text = True

    def __init__(
        self,
        model_name: str,
        pretrained: str | None,
        device: str | torch.device = "cpu",
        batch_size: int = 64,
        cache_dir: str | None = None,
    ) -> None:
        import open_clip

        from raysynth.devices import resolve_device

        device = resolve_device(device, "filter.device") if isinstance(device, str) else device
        weights = resolve_clip_weights(model_name, pretrained, cache_dir)
        tag = weights.tag_cfg
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                weights.model_name,
                pretrained=weights.checkpoint,
                device=device,
                cache_dir=cache_dir,
                # a tag's weights come with their preprocessing and activation; a file is used
                # with the architecture's own (open_clip's behaviour for files)
                force_quick_gelu=bool(tag.get("quick_gelu", False)),
                image_mean=tag.get("mean"),
                image_std=tag.get("std"),
                image_interpolation=tag.get("interpolation"),
                image_resize_mode=tag.get("resize_mode"),
            )
        except Exception as e:  # state-dict mismatch, corrupt or pickled file, missing folder
            raise ConfigError(
                f"could not load open_clip {weights.model_name!r} from {weights.source} "
                f"({weights.checkpoint or weights.model_name}): {type(e).__name__}: {e}"
            ) from e
        self.weights = weights
        self.model = model.eval()
        self.preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(weights.model_name, cache_dir=cache_dir)
        self.device = torch.device(device)
        self.batch_size = batch_size
        with torch.inference_mode():
            self.dim = int(self.model.encode_text(self.tokenizer([""]).to(self.device)).shape[-1])

    @torch.inference_mode()
    def embed_images(self, pngs: list[bytes]) -> np.ndarray:
        """``[N, dim]`` unit-norm ``F(x)``."""
        from PIL import Image

        out = []
        for i in range(0, len(pngs), self.batch_size):
            chunk = pngs[i : i + self.batch_size]
            x = torch.stack(
                [
                    self.preprocess(Image.fromarray(decode_png(p, 3, name=f"image {i + j}")))
                    for j, p in enumerate(chunk)
                ]
            )
            out.append(self.model.encode_image(x.to(self.device)).float().cpu())
        return unit_rows(torch.cat(out) if out else torch.zeros(0, self.dim), self.dim)

    @torch.inference_mode()
    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """``[T, dim]`` unit-norm ``G(t)``."""
        out = []
        for i in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(list(texts[i : i + self.batch_size])).to(self.device)
            out.append(self.model.encode_text(tokens).float().cpu())
        return unit_rows(torch.cat(out) if out else torch.zeros(0, self.dim), self.dim)


def class_text_embeddings(
    embedder: Embedder,
    class_names: Sequence[str],
    templates: Sequence[str] = ("a photo of a {}.",),
) -> np.ndarray:
    """The text classifier ``G(c)``: ``[C, D]`` unit rows, one per class (METHODS §4 step 1).

    Each row is CLIP's prompt ensemble: the unit text embeddings of every template filled with the
    class name (``{}`` or ``{c}`` marks where), averaged and renormalised.
    """
    if not embedder.has_text:
        raise ConfigError(
            "zero-shot pseudo-labels need an embedder with a text tower; set "
            "filter.embedder=open_clip"
        )
    if not templates or any("{}" not in t and "{c}" not in t for t in templates):
        raise ValueError(
            f"every template needs a '{{}}' or '{{c}}' for the class name, got {templates!r}"
        )
    prompts = [t.format(c, c=c) for c in class_names for t in templates]
    text = embedder.embed_texts(prompts).reshape(len(class_names), len(templates), -1)
    return normalize(text.mean(axis=1)).astype(np.float32)


def zero_shot_probs(
    embedder: Embedder,
    image_emb: np.ndarray,
    class_names: Sequence[str],
    templates: Sequence[str] = ("a photo of a {}.",),
    temperature: float = 0.01,
) -> np.ndarray:
    """CLIP zero-shot ``p: [N, C]``, ``p_c = softmax_c(cos(F(x), G(c)) / τ)`` (METHODS §4 step 1).

    ``G(c)`` is the prompt ensemble of :func:`class_text_embeddings`. ``image_emb: [N, D]``.
    """
    text = class_text_embeddings(embedder, class_names, templates)
    return cosine_softmax(image_emb, text, temperature)
