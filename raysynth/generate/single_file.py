"""Single-file checkpoints: a Stable Diffusion 1.x/2.x or SDXL model (CosXL among them) published as
one ``.safetensors`` file in the original (LDM) layout, loaded with diffusers' own
``from_single_file``; the architecture of each component comes from ``synthesis.generator.
single_file_config`` (a diffusers pipeline folder or a cached Hugging Face id of the same family,
e.g. ``stabilityai/stable-diffusion-xl-base-1.0`` for CosXL), so nothing is downloaded.

CosXL samples with an EDM sampler in v-prediction: ``scheduler: edm_euler`` builds diffusers'
``EDMEulerScheduler`` with CosXL's settings (:data:`COSXL_EDM`); ``prediction_type`` overrides the
prediction of any other scheduler (``v_prediction`` for SD 2.x-v checkpoints).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from raysynth.config.schema import GeneratorConfig
from raysynth.errors import ConfigError

KEY = "synthesis.generator"
SUFFIXES = (".safetensors", ".ckpt")
# stabilityai/cosxl's model card: EDM, σ_data = 1, σ ∈ [0.002, 120], v-prediction
COSXL_EDM = {"sigma_min": 0.002, "sigma_max": 120.0, "sigma_data": 1.0,
             "prediction_type": "v_prediction", "sigma_schedule": "exponential"}


def is_single_file(model: str) -> bool:
    return Path(model).suffix.lower() in SUFFIXES


def check_single_file(cfg: GeneratorConfig) -> dict[str, Any]:
    """The checkpoint file exists and ``single_file_config`` is usable offline; returns that
    config's ``model_index.json`` (its pipeline class)."""
    path = Path(cfg.model).expanduser()
    if not path.is_file():
        raise ConfigError(f"{KEY}.model={cfg.model!r}: no such checkpoint file; pass the "
                          ".safetensors file of a single-file Stable Diffusion / SDXL model")
    if not cfg.single_file_config:
        raise ConfigError(
            f"{KEY}.model={cfg.model!r} is a single-file checkpoint: set {KEY}.single_file_config "
            "to a diffusers pipeline of the same family (a local folder or a cached Hugging Face "
            "id, e.g. stabilityai/stable-diffusion-xl-base-1.0 for CosXL) for its components' "
            "configs"
        )
    folder = Path(cfg.single_file_config).expanduser()
    if folder.is_dir():
        index = folder / "model_index.json"
        if not index.is_file():
            raise ConfigError(f"{KEY}.single_file_config={cfg.single_file_config!r} has no "
                              "model_index.json; pass a folder written by save_pretrained")
        return json.loads(index.read_text())
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(cfg.single_file_config, "model_index.json")
    if not isinstance(found, str):
        raise ConfigError(
            f"{KEY}.single_file_config={cfg.single_file_config!r} is not in the local Hugging "
            f"Face cache; download its configs first (`hf download {cfg.single_file_config} "
            "--include '*.json' '*.txt'`) or pass a local folder"
        )
    return json.loads(Path(found).read_text())


def load_single_file(cfg: GeneratorConfig, class_name: str, kwargs: dict[str, Any]) -> Any:
    """The pipeline ``class_name`` (StableDiffusionPipeline / StableDiffusionXLPipeline) from the
    single file, offline, with ``kwargs`` (dtype, safety checker) passed on."""
    import diffusers

    cls = getattr(diffusers, class_name)
    try:
        return cls.from_single_file(str(Path(cfg.model).expanduser()),
                                    config=str(Path(cfg.single_file_config).expanduser())
                                    if Path(cfg.single_file_config).expanduser().is_dir()
                                    else cfg.single_file_config, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ConfigError(f"{KEY}.model={cfg.model!r} could not be loaded as a single-file "
                          f"{class_name} with the configs of {cfg.single_file_config!r}: "
                          f"{str(exc).splitlines()[0][:400]}") from exc


def scheduler_kwargs(cfg: GeneratorConfig) -> dict[str, Any]:
    """Settings the configured scheduler needs beyond the model's scheduler config."""
    out: dict[str, Any] = dict(COSXL_EDM) if cfg.scheduler == "edm_euler" else {}
    if cfg.prediction_type:
        out["prediction_type"] = cfg.prediction_type
    return out
