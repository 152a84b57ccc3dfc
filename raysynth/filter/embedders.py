"""Image (and text) embedders for filtering and pseudo-labelling (METHODS §3–4).

Two embedders share one :class:`Embedder` protocol — PNG bytes in, L2-normalised float32 rows
out — so the filter never knows which one it runs:

- :class:`ClassifierEmbedder`: penultimate features of a raysynth classifier checkpoint (the
  embedded default for small images, no download of any kind);
- :class:`ClipEmbedder`: an open_clip model (``CLIP(I)`` of METHODS §3, ``F`` / ``G`` of §4).

open_clip weights are resolved without the network whenever possible: a local checkpoint file is
used as is, and a pretrained tag (``"openai"``) is looked up in the local caches first. Only a tag
that is not cached is downloaded, and not at all when ``HF_HUB_OFFLINE`` is set; anything that
cannot be loaded is a :class:`~raysynth.errors.ConfigError` that says what was tried.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from raysynth.config.schema import FilterConfig
from raysynth.data.images import decode_png, to_tensor_array
from raysynth.errors import ConfigError
from raysynth.filter.select import cosine_softmax
from raysynth.filter.threshold import normalize

LOCAL_DIR = "local-dir:"
HF_HUB = "hf-hub:"


@runtime_checkable
class Embedder(Protocol):
    """``embed_images(pngs) -> [N, dim]`` and, when ``has_text``, ``embed_texts(texts) -> [T, dim]``;
    every row float32 with unit L2 norm."""

    dim: int
    has_text: bool

    def embed_images(self, pngs: list[bytes]) -> np.ndarray: ...

    def embed_texts(self, texts: list[str]) -> np.ndarray: ...


def _unit_rows(x: torch.Tensor | np.ndarray, dim: int) -> np.ndarray:
    """``[N, D]`` float32 with unit rows; an empty batch stays ``[0, dim]``."""
    arr = x.detach().float().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)
    if len(arr) == 0:
        return np.zeros((0, dim), np.float32)
    return normalize(arr).astype(np.float32)


# -- classifier features -------------------------------------------------------------------


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
        from raysynth.train.checkpoint import MODEL_JSON, load_model

        folder = Path(folder)
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
        want = json.loads((folder / MODEL_JSON).read_text()).get("encoder", {}).get("in_channels")
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
        emb = _unit_rows(torch.cat(feats) if feats else torch.zeros(0, self.dim), self.dim)
        return emb, (torch.cat(probs).numpy() if probs else None)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        raise ConfigError(
            "the classifier embedder has no text tower; text scores and zero-shot labels need "
            "filter.embedder=open_clip"
        )


# -- open_clip ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ClipWeights:
    """Where an open_clip model's weights come from, resolved before anything is built.

    ``checkpoint``: the local file handed to open_clip (None for ``local-dir:`` models, whose
    folder holds them); ``tag_cfg``: the pretrained tag's preprocessing and ``quick_gelu``.
    """

    model_name: str
    checkpoint: str | None
    source: str  # said in logs and errors: "file", "tag 'openai' (cache)", ...
    tag_cfg: dict[str, Any] = field(default_factory=dict)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _check_model_name(model_name: str) -> str:
    """The name open_clip will look up (``/`` → ``-``); ConfigError when it knows no such model."""
    import open_clip

    if model_name.startswith(LOCAL_DIR):
        folder = Path(model_name[len(LOCAL_DIR) :])
        if not (folder / "open_clip_config.json").is_file():
            raise ConfigError(
                f"filter.clip_model {model_name!r}: {folder} has no open_clip_config.json; "
                "a local-dir: model needs a folder with open_clip_config.json and its weights"
            )
        return model_name
    if model_name.startswith(HF_HUB):
        return model_name
    name = model_name.replace("/", "-")
    if open_clip.get_model_config(name) is None:
        known = open_clip.list_models()
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
        examples = ", ".join(
            close or [m for m in ("ViT-B-32", "ViT-B-16", "ViT-L-14") if m in known]
        )
        raise ConfigError(
            f"open_clip has no model {model_name!r} (filter.clip_model); try one of {examples} "
            f"— open_clip.list_models() lists all {len(known)}"
        )
    return name


def _cached_tag_file(tag_cfg: dict[str, Any], cache_dir: str | None) -> tuple[str | None, list]:
    """The tag's weights in the local Hugging Face or open_clip URL cache (no network)."""
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    looked: list[str] = []
    if tag_cfg.get("file"):
        return str(tag_cfg["file"]), looked
    hub = tag_cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(hub)
        names = [filename] if filename else [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
        if filename.endswith((".bin", ".pth")):
            names.insert(0, filename[:-4] + ".safetensors")  # what open_clip prefers too
        for name in names:
            looked.append(f"Hugging Face cache {repo}/{name}")
            hit = try_to_load_from_cache(repo, name, cache_dir=cache_dir)
            if isinstance(hit, str) and os.path.isfile(hit):
                return hit, looked
    url = tag_cfg.get("url", "")
    if url:
        path = os.path.join(cache_dir or os.path.expanduser("~/.cache/clip"), os.path.basename(url))
        looked.append(path)
        if os.path.isfile(path):
            return path, looked
    return None, looked


def resolve_clip_weights(
    model_name: str, pretrained: str | None, cache_dir: str | None = None
) -> ClipWeights:
    """Resolve ``(model_name, pretrained)`` to a local weights file, or raise ConfigError.

    ``pretrained`` is an open_clip tag (``"openai"``, ``"laion2b_s34b_b79k"``: its weights must be
    in the local cache, or downloadable when the network is reachable and ``HF_HUB_OFFLINE`` is
    unset) or the path of a local checkpoint file (an open_clip state dict as ``.safetensors``,
    or ``.pt`` / ``.bin`` readable with ``torch.load(weights_only=True)``). With a
    ``local-dir:FOLDER`` model name the folder's own weights are used and ``pretrained`` is ignored.
    """
    import open_clip

    name = _check_model_name(model_name)
    if name.startswith((LOCAL_DIR, HF_HUB)):
        return ClipWeights(name, None, name.split(":", 1)[0])
    if not pretrained:
        raise ConfigError(
            f"open_clip model {name!r} needs pretrained weights: set filter.clip_pretrained to a "
            f"tag ({', '.join(open_clip.list_pretrained_tags_by_model(name)[:5]) or 'none known'}) "
            "or to a local checkpoint file"
        )
    tag_cfg = open_clip.get_pretrained_cfg(name, pretrained)
    if not tag_cfg:
        if os.path.isfile(pretrained):
            return ClipWeights(name, str(pretrained), "file")
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise ConfigError(
            f"filter.clip_pretrained {pretrained!r} is neither a local checkpoint file (no such "
            f"file) nor an open_clip tag for {name!r} (its tags: {', '.join(tags) or 'none'}); "
            "pass the path of a local open_clip checkpoint (.safetensors, .pt or .bin state dict)"
        )
    path, looked = _cached_tag_file(tag_cfg, cache_dir)
    if path is not None:
        return ClipWeights(name, path, f"tag {pretrained!r} (local cache)", tag_cfg)
    where = "; ".join(looked) or "nowhere"
    advice = (
        f"download them where the network is reachable, or set filter.clip_pretrained to a local "
        f"checkpoint file for {name!r} (.safetensors, .pt or .bin open_clip state dict)"
    )
    if _offline():
        raise ConfigError(
            f"the weights of open_clip {name!r} tag {pretrained!r} are not in the local cache "
            f"(looked at: {where}) and HF_HUB_OFFLINE is set; {advice}"
        )
    try:
        path = open_clip.download_pretrained(tag_cfg, cache_dir=cache_dir)
    except Exception as e:  # huggingface_hub / urllib raise many kinds; say it as one thing
        raise ConfigError(
            f"the weights of open_clip {name!r} tag {pretrained!r} are not in the local cache "
            f"(looked at: {where}) and could not be downloaded ({type(e).__name__}: {e}); {advice}"
        ) from e
    return ClipWeights(name, str(path), f"tag {pretrained!r} (downloaded)", tag_cfg)


def check_clip_available(
    model_name: str, pretrained: str | None, cache_dir: str | None = None
) -> ClipWeights:
    """Driver-side check before any actor starts: the model name is known and its weights are a
    local file (see :func:`resolve_clip_weights`). Builds no model."""
    return resolve_clip_weights(model_name, pretrained, cache_dir)


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
        return _unit_rows(torch.cat(out) if out else torch.zeros(0, self.dim), self.dim)

    @torch.inference_mode()
    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """``[T, dim]`` unit-norm ``G(t)``."""
        out = []
        for i in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(list(texts[i : i + self.batch_size])).to(self.device)
            out.append(self.model.encode_text(tokens).float().cpu())
        return _unit_rows(torch.cat(out) if out else torch.zeros(0, self.dim), self.dim)


# -- choice and zero-shot ------------------------------------------------------------------


def uses_classifier(cfg: FilterConfig, image_size: int) -> bool:
    """``auto`` embeds small images (≤ 32 px) with the real-split classifier, photos with CLIP."""
    return cfg.embedder == "classifier" or (cfg.embedder == "auto" and image_size <= 32)


def build_embedder(
    filter_cfg: FilterConfig,
    *,
    classifier_folder: str | Path | None,
    channels: int,
    image_size: int,
    device: str | torch.device = "cpu",
) -> Embedder:
    """The embedder ``filter.embedder`` names (``auto``: classifier when ``image_size <= 32``)."""
    if uses_classifier(filter_cfg, image_size):
        if not classifier_folder:
            raise ConfigError(
                "filter.embedder uses the classifier but no trained classifier checkpoint was "
                "given; train one on the real split first or set filter.embedder=open_clip"
            )
        return ClassifierEmbedder(
            classifier_folder, channels, image_size, device, filter_cfg.batch_size
        )
    return ClipEmbedder(
        filter_cfg.clip_model, filter_cfg.clip_pretrained, device, filter_cfg.batch_size
    )


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
