"""Where a diffusers model comes from, decided on the driver before any actor starts.

A model is a local folder (``model_index.json`` inside) or a Hugging Face id. An id is looked up
in the local Hugging Face cache first; when it is not there it is downloaded once, by the driver,
with diffusers' own ``DiffusionPipeline.download`` (the files ``from_pretrained`` would fetch),
never when ``HF_HUB_OFFLINE`` is set. :func:`model_status` says which of these a model is without
downloading anything (``raysynth run --dry-run``); :func:`resolve_model` makes it a local folder.
The folder then reaches the actors through the model store (:mod:`raysynth.generate.model_store`).
"""

from __future__ import annotations

import fnmatch
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raysynth.errors import ConfigError

KEY = "synthesis.generator"
INDEX = "model_index.json"

CACHED = "cached"
LOCAL = "local folder"
DOWNLOAD = "will be downloaded"
OFFLINE = "cannot be reached offline"
UNREACHABLE = "cannot be reached"


@dataclass(frozen=True)
class ModelStatus:
    """What ``--dry-run`` says of one model: ``state`` (one of the constants above), a size in
    bytes when known (what a download would fetch), and a detail (a path, the reason)."""

    model: str
    state: str
    size: int | None = None
    detail: str = ""

    @property
    def usable(self) -> bool:
        return self.state in (CACHED, LOCAL, DOWNLOAD)

    def line(self, what: str = "model") -> str:
        size = f" ({human_size(self.size)})" if self.size is not None else ""
        detail = f": {self.detail}" if self.detail else ""
        return f"{what} {self.model}: {self.state}{size}{detail}"


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"


def offline() -> bool:
    """``HF_HUB_OFFLINE`` as huggingface_hub reads it (1/true/yes/on)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def is_local_path(model: str) -> bool:
    return (
        Path(model).expanduser().exists()
        or model.startswith(("/", ".", "~"))
        or model.count("/") > 1
        or "\\" in model
    )


def cached_index(model: str) -> str | None:
    """The cached ``model_index.json`` of hub id ``model``, or None (no network)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        path = try_to_load_from_cache(model, INDEX)
    except Exception as exc:  # HFValidationError: not a valid repo id
        raise ConfigError(
            f"{KEY}.model={model!r} is neither an existing folder nor a Hugging Face id ({exc})"
        ) from exc
    return path if isinstance(path, str) else None


# Files of a hub repository that from_pretrained does not fetch for a full-precision load: other
# variants, whole-model single-file checkpoints at the top level, and .bin twins of .safetensors.
_SKIP = ("*.fp16.*", "*.non_ema.*", "*.ema.*", "*.ckpt", "*.onnx", "*.msgpack", "*.h5")


def download_size(siblings: list[tuple[str, int | None]]) -> int:
    """Bytes ``DiffusionPipeline.download`` fetches of a repository with these files (path,
    size): the components' folders, safetensors preferred to .bin, no variants."""
    names = {n for n, _ in siblings}
    total = 0
    for name, size in siblings:
        if "/" not in name and name.endswith((".safetensors", ".bin", ".pt")):
            continue  # a single-file checkpoint at the top: not part of the diffusers layout
        if any(fnmatch.fnmatch(name, p) for p in _SKIP):
            continue
        if name.endswith(".bin") and name[:-4] + ".safetensors" in names:
            continue
        total += size or 0
    return total


def model_status(model: str) -> ModelStatus:
    """Whether ``model`` can be loaded here, without downloading anything."""
    from raysynth.generate.single_file import is_single_file

    if is_single_file(model):  # one checkpoint file (its component configs: single_file.py)
        path = Path(model).expanduser()
        if path.is_file():
            return ModelStatus(model, LOCAL, size=path.stat().st_size, detail=str(path))
        return ModelStatus(model, UNREACHABLE, detail="no such file on this machine")
    if is_local_path(model):
        folder = Path(model).expanduser()
        if (folder / INDEX).is_file():
            return ModelStatus(model, LOCAL, detail=str(folder))
        return ModelStatus(model, UNREACHABLE, detail=f"{folder / INDEX} is missing")
    index = cached_index(model)
    if index is not None:
        return ModelStatus(model, CACHED, detail=str(Path(index).parent))
    if offline():
        return ModelStatus(model, OFFLINE, detail="not in the local cache and HF_HUB_OFFLINE is set")
    try:
        from huggingface_hub import HfApi

        info = HfApi().model_info(model, files_metadata=True)
    except Exception as exc:  # no network, no such repo, gated: say it as one thing
        return ModelStatus(model, UNREACHABLE, detail=f"{type(exc).__name__}: {_first_line(exc)}")
    files = [(s.rfilename, s.size) for s in info.siblings or []]
    return ModelStatus(model, DOWNLOAD, size=download_size(files), detail="from the Hugging Face hub")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else ""


def model_index(model: str) -> dict[str, Any]:
    """The parsed ``model_index.json`` of ``model`` (only that small file is fetched when the
    model is neither a folder nor cached); a :class:`ConfigError` says why it cannot be read."""
    status = model_status(model)
    if status.state in (LOCAL, CACHED):
        path = Path(status.detail) / INDEX
    elif status.state == DOWNLOAD:  # read over the network, not into the cache: the cache
        from huggingface_hub import HfFileSystem  # would then look as if it held the model

        return json.loads(HfFileSystem().read_text(f"{model}/{INDEX}"))
    else:
        raise ConfigError(_unusable(status))
    return json.loads(path.read_text())


def _unusable(status: ModelStatus) -> str:
    if status.state == OFFLINE:
        return (
            f"{KEY}.model={status.model!r} is not in the local Hugging Face cache and cannot be "
            f"loaded offline (HF_HUB_OFFLINE is set); download it first (`hf download "
            f"{status.model}`), unset HF_HUB_OFFLINE, or pass a local folder"
        )
    if is_local_path(status.model):
        return (
            f"{KEY}.model={status.model!r}: no diffusers pipeline there ({status.detail}); pass a "
            "folder written by DiffusionPipeline.save_pretrained or a Hugging Face id"
        )
    return (
        f"{KEY}.model={status.model!r} is not in the local Hugging Face cache and cannot be "
        f"downloaded ({status.detail}); check the id and the network, or pass a local folder"
    )


def resolve_model(model: str) -> Path:
    """``model`` as a local folder on this machine: the folder itself, or the snapshot in the
    Hugging Face cache, completed now when files are missing (once, by the driver; offline: only
    what is cached)."""
    status = model_status(model)
    if status.state == LOCAL:
        return Path(status.detail)
    if not status.usable:
        raise ConfigError(_unusable(status))
    from diffusers import DiffusionPipeline

    try:
        return Path(DiffusionPipeline.download(model, local_files_only=offline()))
    except Exception as exc:  # network, disk, a half-cached snapshot
        raise ConfigError(
            f"{KEY}.model={model!r} could not be fetched ({type(exc).__name__}: "
            f"{_first_line(exc)}); check the id and the network, or pass a local folder"
        ) from exc
