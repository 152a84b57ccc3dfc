"""Model checks and loading of the latent diffusion generators' diffusers pipelines (SD 1.x/2.x,
SDXL, Stable unCLIP): the driver-side checks that fail before any actor starts (model in the local
cache with a pipeline class the kind can drive, scheduler name, LoRA adapter files) and
:func:`load_pipeline`, which loads a pipeline offline with diffusers' own ``from_pretrained``, swaps
in the configured scheduler and loads the LoRA adapters.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from raysynth.config.schema import GeneratorConfig
from raysynth.errors import ConfigError
from raysynth.generate import model_source, single_file
from raysynth.generate.generators import DTYPES
from raysynth.generate.model_store import ModelRef, local_copy
from raysynth.storage import as_path, local_folder

KEY = "synthesis.generator"
SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "pndm": "PNDMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_ancestral": "EulerAncestralDiscreteScheduler",
    "dpm_solver": "DPMSolverMultistepScheduler",
    "edm_euler": "EDMEulerScheduler",  # CosXL's sampler (generate/single_file.py)
}
SDXL = "StableDiffusionXLPipeline"
PIPELINES = {
    "text2image": ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", SDXL),
    "unclip": ("StableUnCLIPImg2ImgPipeline",),
}


# 1. driver-side checks (cheap: no model is loaded) -----------------------------------------------


def check_scheduler(name: str) -> type:
    """The diffusers scheduler class a config name stands for; unknown names list the valid ones."""
    if name not in SCHEDULERS:
        raise ConfigError(
            f"{KEY}.scheduler={name!r} is not a scheduler raysynth knows; "
            f"choose one of {', '.join(SCHEDULERS)}"
        )
    import diffusers

    return getattr(diffusers, SCHEDULERS[name])


def check_model_available(cfg: GeneratorConfig, folder: str | Path | None = None) -> dict[str, Any]:
    """Check that ``cfg.model`` (or the local ``folder`` it was resolved to) is a pipeline
    ``cfg.kind`` can drive, and reachable: a local folder with ``model_index.json``, a Hugging Face
    id in the local cache, or one the hub can serve (not with ``HF_HUB_OFFLINE``). Returns the
    parsed ``model_index.json``. Raises :class:`ConfigError` saying what to pass."""
    if not cfg.model:
        raise ConfigError(f"{KEY}.model is empty; pass a Hugging Face id or a local folder")
    if single_file.is_single_file(cfg.model):
        info = single_file.check_single_file(cfg)
        _check_pipeline_class(cfg, info.get("_class_name", ""))
        check_scheduler(cfg.scheduler)
        return info
    if folder is not None:
        index = Path(folder) / "model_index.json"
        if not index.is_file():
            raise ConfigError(f"{KEY}.model={cfg.model!r}: {index} is missing")
        info = json.loads(index.read_text())
    else:
        info = model_source.model_index(cfg.model)
    _check_pipeline_class(cfg, info.get("_class_name", ""))
    if cfg.safety_checker and info.get("_class_name") == SDXL:
        raise ConfigError(
            f"{KEY}.safety_checker=true but {cfg.model!r} is an SDXL pipeline, and SDXL ships no "
            "safety checker; set it to false or use a Stable Diffusion 1.x/2.x model that has one"
        )
    check_scheduler(cfg.scheduler)
    return info


def _check_pipeline_class(cfg: GeneratorConfig, name: str) -> None:
    if name in PIPELINES[cfg.kind]:
        return
    other = next((k for k, names in PIPELINES.items() if name in names), None)
    if other is None and "XL" in name:
        raise ConfigError(
            f"{KEY}.model={cfg.model!r} is an SDXL {name}, which raysynth does not drive; "
            f"pass an SDXL base model ({SDXL}, kind text2image), a Stable Diffusion 1.x/2.x "
            "model (kind text2image) or Stable unCLIP (kind unclip)"
        )
    hint = f"; set {KEY}.kind={other}" if other else ""
    raise ConfigError(
        f"{KEY}.model={cfg.model!r} is a {name or 'unknown'} pipeline but {KEY}.kind={cfg.kind} "
        f"needs one of {', '.join(PIPELINES[cfg.kind])}{hint}"
    )


def check_adapters(cfg: GeneratorConfig) -> None:
    """Every LoRA entry is a folder with a weights file (or a ``.safetensors`` file).

    Whether an adapter fits the model is only known once it is loaded; :func:`load_pipeline`
    then raises :class:`ConfigError` naming the adapter.
    """
    for i, entry in enumerate(cfg.lora):
        path = as_path(entry)  # a local path, or an adapter in the run directory (s3://…)
        if path.is_dir():
            ok = any(path.glob("*.safetensors")) or any(path.glob("*.bin"))
        else:
            ok = path.is_file() and path.suffix in (".safetensors", ".bin")
        if not ok:
            raise ConfigError(
                f"{KEY}.lora[{i}]={entry!r} is not a LoRA adapter: pass a folder written by "
                "save_lora_weights (pytorch_lora_weights.safetensors) or that .safetensors file"
            )


# 2. loading ------------------------------------------------------------------------------------


def dtype_kwarg() -> str:
    """The ``from_pretrained`` argument that sets the dtype: ``dtype`` from diffusers 0.40 (which
    deprecates ``torch_dtype``), ``torch_dtype`` before (older versions ignore ``dtype`` and load
    float32)."""
    import diffusers
    from packaging.version import Version

    return "dtype" if Version(diffusers.__version__).release >= (0, 40) else "torch_dtype"


def model_folder(cfg: GeneratorConfig, ref: ModelRef | None) -> str:
    """Where this process loads ``cfg.model`` from: this node's copy of the driver-resolved
    ``ref`` (:func:`~raysynth.generate.model_store.local_copy`), else the configured folder or
    hub id (loaded from the local cache)."""
    if ref is not None:
        return str(local_copy(ref)[0])
    model = cfg.model
    return str(Path(model).expanduser()) if model_source.is_local_path(model) else model


def load_pipeline(
    cfg: GeneratorConfig, device: torch.device, ref: ModelRef | None = None, batch_size: int = 1
) -> Any:
    """Load the diffusers pipeline of ``cfg`` offline (from this node's copy of ``ref`` when
    given), check every module is in ``cfg.dtype``, swap in the configured scheduler, load the
    LoRA adapters, apply the memory and speed options, move it to ``device``."""
    import diffusers

    where = model_folder(cfg, ref)
    info = check_model_available(cfg, where if ref is not None else None)
    check_adapters(cfg)
    name = info["_class_name"]
    if cfg.kind == "text2image" and name != SDXL:
        name = "StableDiffusionPipeline"  # also for an img2img folder: same components
    cls = getattr(diffusers, name)
    kwargs: dict[str, Any] = {dtype_kwarg(): DTYPES[cfg.dtype], "local_files_only": True}
    if name == "StableDiffusionPipeline" and not cfg.safety_checker:
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    try:
        pipe = (single_file.load_single_file(cfg, name, kwargs)
                if single_file.is_single_file(cfg.model) else cls.from_pretrained(where, **kwargs))
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"{KEY}.model={cfg.model!r} could not be loaded: {exc}") from exc
    check_dtype(pipe, DTYPES[cfg.dtype], cfg.model)
    has_checker = getattr(pipe, "safety_checker", None) is not None
    if cfg.safety_checker and not (has_checker and getattr(pipe, "feature_extractor", None)):
        raise ConfigError(
            f"{KEY}.safety_checker=true but {cfg.model!r} ships no safety checker; set it to "
            "false or use a model folder that has one (safety_checker/ + feature_extractor/)"
        )
    pipe.scheduler = check_scheduler(cfg.scheduler).from_config(
        pipe.scheduler.config, **single_file.scheduler_kwargs(cfg)
    )
    _load_adapters(pipe, cfg)
    pipe.set_progress_bar_config(disable=True)
    pipe = pipe.to(device)
    apply_options(pipe, cfg, sdxl=name == SDXL, batch_size=batch_size)
    return pipe


def check_dtype(pipe: Any, dtype: torch.dtype, model: str) -> None:
    """Every torch module of ``pipe`` holds its floating-point weights in ``dtype`` (an older
    diffusers given an argument it does not know would load float32 and fail at the first step)."""
    for name, module in pipe.components.items():
        if isinstance(module, torch.nn.Module):
            found = {p.dtype for p in module.parameters() if p.is_floating_point()}
            if found - {dtype}:
                raise ConfigError(
                    f"{KEY}.model={model!r}: its {name} loaded in {sorted(map(str, found))}, not "
                    f"{dtype}; this diffusers version did not apply {KEY}.dtype"
                )


def apply_options(pipe: Any, cfg: GeneratorConfig, sdxl: bool, batch_size: int) -> dict[str, bool]:
    """The memory and speed options of ``synthesis.generator``: VAE slicing and tiling (``auto``:
    on for SDXL, slicing also from batches of 8), attention through PyTorch SDPA, channels-last
    memory format, ``torch.compile`` of the UNet. Returns what was turned on."""
    on = {
        "vae_slicing": cfg.vae_slicing == "on" or (cfg.vae_slicing == "auto" and (sdxl or batch_size >= 8)),
        "vae_tiling": cfg.vae_tiling == "on" or (cfg.vae_tiling == "auto" and sdxl),
        "sdpa": cfg.attention == "sdpa",
        "channels_last": cfg.channels_last,
        "compile": cfg.compile,
    }
    vae = pipe.vae
    vae.enable_slicing() if on["vae_slicing"] else vae.disable_slicing()
    vae.enable_tiling() if on["vae_tiling"] else vae.disable_tiling()
    if on["sdpa"]:
        from diffusers.models.attention_processor import AttnProcessor2_0

        pipe.unet.set_attn_processor(AttnProcessor2_0())
    if on["channels_last"]:
        pipe.unet.to(memory_format=torch.channels_last)
        vae.to(memory_format=torch.channels_last)
    if on["compile"]:
        pipe.unet.compile()
    return on


def _load_adapters(pipe: Any, cfg: GeneratorConfig) -> None:
    if not cfg.lora:
        return
    names = []
    for i, entry in enumerate(cfg.lora):
        name, path = f"a{i}", Path(local_folder(as_path(entry)))
        where = {"weight_name": path.name} if path.is_file() else {}
        folder = path.parent if path.is_file() else path
        try:
            pipe.load_lora_weights(str(folder), adapter_name=name, **where)
        except (ValueError, RuntimeError, KeyError, OSError) as exc:
            raise ConfigError(
                f"{KEY}.lora[{i}]={entry!r} does not fit {cfg.model!r}: {_brief(exc)}; pass an "
                "adapter trained for this model"
            ) from exc
        loaded = {n for names_ in pipe.get_list_adapters().values() for n in names_}
        if name not in loaded:
            raise ConfigError(
                f"{KEY}.lora[{i}]={entry!r} has no layer that fits {cfg.model!r} (nothing was "
                "loaded); pass an adapter trained for this model"
            )
        names.append(name)
    weights = list(cfg.lora_weights) or [1.0] * len(names)
    pipe.set_adapters(names, adapter_weights=weights)


def _brief(exc: Exception, lines: int = 3, chars: int = 600) -> str:
    """The head of a long library message (a shape mismatch lists every layer)."""
    text = "\n".join(str(exc).strip().splitlines()[:lines])
    return text if len(text) <= chars else text[:chars] + " …"
