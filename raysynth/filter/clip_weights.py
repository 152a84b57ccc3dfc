"""Where an open_clip model's weights come from, resolved before any model is built.

Weights are resolved without the network whenever possible: a local checkpoint file is used as
is, and a pretrained tag (``"openai"``) is looked up in the local caches first. Only a tag that is
not cached is downloaded, and not at all when ``HF_HUB_OFFLINE`` is set; anything that cannot be
loaded is a :class:`~raysynth.errors.ConfigError` that says what was tried.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raysynth.errors import ConfigError

LOCAL_DIR = "local-dir:"
HF_HUB = "hf-hub:"


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
    return _tag_weights(name, pretrained, tag_cfg, cache_dir)


def _tag_weights(
    name: str, pretrained: str, tag_cfg: dict[str, Any], cache_dir: str | None
) -> ClipWeights:
    """A pretrained tag's weights: from the local cache, else downloaded (never when offline)."""
    import open_clip

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


def clip_status(model_name: str, pretrained: str | None, cache_dir: str | None = None) -> Any:
    """What ``raysynth run --dry-run`` says of an open_clip model's weights, without downloading:
    a :class:`~raysynth.generate.model_source.ModelStatus` ("cached", "will be downloaded", "cannot
    be reached offline"); names and files that are wrong raise ConfigError as in
    :func:`resolve_clip_weights`."""
    import open_clip

    from raysynth.generate.model_source import CACHED, DOWNLOAD, LOCAL, OFFLINE, ModelStatus

    what = f"{model_name}/{pretrained}" if pretrained else model_name
    name = _check_model_name(model_name)
    tag_cfg = open_clip.get_pretrained_cfg(name, pretrained) if pretrained else {}
    if name.startswith((LOCAL_DIR, HF_HUB)) or not tag_cfg:
        return ModelStatus(what, LOCAL, detail=resolve_clip_weights(model_name, pretrained).source)
    path, _looked = _cached_tag_file(tag_cfg, cache_dir)
    if path is not None:
        return ModelStatus(what, CACHED, detail=path)
    if _offline():
        return ModelStatus(what, OFFLINE, detail="not in the local cache and HF_HUB_OFFLINE is set")
    return ModelStatus(what, DOWNLOAD, detail=tag_cfg.get("hf_hub") or tag_cfg.get("url", ""))
