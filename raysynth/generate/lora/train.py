"""The driver-side entry points of AiR LoRA training: :func:`train_sd_lora` (Stable Diffusion
1.x/2.x) and :func:`train_pixel_lora` (the pixel model) check their inputs and a checkpoint left
from an earlier run, then start :func:`~raysynth.generate.lora.loop.lora_train_loop` as a Ray Train
job through :func:`~raysynth.train.session.run_trainer`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from raysynth.config.schema import GeneratorConfig, ScalingConfig
from raysynth.errors import ConfigError
from raysynth.generate.lora.loop import checkpoint_config, lora_train_loop
from raysynth.generate.lora.spec import KEY, PIXEL_SPEC, LoraResult, LoraTrainSpec
from raysynth.generate.lora.tasks import check_labels, pixel_arrays
from raysynth.storage import as_path, local_or_remote, spec_path
from raysynth.train.checkpoint import recover


def _check_checkpoint(checkpoint_dir: Path, expected: dict[str, Any], steps: int) -> None:
    """A checkpoint left in ``checkpoint_dir`` must be of this very adapter and not past ``steps``."""
    model_json, state_json = checkpoint_dir / "model.json", checkpoint_dir / "state.json"
    if not (model_json.is_file() and state_json.is_file()):
        return
    found = json.loads(model_json.read_text())
    diff = sorted(k for k in expected if found.get(k) != expected[k])
    if diff:
        raise ConfigError(
            f"{checkpoint_dir} holds the checkpoint of another adapter (differs in "
            f"{', '.join(diff)}: {[found.get(k) for k in diff]} vs {[expected[k] for k in diff]}); "
            "delete it or pass another checkpoint folder"
        )
    done = json.loads(state_json.read_text())["epoch"] + 1
    if done > steps:
        raise ConfigError(
            f"{checkpoint_dir} holds a checkpoint after {done} steps but {KEY}.steps={steps}; "
            "raise steps or delete the checkpoint"
        )


def _run(
    config: dict[str, Any],
    scaling: ScalingConfig | None,
    checkpoint_dir: str | Path | None,
    storage_path: str | Path | None,
) -> LoraResult:
    from raysynth.train.session import run_trainer

    out = local_or_remote(config["out_dir"])  # local, or in the run directory on s3://…
    ckpt = as_path(checkpoint_dir) if checkpoint_dir else out.with_name(f"{out.name}-checkpoint")
    _check_checkpoint(recover(ckpt), checkpoint_config(config), config["spec"].steps)
    config = {**config, "out_dir": spec_path(out), "checkpoint_dir": spec_path(ckpt)}
    metrics = run_trainer(
        lora_train_loop,
        config,
        scaling or ScalingConfig(),
        f"air-lora-{out.name}",
        storage_path or out.parent,
    )
    return LoraResult(out, [float(v) for v in metrics["losses"]], int(metrics["world_size"]))


def train_sd_lora(
    model: str,
    images: Sequence[bytes],
    labels: Sequence[int],
    class_names: Sequence[str],
    context: str,
    out_dir: str | Path,
    spec: LoraTrainSpec = LoraTrainSpec(),  # noqa: B008 (a frozen dataclass)
    *,
    scaling: ScalingConfig | None = None,
    checkpoint_dir: str | Path | None = None,
    storage_path: str | Path | None = None,
    threads: int = 0,
    model_ref: Any = None,
) -> LoraResult:
    """Train a LoRA adapter of the Stable Diffusion 1.x/2.x ``model`` (a local pipeline folder
    or a Hugging Face id in the local cache; each worker loads it from its node's copy of
    ``model_ref`` when given, :mod:`raysynth.generate.model_store`) on ``images`` (PNG bytes) with ``labels`` indexing
    ``class_names``; prompt ``"{context} {class}"``. Writes ``out_dir`` (the adapter, loadable
    with ``synthesis.generator.lora=[out_dir]``, and ``air_lora.json``).

    Runs as a Ray Train job on ``scaling`` (``num_workers=0``, the default: in this process).
    Checkpoints go to ``checkpoint_dir`` (default ``<out_dir>-checkpoint``) every
    ``spec.checkpoint_every`` steps and a rerun resumes from there; Ray Train's own files go under
    ``storage_path`` (default ``out_dir``'s parent). On a cluster ``out_dir`` and the checkpoint
    folder must be storage the rank-0 worker can write.
    """
    from raysynth.generate.loading import check_model_available

    info = check_model_available(GeneratorConfig(kind="text2image", model=model, dtype=spec.dtype))
    if "XL" in info.get("_class_name", ""):
        raise ConfigError(
            f"synthesis.generator.model={model!r} is an SDXL pipeline; AiR LoRA training drives "
            "Stable Diffusion 1.x/2.x (one text encoder, no added conditioning); pass such a model"
        )
    check_labels(len(images), labels, len(class_names))
    local = Path(model).expanduser()
    config = {
        "kind": "text2image",
        "model": str(local.resolve()) if local.exists() else model,
        "images": list(images),
        "labels": [int(v) for v in labels],
        "class_names": list(class_names),
        "context": context,
        "spec": spec,
        "out_dir": out_dir,
        "threads": threads,
        "model_ref": model_ref,
    }
    return _run(config, scaling, checkpoint_dir, storage_path)


def train_pixel_lora(
    model_folder: str | Path,
    images: np.ndarray | Sequence[bytes],
    labels: Sequence[int],
    out_dir: str | Path,
    spec: LoraTrainSpec = PIXEL_SPEC,
    *,
    scaling: ScalingConfig | None = None,
    checkpoint_dir: str | Path | None = None,
    storage_path: str | Path | None = None,
    threads: int = 0,
) -> LoraResult:
    """Train a LoRA adapter of the pixel model in ``model_folder`` (written by
    :func:`~raysynth.generate.pixel.save_pixel_model`) on ``images`` (float ``[N, C, H, W]`` in
    [0, 1], or PNG bytes) with class ``labels``. Writes ``out_dir`` (``adapter_config.json`` +
    ``adapter_model.safetensors``, loadable with ``synthesis.generator.lora=[out_dir]``, and
    ``air_lora.json``). The default spec targets
    :data:`~raysynth.generate.lora.spec.PIXEL_TARGET_MODULES`; Ray Train, checkpoints and resume
    as in :func:`train_sd_lora`.
    """
    from raysynth.generate.pixel import UNET_DIR

    folder = Path(model_folder).expanduser().resolve()
    unet_json = folder / UNET_DIR / "config.json"
    if not unet_json.is_file():
        raise ConfigError(
            f"{folder} is not a pixel diffusion model ({unet_json} is missing); pass a folder "
            "written by raysynth.generate.save_pixel_model or load_or_train"
        )
    unet_cfg = json.loads(unet_json.read_text())
    size = unet_cfg["sample_size"]
    x = pixel_arrays(
        images, unet_cfg["in_channels"], int(size if isinstance(size, int) else size[0])
    )
    check_labels(len(x), labels, unet_cfg["num_class_embeds"] - 1)
    config = {
        "kind": "pixel",
        "model": str(folder),
        "images": x,
        "labels": [int(v) for v in labels],
        "class_names": [],
        "context": "",
        "spec": spec,
        "out_dir": out_dir,
        "threads": threads,
    }
    return _run(config, scaling, checkpoint_dir, storage_path)


__all__ = ["train_pixel_lora", "train_sd_lora"]
