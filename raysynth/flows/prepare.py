"""What the synthesis and learning stages start from: the real splits, the classifier trained on
the real split (embedder, feedback guide, real-only baseline) and the generator.

Each step writes into the run directory and is skipped when its output is already there, so an
interrupted run resumes where it stopped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from raysynth.config.schema import RunConfig
from raysynth.data import ImageSet, Splits, load_dataset, make_splits, to_tensor_array
from raysynth.data.store import read_real_splits, real_exists, write_real
from raysynth.rundir import RunDir
from raysynth.train.arrays import LabeledArrays
from raysynth.train.augment import resolve_kind
from raysynth.train.checkpoint import MODEL_FILE
from raysynth.train.loops import end_to_end_loop
from raysynth.train.models import encoder_config
from raysynth.train.session import run_trainer

log = logging.getLogger("raysynth.flows")


@dataclass
class RealData:
    """The real splits, decoded once on the driver (few-shot data is small)."""

    images: ImageSet
    splits: Splits

    @property
    def class_names(self) -> list[str]:
        return list(self.images.class_names)

    @property
    def num_classes(self) -> int:
        return len(self.images.class_names)

    @property
    def channels(self) -> int:
        return self.images.channels

    def arrays(self, split: str) -> LabeledArrays:
        idx = getattr(self.splits, split)
        x = to_tensor_array([self.images.images[i] for i in idx], self.channels)
        return LabeledArrays(x, self.images.labels[idx])

    def ids_by_class(self, split: str = "train") -> dict[int, list[str]]:
        out: dict[int, list[str]] = {c: [] for c in range(self.num_classes)}
        for i in getattr(self.splits, split):
            out[int(self.images.labels[i])].append(self.images.sample_ids[i])
        return out

    def train_counts(self) -> list[int]:
        return self.splits.counts(self.images.labels, self.num_classes)["train"]

    @property
    def image_size(self) -> int:
        return int(self.arrays_shape()[-1])

    def arrays_shape(self) -> tuple[int, ...]:
        return to_tensor_array(self.images.images[:1], self.channels).shape


def prepare_real(run: RunDir, cfg: RunConfig) -> RealData:
    """Load the dataset and write ``real/`` (or read it back when it is already there)."""
    if not real_exists(run.root):
        images = load_dataset(cfg.data)
        splits = make_splits(images, cfg.data, cfg.seed)
        write_real(run.root, images, splits)
        if images.skipped:
            log.warning("skipped %d unreadable images (listed in the report)", len(images.skipped))
    images, splits = read_real_splits(run.root)
    return RealData(images, splits)


def train_real_classifier(run: RunDir, cfg: RunConfig, real: RealData) -> Path:
    """The end-to-end classifier trained on the real train split only (``train/real_classifier``).

    Its penultimate features embed images for the filter (digits), it guides feedback synthesis,
    and it is the real-only baseline of the classifier flow.
    """
    folder = run.sub("train") / "real_classifier"
    if (folder / MODEL_FILE).is_file():
        return folder
    train = real.arrays("train")
    enc = encoder_config(
        cfg.encoder.arch, real.channels, real.image_size, cfg.encoder.width, cfg.encoder.feat_dim
    )
    loop_cfg = {
        "real": train,
        "synthetic": LabeledArrays.empty_like(train),
        "eval": real.arrays("val"),
        "groups": real.splits.groups,
        "num_classes": real.num_classes,
        "encoder_cfg": enc,
        "cfg": cfg.end_to_end,
        "aug_kind": resolve_kind(cfg.encoder.augment, real.image_size),
        "seed": cfg.seed,
        "save_dir": str(folder),
        "checkpoint_dir": str(run.sub("train") / "real_classifier.ckpt"),
        "checkpoint_every": cfg.train.checkpoint_every,
        "threads": max(1, int(cfg.train.cpus_per_worker)),
    }
    metrics = run_trainer(end_to_end_loop, loop_cfg, cfg.train, "real_classifier", run.sub("train"))
    log.info("real-split classifier: validation accuracy %.3f", metrics.get("overall", float("nan")))
    return folder


def prepare_pixel_generator(run: RunDir, cfg: RunConfig, real: RealData) -> Path:
    """Train (or reuse) the class-conditional pixel diffusion model on the real train split."""
    from raysynth.generate.pixel import PixelDiffusionConfig
    from raysynth.generate.pixel_training import load_or_train

    g = cfg.synthesis.generator
    train = real.arrays("train")
    pcfg = PixelDiffusionConfig(
        image_size=int(train.x.shape[-1]),
        in_channels=real.channels,
        num_classes=real.num_classes,
        block_out_channels=tuple(g.pixel_channels),
        train_steps=g.pixel_train_steps,
        batch_size=g.pixel_batch_size,
        seed=cfg.seed,
    )
    last = {"t": 0}

    def progress(step: int, loss: float) -> None:
        if step - last["t"] >= 500 or step == pcfg.train_steps:
            last["t"] = step
            log.info("pixel diffusion model: step %d/%d, loss %.4f", step, pcfg.train_steps, loss)

    return load_or_train(run.sub("generator"), train.x, train.y, pcfg, real.class_names, progress)


def real_feature_gaussians(classifier_folder: Path, real: RealData) -> dict[str, np.ndarray]:
    """Per-class mean / regularised precision / log-det of the real features (hardness)."""
    import torch

    from raysynth.generate.guidance import class_gaussians
    from raysynth.train.checkpoint import load_model

    model = load_model(classifier_folder).eval()
    train = real.arrays("train")
    with torch.no_grad():
        feats = model.features(torch.from_numpy(train.x))
    g = class_gaussians(feats, torch.from_numpy(train.y), real.num_classes)
    return {"mean": g.mean.numpy(), "precision": g.precision.numpy(), "logdet": g.logdet.numpy()}
