"""Checkpoints as safetensors plus the JSON config that built the model — no pickle anywhere.

A checkpoint folder holds ``model.safetensors`` + ``model.json`` (:func:`build_model` config) and,
for resumable training, ``optimizer.safetensors`` + ``state.json`` (epoch, param groups).

Replacement is crash-safe. The new checkpoint is written whole (every file fsynced) into a hidden
temporary folder beside the target; then the old folder is renamed to ``NAME.old``, the new one
renamed into place, the parent folder fsynced and ``NAME.old`` removed. A kill at any point leaves
a readable checkpoint: before the first rename the old folder is untouched; between the two
renames only ``NAME.old`` is there, and every reader (:func:`recover`, called by
:func:`load_model`, :func:`read_state`, :func:`restore_training` and :func:`has_checkpoint`)
renames it back into place; after the second rename the new folder is complete and a leftover
``NAME.old`` is removed.

On an object store (the run directory on ``s3://`` …: a ``RemotePath``), where a folder cannot be
renamed, a checkpoint is written new then pointed at: its files go to ``NAME/v-<time>/`` (each a
whole-object put), then ``NAME/CURRENT.json`` (one put) names that version and older versions are
deleted; :func:`recover` follows the pointer, so every reader sees the old version or the new one.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load, load_file, save

from raysynth.errors import RunDirError
from raysynth.files import atomic_write_bytes, atomic_write_json, atomic_write_text, fsync_dir
from raysynth.storage import AnyPath, RemotePath, as_path
from raysynth.train.models import build_model

log = logging.getLogger("raysynth.train")

MODEL_FILE = "model.safetensors"
MODEL_JSON = "model.json"
OPT_FILE = "optimizer.safetensors"
STATE_JSON = "state.json"
CURRENT_JSON = "CURRENT.json"  # an object store's pointer to the version in use


def _tensors(path: AnyPath, device: str = "cpu") -> dict[str, torch.Tensor]:
    if isinstance(path, RemotePath):
        return {k: v.to(device) for k, v in load(path.read_bytes()).items()}
    return load_file(str(path), device=device)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def old_folder(folder: str | Path) -> Path:
    """Where the previous checkpoint waits while ``folder`` is being replaced."""
    folder = Path(folder)
    return folder.with_name(folder.name + ".old")


def _complete(folder: AnyPath) -> bool:
    return (folder / MODEL_FILE).is_file() and (folder / MODEL_JSON).is_file()


def recover(folder: str | AnyPath) -> AnyPath:
    """Finish a replacement a kill interrupted: ``NAME.old`` renamed back when ``NAME`` is
    missing (killed between the two renames), removed when ``NAME`` is there (killed before the
    clean-up). Returns ``folder`` — on an object store the version ``CURRENT.json`` names."""
    folder = as_path(folder)
    if isinstance(folder, RemotePath):
        pointer = folder / CURRENT_JSON
        return folder / json.loads(pointer.read_text())["version"] if pointer.is_file() else folder
    old = old_folder(folder)
    if not old.exists():
        return folder
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
    elif _complete(old):
        try:
            os.replace(old, folder)
        except FileNotFoundError:  # another reader recovered it first
            pass
        else:
            fsync_dir(folder.parent)
            log.warning("recovered checkpoint %s from %s (its replacement was interrupted)",
                        folder, old.name)
    return folder


def has_checkpoint(folder: str | AnyPath) -> bool:
    """``folder`` holds a complete checkpoint (after :func:`recover`)."""
    return _complete(recover(folder))


def write_checkpoint(
    folder: str | AnyPath,
    model: torch.nn.Module,
    model_cfg: dict[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
    state: dict[str, Any] | None = None,
) -> AnyPath:
    """Write a checkpoint folder crash-safely (module docstring): whole and fsynced in a temp
    folder, then renamed into place; the previous one is readable until the new one is. Returns
    the folder that holds the files (on an object store, the new version)."""
    folder = as_path(folder)
    if isinstance(folder, RemotePath):
        return _write_remote(folder, model, model_cfg, optimizer, state)
    folder = recover(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{folder.name}.tmp-"
    for stale in folder.parent.glob(f"{glob.escape(prefix)}*"):  # temp folders of killed writes
        if re.fullmatch(re.escape(prefix) + r"[a-z0-9_]{8}", stale.name):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=folder.parent))
    try:
        _write_files(tmp, model, model_cfg, optimizer, state)
        if folder.exists():
            old = old_folder(folder)
            os.replace(folder, old)
            os.replace(tmp, folder)
            fsync_dir(folder.parent)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
        fsync_dir(folder.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _write_remote(folder: RemotePath, model: torch.nn.Module, model_cfg: dict[str, Any],
                  optimizer: torch.optim.Optimizer | None, state: dict[str, Any] | None
                  ) -> RemotePath:
    """Write-new-then-point (module docstring)."""
    version = folder / f"v-{time.time_ns()}"
    _write_files(version, model, model_cfg, optimizer, state)
    older = [p for p in folder.iterdir() if p.name.startswith("v-") and p.name != version.name]
    atomic_write_json(folder / CURRENT_JSON, {"version": version.name})
    for p in older:
        p.rmtree()
    return version


def _write_files(
    tmp: AnyPath,
    model: torch.nn.Module,
    model_cfg: dict[str, Any],
    optimizer: torch.optim.Optimizer | None,
    state: dict[str, Any] | None,
) -> None:
    sd = {k: v.detach().cpu().contiguous() for k, v in _unwrap(model).state_dict().items()}
    atomic_write_bytes(tmp / MODEL_FILE, save(sd))
    atomic_write_text(tmp / MODEL_JSON, json.dumps(model_cfg, indent=2))
    if optimizer is not None:
        tensors, groups = _flatten_optimizer(optimizer)
        atomic_write_bytes(tmp / OPT_FILE, save(tensors))
        state = {**(state or {}), "param_groups": groups}
    if state is not None:
        atomic_write_text(tmp / STATE_JSON, json.dumps(state))


def load_model(folder: str | AnyPath, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Rebuild the model from ``model.json`` and load ``model.safetensors`` into it."""
    folder = recover(folder)
    if not (folder / MODEL_FILE).is_file() or not (folder / MODEL_JSON).is_file():
        raise RunDirError(
            f"{folder} is not a raysynth checkpoint (needs {MODEL_FILE} and {MODEL_JSON})"
        )
    model = build_model(json.loads((folder / MODEL_JSON).read_text()))
    model.load_state_dict(_tensors(folder / MODEL_FILE, device=str(device)))
    return model.to(device)


def read_state(folder: str | AnyPath) -> dict[str, Any] | None:
    """``state.json`` of a checkpoint folder (after :func:`recover`), None when there is none."""
    path = recover(folder) / STATE_JSON
    return json.loads(path.read_text()) if path.is_file() else None


def restore_training(
    folder: str | AnyPath, model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """Load model and optimizer state from a checkpoint folder; returns its ``state.json``."""
    folder = recover(folder)
    _unwrap(model).load_state_dict(_tensors(folder / MODEL_FILE))
    state = read_state(folder) or {}
    if (folder / OPT_FILE).is_file():
        _load_optimizer(optimizer, _tensors(folder / OPT_FILE), state["param_groups"])
    return state


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for idx, slots in sd["state"].items():
        for name, value in slots.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"{idx}.{name}"] = t.detach().cpu().contiguous()
    if not tensors:  # safetensors needs at least one entry to write a valid file
        tensors["__empty__"] = torch.zeros(1)
    return tensors, sd["param_groups"]


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list):
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key == "__empty__":
            continue
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": groups})
