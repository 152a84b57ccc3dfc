"""``flow: classifier`` (papers 002/003): an end-to-end classifier on real ∪ synthetic (batch
share, balanced softmax, optional DiffCoRe-Mix mixing) against the same classifier on real images
only, per class group (many/medium/few) on the test split."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from raysynth.config.schema import RunConfig
from raysynth.files import cached
from raysynth.flows.job import Job
from raysynth.flows.prepare import synthetic_inputs, train_end_to_end
from raysynth.seeding import stable_seed
from raysynth.train.arrays import LabeledArrays
from raysynth.train.protocol import class_groups, fold_class_groups

log = logging.getLogger("raysynth.flows")

STAGES = ("data", "generator", "synthesis", "final", "report")


def check(cfg: RunConfig, num_classes: int) -> None:
    """Nothing beyond the shared checks."""


def run(job: Job) -> dict[str, Any] | None:
    synthesis, synthetic = synthetic_inputs(job)
    if job.stops_after("synthesis"):
        return {"synthesis": synthesis}
    job.stage("final")
    job.run.stage("final")
    real = job.real
    data = (real.arrays("train"), synthetic, real.arrays("test"), real.splits.groups,
            real.num_classes)
    job.report["classifier"] = compare(*data, job.cfg, job.run.train, real.contexts("test"))
    return None


@dataclass(frozen=True)
class ClassifierData:
    """What one classifier run trains on and is scored on."""

    real: LabeledArrays
    synthetic: LabeledArrays
    test: LabeledArrays
    groups: dict[str, list[int]]
    num_classes: int
    contexts: tuple[list[str], list[str]] | None = None  # test rows' groups, class names


def compare(
    real_train: LabeledArrays,
    synthetic: LabeledArrays,
    test: LabeledArrays,
    groups: dict[str, list[int]],
    num_classes: int,
    cfg: RunConfig,
    storage: Path,
    contexts: tuple[list[str], list[str]] | None = None,
) -> dict[str, Any]:
    """Real-only against real ∪ synthetic, the same classifier and protocol; per group and, in
    ``per_class``, per class."""
    empty = LabeledArrays.empty_like(real_train)
    groups = {**groups, **class_groups(num_classes)}
    real_only = classifier_runs(
        ClassifierData(real_train, empty, test, groups, num_classes, contexts), cfg, storage,
        "real_only",
    )
    mix = cfg.mix.fraction if cfg.mix.enabled else 0.0
    with_syn = classifier_runs(
        ClassifierData(real_train, synthetic, test, groups, num_classes, contexts), cfg, storage,
        "with_synthetic", mix_fraction=mix,
    )
    for name, res in (("real only", real_only), ("with synthetic", with_syn)):
        log.info("final classifier, %s: %s", name,
                 ", ".join(f"{k} {v['mean']:.3f}" for k, v in res.items()
                           if k != "per_class" and not k.startswith("group:")))
    return {"real_only": real_only, "with_synthetic": with_syn}


def classifier_runs(
    data: ClassifierData, cfg: RunConfig, storage: Path, name: str, mix_fraction: float = 0.0
) -> dict[str, Any]:
    """``protocol.n_contr`` end-to-end classifiers (different seeds); per-group mean and std.
    Each finished run's metrics are kept in ``<storage>/<name>-r<i>/result.json``."""
    d = data
    runs = []
    for r in range(cfg.protocol.n_contr):
        folder = storage / f"{name}-r{r}"

        def train(folder: Path = folder, r: int = r) -> dict[str, float]:
            return train_end_to_end(
                cfg, d.real, d.synthetic, d.test, d.groups, d.num_classes,
                stable_seed(cfg.seed, name, r), folder / "model", folder / "ckpt", storage,
                f"{name}-r{r}", mix_fraction, d.contexts,
            )

        runs.append(cached(folder / "result.json", train))
    return fold_class_groups({
        k: {"mean": float(np.nanmean([m.get(k, np.nan) for m in runs])),
            "std": float(np.nanstd([m.get(k, np.nan) for m in runs])), "runs": len(runs)}
        for k in runs[0]
    })
