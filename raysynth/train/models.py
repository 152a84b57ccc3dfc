"""Encoders, projection head and classifiers, each rebuilt from a small JSON config.

A model's constructor arguments are its config (diffusers style): :func:`build_model` turns the
JSON saved next to a checkpoint's safetensors back into the same module.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from raysynth.errors import ConfigError
from raysynth.train.architectures import TORCHVISION_WEIGHTS, PreActResNet34, TorchvisionNet


class SmallCNN(nn.Module):
    """Three conv blocks for images of at most 32 px (8×8 digits, 32×32 tiles).

    ``x: [B, C, H, W]`` → ``[B, feat_dim]``.
    """

    def __init__(self, in_channels: int = 1, width: int = 32, feat_dim: int = 128) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1, bias=False),
            nn.BatchNorm2d(w),
            nn.ReLU(inplace=True),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(2 * w),
            nn.ReLU(inplace=True),
            nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(4 * w),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.fc = nn.Linear(4 * w, feat_dim)
        self.out_dim = feat_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class ResNet18(nn.Module):
    """torchvision ResNet-18 with no pretrained weights and a CIFAR-style stem (3×3, no max-pool).

    ``x: [B, C, H, W]`` → ``[B, 512]``.
    """

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        from torchvision.models import resnet18

        net = resnet18(weights=None)
        net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
        net.fc = nn.Identity()
        self.net = net
        self.out_dim = 512

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ProjectionHead(nn.Module):
    """SupCon projection MLP; outputs L2-normalised vectors ``[B, proj_dim]``."""

    def __init__(self, in_dim: int, proj_dim: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, in_dim), nn.ReLU(inplace=True), nn.Linear(in_dim, proj_dim)
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(h), dim=1)


class ContrastiveModel(nn.Module):
    """Encoder + projection head; ``embed`` gives the frozen features used downstream."""

    def __init__(self, encoder: nn.Module, head: ProjectionHead) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))

    @torch.no_grad()
    def embed(self, x: torch.Tensor, space: str = "encoder", batch_size: int = 512) -> torch.Tensor:
        """Frozen features: the encoder output ``h`` or the projection ``v = g(h)`` (unit norm)."""
        net = self.encoder if space == "encoder" else self
        was_training = self.training
        self.eval()
        out = torch.cat([net(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
        self.train(was_training)
        return out


class MLPClassifier(nn.Module):
    """3-layer MLP on frozen embeddings (UniCon protocol). ``[B, D]`` → logits ``[B, C]``."""

    def __init__(self, in_dim: int, num_classes: int, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


class ImageClassifier(nn.Module):
    """Encoder + linear head trained end to end; ``features`` exposes the penultimate layer."""

    def __init__(self, encoder: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.fc = nn.Linear(encoder.out_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.encoder(x))


def resolve_arch(arch: str, image_size: int) -> str:
    """``auto`` picks the small CNN for images of at most 32 px and ResNet-18 above."""
    if arch != "auto":
        return arch
    return "small_cnn" if image_size <= 32 else "resnet18"


def encoder_config(
    arch: str, in_channels: int, image_size: int, width: int, feat_dim: int, pretrained: str = ""
) -> dict:
    arch = resolve_arch(arch, image_size)
    if arch == "small_cnn":
        return {"arch": "small_cnn", "in_channels": in_channels, "width": width, "feat_dim": feat_dim}
    if arch == "preact_resnet34" or (arch == "resnet18" and not pretrained):
        return {"arch": arch, "in_channels": in_channels}
    return {"arch": arch, "in_channels": in_channels, "small_stem": image_size <= 64,
            "weights": pretrained}


def build_encoder(cfg: dict[str, Any]) -> nn.Module:
    arch = cfg.get("arch")
    if arch == "small_cnn":
        return SmallCNN(cfg["in_channels"], cfg["width"], cfg["feat_dim"])
    if arch == "resnet18" and "weights" not in cfg:
        return ResNet18(cfg["in_channels"])
    if arch == "preact_resnet34":
        return PreActResNet34(cfg["in_channels"])
    if arch in TORCHVISION_WEIGHTS:
        return TorchvisionNet(arch, cfg["in_channels"], cfg["small_stem"], cfg["weights"])
    raise ConfigError(f"unknown encoder arch {arch!r}; choose small_cnn, preact_resnet34 or one "
                      f"of {', '.join(TORCHVISION_WEIGHTS)}")


def build_model(cfg: dict[str, Any]) -> nn.Module:
    """Rebuild any raysynth model from the JSON config stored beside its weights.

    ``{"kind": "contrastive", "encoder": {...}, "proj_dim": 64}``,
    ``{"kind": "mlp", "in_dim": 128, "num_classes": 10, "hidden": 128}`` or
    ``{"kind": "classifier", "encoder": {...}, "num_classes": 10}``.
    """
    kind = cfg.get("kind")
    if kind == "contrastive":
        enc = build_encoder(cfg["encoder"])
        return ContrastiveModel(enc, ProjectionHead(enc.out_dim, cfg["proj_dim"]))
    if kind == "mlp":
        return MLPClassifier(cfg["in_dim"], cfg["num_classes"], cfg["hidden"])
    if kind == "classifier":
        return ImageClassifier(build_encoder(cfg["encoder"]), cfg["num_classes"])
    raise ConfigError(f"unknown model kind {kind!r}; expected contrastive, mlp or classifier")
