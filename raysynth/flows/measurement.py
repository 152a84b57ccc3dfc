"""The closed loop's per-round measurement wired from the run's config (issue #16): which
scorer (``synthesis.loop.measure``), on which arrays and features — the scorers themselves are
:mod:`raysynth.train.measure`, the loop that calls them :mod:`raysynth.filter.loop`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from raysynth.config.schema import RunConfig
from raysynth.errors import ConfigError
from raysynth.filter.loop import Loop
from raysynth.seeding import stable_seed
from raysynth.train.arrays import LabeledArrays

if TYPE_CHECKING:
    from raysynth.flows.real import RealData


def measurement(cfg: RunConfig, real: RealData, classifier: Path | None) -> Loop:
    """The closed loop's per-round measurement on real train ∪ the accepted images, scored on the
    validation split (the test split stays untouched): a linear probe on the real-split
    classifier's features (``synthesis.loop.measure`` ``probe``, and ``auto`` where the run
    trains that classifier), or the end-to-end classifier trained ``measure_epochs`` epochs
    (``classifier``). No trust: the learned UniCon weights come after this stage (a caller that
    has weights passes them as ``Loop.trust``)."""
    kind = cfg.synthesis.loop.measure
    if kind == "auto":
        kind = "probe" if classifier is not None else "classifier"
    if kind == "probe":
        if classifier is None:
            raise ConfigError(
                "synthesis.loop.measure=probe scores the rounds on the real-split classifier's "
                "features, which this run does not train (no classifier embedder or feedback "
                "guidance); set synthesis.loop.measure=classifier (or auto)"
            )
        return Loop(probe_measure(cfg, real, classifier), Path())
    from raysynth.train.augment import resolve_kind
    from raysynth.train.measure import quick_scores
    from raysynth.train.models import encoder_config

    train, val = real.arrays("train"), real.arrays("val")
    size = int(train.x.shape[-1])
    enc = encoder_config(cfg.encoder.arch, real.channels, size, cfg.encoder.width,
                         cfg.encoder.feat_dim, cfg.encoder.pretrained)
    aug, seed = resolve_kind(cfg.encoder.augment, size), stable_seed(cfg.seed, "measure")

    def measure(synthetic: LabeledArrays) -> Any:
        return quick_scores(train, synthetic, val, real.num_classes, enc, cfg.end_to_end,
                            cfg.synthesis.loop.measure_epochs, aug, seed)

    return Loop(measure, Path())


def probe_measure(cfg: RunConfig, real: RealData, classifier: Path) -> Any:
    """The probe measurement: features of the real train and validation images computed once,
    of each round's accepted images as they come (``train.measure.probe_scores``)."""
    from raysynth.filter.classifier_embedder import ClassifierEmbedder
    from raysynth.train.measure import Features, probe_scores

    train, val = real.arrays("train"), real.arrays("val")
    embedder = ClassifierEmbedder(classifier, real.channels, int(train.x.shape[-1]))

    def features(a: LabeledArrays) -> Features:
        return Features(embedder.embed_arrays(a.x), a.y)

    train_f, val_f = features(train), features(val)
    e2e = cfg.end_to_end

    def measure(synthetic: LabeledArrays) -> Any:
        return probe_scores(train_f, features(synthetic), val_f, real.num_classes,
                            e2e.synthetic_share, e2e.balanced_softmax)

    return measure
