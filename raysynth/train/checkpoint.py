"""Checkpoints as safetensors plus the JSON config that built the model — no pickle anywhere.

A checkpoint folder holds ``model.safetensors`` + ``model.json`` (:func:`build_model` config) and,
for resumable training, ``optimizer.safetensors`` + ``state.json`` (epoch, param groups).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from raysynth.errors import RunDirError
from raysynth.train.models import build_model

MODEL_FILE = "model.safetensors"
MODEL_JSON = "model.json"
OPT_FILE = "optimizer.safetensors"
STATE_JSON = "state.json"


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def write_checkpoint(
    folder: str | Path,
    model: torch.nn.Module,
    model_cfg: dict[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
    state: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint folder atomically (a temp folder renamed into place)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    sd = {k: v.detach().cpu().contiguous() for k, v in _unwrap(model).state_dict().items()}
    save_file(sd, str(tmp / MODEL_FILE))
    (tmp / MODEL_JSON).write_text(json.dumps(model_cfg, indent=2))
    if optimizer is not None:
        tensors, groups = _flatten_optimizer(optimizer)
        save_file(tensors, str(tmp / OPT_FILE))
        (tmp / STATE_JSON).write_text(json.dumps({**(state or {}), "param_groups": groups}))
    elif state is not None:
        (tmp / STATE_JSON).write_text(json.dumps(state))
    if folder.exists():
        old = folder.with_name(folder.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, folder)
    return folder


def load_model(folder: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Rebuild the model from ``model.json`` and load ``model.safetensors`` into it."""
    folder = Path(folder)
    if not (folder / MODEL_FILE).is_file() or not (folder / MODEL_JSON).is_file():
        raise RunDirError(
            f"{folder} is not a raysynth checkpoint (needs {MODEL_FILE} and {MODEL_JSON})"
        )
    model = build_model(json.loads((folder / MODEL_JSON).read_text()))
    model.load_state_dict(load_file(str(folder / MODEL_FILE), device=str(device)))
    return model.to(device)


def read_state(folder: str | Path) -> dict[str, Any] | None:
    path = Path(folder) / STATE_JSON
    return json.loads(path.read_text()) if path.is_file() else None


def restore_training(
    folder: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """Load model and optimizer state from a checkpoint folder; returns its ``state.json``."""
    folder = Path(folder)
    _unwrap(model).load_state_dict(load_file(str(folder / MODEL_FILE)))
    state = read_state(folder) or {}
    if (folder / OPT_FILE).is_file():
        _load_optimizer(optimizer, load_file(str(folder / OPT_FILE)), state["param_groups"])
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
