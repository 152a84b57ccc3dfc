"""The papers' classifier backbones: torchvision's ResNets / ResNeXt by name with optional ImageNet
weights (resolved through torchvision's weight enums, downloaded once on the driver), and the
PreAct-ResNet34 DiffuseMix / DiffCoRe-Mix train. :func:`~raysynth.train.models.build_encoder`
builds them from the model JSON."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from raysynth.errors import ConfigError

TORCHVISION_WEIGHTS = {
    "resnet18": "ResNet18_Weights",
    "resnet34": "ResNet34_Weights",
    "resnet50": "ResNet50_Weights",
    "resnext50_32x4d": "ResNeXt50_32X4D_Weights",
}


class TorchvisionNet(nn.Module):
    """A torchvision ResNet / ResNeXt by name, its ``fc`` removed: ``[B, C, H, W]`` → features.

    ``small_stem`` swaps in the CIFAR stem (3×3 conv, no max-pool) for small images;
    ``weights`` names a member of the arch's weight enum (``IMAGENET1K_V2``), loaded through
    torchvision (from TORCH_HOME's cache, which :func:`check_pretrained` fills).
    """

    def __init__(self, arch: str, in_channels: int = 3, small_stem: bool = False,
                 weights: str = "") -> None:
        super().__init__()
        import torchvision.models as tvm

        net = getattr(tvm, arch)(weights=resolve_weights(arch, weights) if weights else None)
        if small_stem or in_channels != 3:
            k, stride, pad = (3, 1, 1) if small_stem else (7, 2, 3)
            net.conv1 = nn.Conv2d(in_channels, 64, k, stride=stride, padding=pad, bias=False)
        if small_stem:
            net.maxpool = nn.Identity()
        self.out_dim = net.fc.in_features
        net.fc = nn.Identity()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PreActBlock(nn.Module):
    """He et al. 2016's pre-activation basic block: BN-ReLU-conv ×2, identity (or 1×1) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1, self.bn2 = nn.BatchNorm2d(cin), nn.BatchNorm2d(cout)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.shortcut = (
            nn.Conv2d(cin, cout, 1, stride=stride, bias=False)
            if stride != 1 or cin != cout else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        short = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        return self.conv2(F.relu(self.bn2(out))) + short


class PreActResNet34(nn.Module):
    """PreAct-ResNet34 after the reference DiffuseMix / DiffCoRe-Mix train with (the PuzzleMix
    code base): 3×3 stem of 64 channels, no max-pool, blocks (3, 4, 6, 3) of 64–512 channels,
    a final BN-ReLU and global average pooling: ``[B, C, H, W]`` → ``[B, 512]``."""

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, 64, 3, padding=1, bias=False)]
        cin = 64
        for cout, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            for b in range(blocks):
                layers.append(PreActBlock(cin, cout, stride if b == 0 else 1))
                cin = cout
        layers += [nn.BatchNorm2d(512), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1),
                   nn.Flatten()]
        self.net = nn.Sequential(*layers)
        self.out_dim = 512

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def resolve_weights(arch: str, name: str) -> Any:
    """The torchvision weight enum member ``name`` of ``arch``; unknown names list the valid."""
    import torchvision.models as tvm

    if arch not in TORCHVISION_WEIGHTS:
        raise ConfigError(f"encoder.pretrained: no ImageNet weights for arch {arch!r}; choose "
                          f"one of {', '.join(TORCHVISION_WEIGHTS)}")
    enum = getattr(tvm, TORCHVISION_WEIGHTS[arch])
    if name not in enum.__members__:
        raise ConfigError(f"encoder.pretrained={name!r} is not a weight of {arch}; choose one of "
                          f"{', '.join(enum.__members__)}")
    return enum[name]


def check_pretrained(arch: str, name: str) -> Path:
    """Resolve ``arch``'s ImageNet weights once, on the driver: the file in torch's hub cache
    (``TORCH_HOME``), downloaded there when it is missing and the network allows (never with
    ``HF_HUB_OFFLINE`` / ``RAYSYNTH_OFFLINE`` set). Unreachable: a :class:`ConfigError` saying
    where to put the file."""
    weights = resolve_weights(arch, name)
    url = weights.url
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    if path.is_file():
        return path
    offline = any(os.environ.get(v, "") not in ("", "0") for v in ("HF_HUB_OFFLINE",
                                                                   "RAYSYNTH_OFFLINE"))
    hint = (f"encoder.pretrained={name!r} ({arch}) is not in torch's cache ({path}) and cannot "
            "be downloaded {why}; download it on a machine with network access "
            f"(`python -c \"import torchvision.models as m; m.{weights!s}.get_state_dict()\"`) "
            f"and copy it to {path} (or set TORCH_HOME), or set encoder.pretrained to ''")
    if offline:
        raise ConfigError(hint.replace("{why}", "offline (HF_HUB_OFFLINE/RAYSYNTH_OFFLINE set)"))
    try:
        torch.hub.load_state_dict_from_url(url, progress=False, check_hash=True)
    except Exception as exc:  # URLError, timeouts, hash mismatch: all mean "not usable"
        why = f"from {url} ({type(exc).__name__}: {exc})"
        raise ConfigError(hint.replace("{why}", why)) from exc
    return path
