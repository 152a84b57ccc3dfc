"""The ``pixel`` generator: the class-conditional pixel model raysynth trains (the digits preset),
loaded with its LoRA adapters (peft folders, ``synthesis.generator.lora``), sampling one image per
plan row with :func:`raysynth.generate.sampling.sample_pixel`.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from raysynth import columns as col
from raysynth.config.schema import GeneratorConfig
from raysynth.errors import ConfigError
from raysynth.generate.feedback import build_feedback
from raysynth.generate.generators import (
    DTYPES,
    GeneratedImage,
    GeneratorSpec,
    png_bytes,
    resolve_device,
)
from raysynth.storage import AnyPath, as_path, local_folder

# A pixel-model LoRA adapter is a peft folder (peft's CONFIG_NAME and SAFETENSORS_WEIGHTS_NAME).
PIXEL_ADAPTER_CONFIG = "adapter_config.json"
PIXEL_ADAPTER_WEIGHTS = "adapter_model.safetensors"


class PixelGenerator:
    """The class-conditional pixel-space model of the digits preset (diffusers UNet2DModel+DDIM)."""

    def __init__(self, spec: GeneratorSpec) -> None:
        from raysynth.generate.pixel import load_pixel_model

        g = spec.generator
        if g.scheduler != "ddim":
            raise ConfigError(
                f"synthesis.generator.scheduler={g.scheduler}: the pixel model samples with ddim"
            )
        self.spec = spec
        self.device = resolve_device(g.device, spec.gpus)
        self.dtype = DTYPES[g.dtype]
        # the run directory's RemotePath: copied once into a local folder for from_pretrained
        self.model = load_pixel_model(local_folder(spec.pixel_folder), self.device, self.dtype)
        load_pixel_adapters(self.model.unet, g)
        self.feedback = build_feedback(spec, self.device)
        self.num_classes = len(spec.class_names)

    def identity(self) -> dict[str, Any]:
        g = self.spec.generator
        return {
            "kind": "pixel",
            "model": as_path(self.spec.pixel_folder).name,
            "scheduler": "ddim",
            "scheduler_config": {
                k: v for k, v in self.model.scheduler_config.items() if not k.startswith("_")
            },
            "num_steps": g.num_steps,
            "guidance_scale": g.guidance_scale,
            "eta": g.eta,
            "negative_class": g.negative_class,
            "lora": [str(p) for p in g.lora],
            "lora_weights": list(g.lora_weights) or [1.0] * len(g.lora),
            "feedback": asdict(self.spec.feedback),
        }

    def generate(self, rows: list[dict[str, Any]]) -> list[GeneratedImage]:
        from raysynth.generate.sampling import sample_pixel

        g = self.spec.generator
        labels = [int(r[col.LABEL]) for r in rows]
        negatives = [(y + 1) % self.num_classes for y in labels] if g.negative_class else None
        images, crit = sample_pixel(
            self.model.unet,
            self.model.scheduler_config,
            labels,
            [int(r[col.SEED]) for r in rows],
            num_steps=g.num_steps,
            guidance_scale=g.guidance_scale,
            negative_labels=negatives,
            feedback=self.feedback,
            device=self.device,
            dtype=self.dtype,
            eta=g.eta,
        )
        values = [None] * len(rows) if crit is None else [float(c) for c in crit]
        return [GeneratedImage(png_bytes(img), v) for img, v in zip(images, values)]


def load_pixel_adapters(unet: torch.nn.Module, cfg: GeneratorConfig) -> None:
    """Attach the LoRA adapters ``cfg.lora`` to the pixel model's UNet, weighted by
    ``cfg.lora_weights`` (1.0 each by default; 0 switches one off). The base weights are not
    touched: peft adds ``scale · B A`` beside each adapted layer.

    Each entry is a peft folder (``adapter_config.json`` + ``adapter_model.safetensors``, as
    :func:`raysynth.generate.lora.train.train_pixel_lora` writes). An adapter that does not fit
    this model (other layer names or shapes) raises :class:`ConfigError` naming it.
    """
    if not cfg.lora:
        return
    from peft.tuners.tuners_utils import BaseTunerLayer

    names = [_load_pixel_adapter(unet, i, entry) for i, entry in enumerate(cfg.lora)]
    weights = list(cfg.lora_weights) or [1.0] * len(names)
    for module in unet.modules():
        if isinstance(module, BaseTunerLayer):
            module.set_adapter([n for n in names if n in module.scaling])
            for name, w in zip(names, weights):
                module.set_scale(name, w)
    unet.requires_grad_(False)  # set_adapter marks the active adapters trainable


def check_pixel_adapters(cfg: GeneratorConfig) -> None:
    """Every LoRA entry of the pixel model is a peft adapter folder (cheap: nothing is loaded;
    whether it fits the model is checked when :func:`load_pixel_adapters` loads it)."""
    for i, entry in enumerate(cfg.lora):
        _pixel_adapter_folder(i, entry)


def _pixel_adapter_folder(i: int, entry: str) -> AnyPath:
    folder = as_path(entry)  # a local folder, or the AiR adapter in the run directory (s3://…)
    if not all((folder / f).is_file() for f in (PIXEL_ADAPTER_CONFIG, PIXEL_ADAPTER_WEIGHTS)):
        raise ConfigError(
            f"synthesis.generator.lora[{i}]={entry!r} is not a pixel-model LoRA adapter: pass a "
            f"folder with {PIXEL_ADAPTER_CONFIG} and {PIXEL_ADAPTER_WEIGHTS} (written by "
            "raysynth.generate.lora.train.train_pixel_lora)"
        )
    return folder


def _load_pixel_adapter(unet: torch.nn.Module, i: int, entry: str) -> str:
    from peft import (
        LoraConfig,
        get_peft_model_state_dict,
        inject_adapter_in_model,
        set_peft_model_state_dict,
    )
    from safetensors.torch import load_file

    key, name = f"synthesis.generator.lora[{i}]={entry!r}", f"a{i}"
    folder = Path(local_folder(_pixel_adapter_folder(i, entry)))
    try:
        config = LoraConfig.from_pretrained(str(folder))
        weights = load_file(str(folder / PIXEL_ADAPTER_WEIGHTS))
        with warnings.catch_warnings():  # a second adapter is wanted, not a mistake
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            inject_adapter_in_model(config, unet, adapter_name=name)
        expected = set(get_peft_model_state_dict(unet, adapter_name=name))
        extra, absent = sorted(set(weights) - expected), sorted(expected - set(weights))
        if not (extra or absent):
            set_peft_model_state_dict(unet, weights, adapter_name=name)
    except (ValueError, RuntimeError, KeyError, TypeError, OSError) as exc:
        text = " ".join(str(exc).split())
        raise ConfigError(
            f"{key} does not fit this pixel model: {text[:600]}; pass an adapter trained for it"
        ) from exc
    if extra or absent:
        raise ConfigError(
            f"{key} does not fit this pixel model: it has weights for layers the model lacks "
            f"({', '.join(extra[:3]) or 'none'}) or lacks weights for layers it adapts "
            f"({', '.join(absent[:3]) or 'none'}); pass an adapter trained for this model"
        )
    return name
