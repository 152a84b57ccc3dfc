"""The closed loop's per-round measurement wired from the run's config (issue #16): which
scorer (``synthesis.loop.measure``), on which arrays and features — the scorers themselves are
:mod:`raysynth.train.measure`, the loop that calls them :mod:`raysynth.filter.loop`."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raysynth.config.schema import RunConfig
from raysynth.errors import ConfigError
from raysynth.filter.loop import Loop
from raysynth.seeding import stable_seed
from raysynth.train.arrays import LabeledArrays

log = logging.getLogger("raysynth.flows")

if TYPE_CHECKING:
    from raysynth.flows.real import RealData


def measurement(cfg: RunConfig, real: RealData, classifier: Path | None) -> Loop:
    """The closed loop's per-round measurement on real train ∪ the accepted images, scored on the
    validation split (the test split stays untouched): a linear probe on the real-split
    classifier's features (``synthesis.loop.measure`` ``probe``, and ``auto`` where the run
    trains that classifier), or the end-to-end classifier trained ``measure_epochs`` epochs
    (``classifier``). With the probe, each round also learns the per-class trust in the
    synthetic images (:func:`trust_kind`); the UniCon weights themselves come after this stage."""
    kind = cfg.synthesis.loop.measure
    if kind == "auto":
        kind = "probe" if classifier is not None else "classifier"
    trust = trust_kind(cfg, kind)
    if kind == "probe":
        if classifier is None:
            raise ConfigError(
                "synthesis.loop.measure=probe scores the rounds on the real-split classifier's "
                "features, which this run does not train (no classifier embedder or feedback "
                "guidance); set synthesis.loop.measure=classifier (or auto)"
            )
        return Loop(probe_measure(cfg, real, classifier, trust == "probe"), Path())
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


def trust_kind(cfg: RunConfig, measure: str) -> str:
    """``synthesis.loop.trust`` resolved against the measurement ``measure`` (probe |
    classifier): ``probe`` (the per-round weight search on the probe) or ``none`` (1 for every
    class). ``auto`` learns it in the unicon and classifier flows (UniCon's own weight search
    comes after this stage; the classifier flow can also train on the trusted share of each
    class, ``synthesis.loop.train_by_trust``) where the rounds are scored by the probe and the
    policy uses it (``closed_loop``: the search is most of a round's measurement); ``probe``
    asks for it (recorded for any policy) and is refused where there is no probe."""
    trust = cfg.synthesis.loop.trust
    if trust == "auto":
        used = cfg.flow in ("unicon", "classifier") and cfg.synthesis.allocation == "closed_loop"
        return "probe" if used and measure == "probe" else "none"
    if trust == "probe" and measure != "probe":
        raise ConfigError(
            "synthesis.loop.trust=probe learns the per-class trust on the probe's features, but "
            "this run scores its rounds with the quick classifier (synthesis.loop.measure="
            f"{cfg.synthesis.loop.measure} → classifier); set synthesis.loop.measure=probe "
            "(needs a real-split classifier: a classifier embedder or feedback guidance) or "
            "synthesis.loop.trust=none"
        )
    return trust


def probe_measure(cfg: RunConfig, real: RealData, classifier: Path, trust: bool = False) -> Any:
    """The probe measurement: features of the real train and validation images computed once,
    of each round's accepted images as they come (``train.measure.probe_scores``), with the
    learned trust (``train.measure.probe_trust``) when ``trust``."""
    from dataclasses import replace

    from raysynth.filter.classifier_embedder import ClassifierEmbedder
    from raysynth.train.measure import Features, probe_scores, probe_trust

    train, val = real.arrays("train"), real.arrays("val")
    embedder = ClassifierEmbedder(classifier, real.channels, int(train.x.shape[-1]))

    def features(a: LabeledArrays) -> Features:
        return Features(embedder.embed_arrays(a.x), a.y)

    train_f, val_f = features(train), features(val)
    e2e = cfg.end_to_end

    def measure(synthetic: LabeledArrays) -> Any:
        syn = features(synthetic)
        args = (train_f, syn, val_f, real.num_classes, e2e.synthetic_share, e2e.balanced_softmax)
        scores = probe_scores(*args)
        if not trust:
            return scores
        start = time.perf_counter()
        learned = probe_trust(*args)
        log.info("closed loop: learned trust %s in %.2f s", learned.round(2).tolist(),
                 time.perf_counter() - start)
        return replace(scores, trust=learned)

    return measure
