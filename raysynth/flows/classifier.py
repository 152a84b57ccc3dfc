"""``flow: classifier`` (papers 002/003): an end-to-end classifier on real ∪ synthetic (batch
share, balanced softmax, optional DiffCoRe-Mix mixing) against the same classifier on real images
only, per class group (many/medium/few) on the test split."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from raysynth.config.schema import RunConfig
from raysynth.data.tables import ImageTable, keep_trusted
from raysynth.errors import DataError
from raysynth.files import cached
from raysynth.flows.end_to_end import Inputs, empty_like, real_table, streams, train_end_to_end
from raysynth.flows.job import Job
from raysynth.flows.prepare import accepted_arrays, synthetic_inputs
from raysynth.seeding import stable_seed
from raysynth.train.protocol import class_groups, fold_class_groups

log = logging.getLogger("raysynth.flows")

STAGES = ("data", "generator", "synthesis", "final", "report")


def check(cfg: RunConfig, num_classes: int) -> None:
    """Nothing beyond the shared checks."""


def run(job: Job) -> dict[str, Any] | None:
    synthesis, table = synthetic_inputs(job, decode=False)
    if job.stops_after("synthesis"):
        return {"synthesis": synthesis}
    job.stage("final")
    job.run.stage("final")
    real = job.real
    shape = (real.num_classes, real.channels, real.image_size)
    train = real_table(job.run.root, "train", *shape)
    check_classes(train, table, real.class_names)
    cfg, trust = job.cfg, learned_trust(job.cfg, synthesis)
    if trust is not None:
        table, cfg = trusted(table, trust, job.cfg, job.report, real.class_names)
    if streams(cfg, len(train) + len(table)):
        log.info("final classifiers stream %d real and %d synthetic rows from Parquet",
                 len(train), len(table))
        data = (train, table, real_table(job.run.root, "test", *shape))
    else:
        data = (real.arrays("train"), accepted_arrays(job.run.synthetic, real, trust),
                real.arrays("test"))
    job.report["classifier"] = compare(*data, real.splits.groups, real.num_classes, cfg,
                                       job.run.train, real.contexts("test"))
    return None


def learned_trust(cfg: RunConfig, synthesis: dict[str, Any]) -> list[float] | None:
    """The closed loop's per-class trust learned on every accepted image (the synthesis
    summary's ``allocation.final_trust``), where the loop learned one (some class below 1) and
    ``synthesis.loop.train_by_trust`` is on; else None (train on every accepted image)."""
    if not cfg.synthesis.loop.train_by_trust:
        return None
    trust = (synthesis.get("allocation") or {}).get("final_trust")
    if not trust or all(t is None or t >= 1 for t in trust):
        return None
    return [1.0 if t is None else float(t) for t in trust]


def trusted(table: ImageTable, trust: list[float], cfg: RunConfig, report: dict[str, Any],
            names: list[str]) -> tuple[ImageTable, RunConfig]:
    """The rows of ``table`` the trust keeps (:func:`raysynth.data.tables.keep_trusted`) and the
    config with the synthetic batch share scaled by the share kept — so each kept image is drawn
    as often as with every image, as the probe that learned the trust weighs them — recorded in
    ``report["trust"]``."""
    kept = keep_trusted(table, trust)
    share = cfg.end_to_end.synthetic_share * len(kept) / max(1, len(table))
    log.info("the closed loop's trust keeps %d of %d synthetic images (%s); synthetic batch "
             "share %.3f", len(kept), len(table),
             ", ".join(f"{n} {k}/{a}" for n, k, a in zip(names, kept.counts, table.counts)),
             share)
    report["trust"] = {"trust": trust, "accepted": list(table.counts),
                       "kept": list(kept.counts), "synthetic_share": share}
    return kept, replace(cfg, end_to_end=replace(cfg.end_to_end, synthetic_share=share))


def check_classes(real: ImageTable, synthetic: ImageTable, names: list[str]) -> None:
    """A class with no training row at all cannot be learned: a :class:`DataError` naming it;
    classes without an accepted synthetic image are logged (their share is real only)."""
    empty = [names[c] for c, (r, s) in enumerate(zip(real.counts, synthetic.counts)) if r + s == 0]
    if empty:
        raise DataError(
            f"class(es) {', '.join(map(repr, empty))} have no real training image and no "
            "accepted synthetic image; lower the filter threshold or add images of them"
        )
    if len(synthetic):
        none = [names[c] for c, s in enumerate(synthetic.counts) if s == 0]
        if none:
            log.warning("no accepted synthetic image for class(es) %s: their batches hold "
                        "real images only", ", ".join(map(repr, none)))


@dataclass(frozen=True)
class ClassifierData:
    """What one classifier run trains on and is scored on."""

    real: Inputs
    synthetic: Inputs
    test: Inputs
    groups: dict[str, list[int]]
    num_classes: int
    contexts: tuple[list[str], list[str]] | None = None  # test rows' groups, class names


def compare(
    real_train: Inputs,
    synthetic: Inputs,
    test: Inputs,
    groups: dict[str, list[int]],
    num_classes: int,
    cfg: RunConfig,
    storage: Path,
    contexts: tuple[list[str], list[str]] | None = None,
) -> dict[str, Any]:
    """Real-only against real ∪ synthetic, the same classifier and protocol (arrays, or
    :class:`ImageTable` s streamed into the Train workers); per group and, in ``per_class``, per
    class."""
    empty = empty_like(real_train)
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
