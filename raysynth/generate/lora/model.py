"""The adapter itself: a fresh LoRA adapter injected (peft) into a frozen base
(:func:`add_lora`), and the module a checkpoint saves — the adapter's parameters and the per-step
losses, never the base (:class:`AdapterState`)."""

from __future__ import annotations

from typing import Any

import torch

from raysynth.errors import ConfigError
from raysynth.generate.lora.spec import (
    ATTENTION_PROJECTIONS,
    KEY,
    PIXEL_TARGET_MODULES,
    LoraTrainSpec,
)
from raysynth.seeding import stable_seed


def add_lora(unet: torch.nn.Module, spec: LoraTrainSpec) -> Any:
    """Freeze ``unet`` and add a fresh LoRA adapter (peft, named ``default``) on
    ``spec.target_modules``; returns its ``LoraConfig``.

    The initialisation is seeded by ``spec.seed`` without touching the global RNG, so every
    worker starts from the same adapter. The adapter's parameters are float32 whatever the base's
    dtype (peft casts the input of each LoRA layer to its weights' dtype).
    """
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(
        r=spec.rank, lora_alpha=spec.alpha, target_modules=list(spec.target_modules)
    )
    unet.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stable_seed("air-lora-init", spec.seed))
        try:
            if hasattr(unet, "add_adapter"):  # diffusers' PeftAdapterMixin (UNet2DConditionModel)
                unet.add_adapter(config)
            else:
                inject_adapter_in_model(config, unet)
        except ValueError as exc:
            raise ConfigError(
                f"{KEY}.target_modules={list(spec.target_modules)} name no layer of this "
                f"{type(unet).__name__} ({exc}); Stable Diffusion UNets take "
                f"{list(ATTENTION_PROJECTIONS)}, the pixel model {list(PIXEL_TARGET_MODULES)}"
            ) from exc
    for p in unet.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    return config


class AdapterState(torch.nn.Module):
    """What an adapter checkpoint holds: the adapter's parameters and the per-step losses.

    The parameters are the very tensors inside the model (names with ``/`` for ``.``), so
    raysynth's checkpoint functions (:func:`~raysynth.train.checkpoint.write_checkpoint`,
    :meth:`~raysynth.train.session.TrainSession.restore`) save the adapter without the frozen
    base, and restoring writes straight into the model. The losses travel as PyTorch "extra
    state" (a float64 tensor) so a resumed run reports every step.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        trainable = {n.replace(".", "/"): p for n, p in model.named_parameters() if p.requires_grad}
        if not trainable:
            raise ValueError("the model has no trainable parameters: call add_lora first")
        self.adapter = torch.nn.ParameterDict(trainable)
        self.losses: list[float] = []

    def get_extra_state(self) -> torch.Tensor:
        return torch.tensor(self.losses, dtype=torch.float64)

    def set_extra_state(self, state: torch.Tensor) -> None:
        self.losses = [float(v) for v in state]


__all__ = ["AdapterState", "add_lora"]
