"""The classifier-feature embedder (METHODS §3): penultimate features of a raysynth classifier
checkpoint as unit rows — the embedded default for small images, with no download of any kind.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from raysynth.data.images import to_tensor_array
from raysynth.errors import ConfigError
from raysynth.filter.embedding import unit_rows


class ClassifierEmbedder:
    """Penultimate features ``normalize(model.features(x))`` of a raysynth classifier checkpoint.

    Images are decoded with :func:`to_tensor_array` at the classifier's ``channels`` and
    ``image_size`` (0 keeps the source size), exactly as the classifier saw them in training.
    A contrastive checkpoint works too: its encoder output ``h`` is used.
    """

    has_text = False

    def __init__(
        self,
        folder: str | Path,
        channels: int,
        image_size: int,
        device: str | torch.device = "cpu",
        batch_size: int = 64,
    ) -> None:
        from raysynth.storage import as_path
        from raysynth.train.checkpoint import MODEL_JSON, load_model, recover

        folder = as_path(folder)  # local, or the run directory's RemotePath (read where it is)
        model = load_model(folder, device).eval()  # RunDirError when not a checkpoint
        if hasattr(model, "features"):
            self._features = model.features
        elif hasattr(model, "encoder"):
            self._features = model.encoder
        else:
            raise ConfigError(
                f"{folder} holds a {type(model).__name__}, which does not take images; "
                "filter.embedder=classifier needs an image classifier or contrastive checkpoint"
            )
        want = json.loads((recover(folder) / MODEL_JSON).read_text()).get("encoder", {}).get("in_channels")
        if want is not None and want != channels:
            raise ConfigError(
                f"the classifier in {folder} takes {want}-channel images but the filter was "
                f"asked to embed {channels}-channel ones; set data.channels to {want}"
            )
        self.model = model
        self.channels = channels
        self.image_size = image_size
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.dim = int(model.encoder.out_dim)

    def embed_images(self, pngs: list[bytes]) -> np.ndarray:
        """``[N, dim]`` unit-norm penultimate features."""
        return self.embed_with_probs(pngs)[0]

    @torch.inference_mode()
    def embed_with_probs(self, pngs: list[bytes]) -> tuple[np.ndarray, np.ndarray | None]:
        """The features and ``[N, C]``, the softmax of the classifier's own head on them (None
        for a contrastive model), from one decode and one forward pass per chunk."""
        head = getattr(self.model, "fc", None)
        feats, probs = [], []
        for i in range(0, len(pngs), self.batch_size):
            x = to_tensor_array(pngs[i : i + self.batch_size], self.channels, self.image_size)
            f = self._features(torch.from_numpy(x).to(self.device))
            feats.append(f.float().cpu())
            if head is not None:
                probs.append(torch.softmax(head(f).float(), 1).cpu())
        emb = unit_rows(torch.cat(feats) if feats else torch.zeros(0, self.dim), self.dim)
        return emb, (torch.cat(probs).numpy() if probs else None)

    @torch.inference_mode()
    def embed_arrays(self, x: np.ndarray) -> np.ndarray:
        """``[N, dim]`` unit-norm features of images already decoded as training arrays
        (``[N, C, H, W]`` float32, as :func:`to_tensor_array` makes them)."""
        feats = [self._features(torch.from_numpy(x[i : i + self.batch_size]).to(self.device))
                 .float().cpu() for i in range(0, len(x), self.batch_size)]
        return unit_rows(torch.cat(feats) if feats else torch.zeros(0, self.dim), self.dim)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        raise ConfigError(
            "the classifier embedder has no text tower; text scores and zero-shot labels need "
            "filter.embedder=open_clip"
        )
