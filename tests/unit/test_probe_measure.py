"""The closed loop's probe measurement (``synthesis.loop.measure=probe``): a linear probe on fixed
features, deterministic, mirroring the end-to-end classifier's synthetic share and balanced
softmax; its learned per-class trust (``synthesis.loop.trust=probe``); and the wiring that
picks them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from raysynth.config import build_config
from raysynth.config.schema import LoopConfig
from raysynth.errors import ConfigError
from raysynth.filter.loop import Loop, decide, measure_round, plan_of
from raysynth.flows.measurement import measurement, trust_kind
from raysynth.train.measure import Features, probe_scores, probe_trust


def gaussians(counts: list[int], seed: int, spread: float = 1.0) -> Features:
    """Class c's rows at N(mean_c, spread²) in 2-D, means on a line 2 apart."""
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal([2.0 * c, 0.0], spread, (n, 2)) for c, n in enumerate(counts)])
    y = np.concatenate([np.full(n, c) for c, n in enumerate(counts)])
    return Features(x.astype(np.float32), y.astype(np.int64))


EMPTY = Features(np.zeros((0, 2), np.float32), np.zeros(0, np.int64))


def test_probe_is_deterministic_and_scores_separable_classes_exactly():
    real = gaussians([30, 30, 30], 0, spread=0.1)
    val = gaussians([10, 10, 10], 1, spread=0.1)
    a = probe_scores(real, EMPTY, val, 3, 0.5, False)
    b = probe_scores(real, EMPTY, val, 3, 0.5, False)
    assert a.accuracy.tolist() == [1.0, 1.0, 1.0] and a.overall == 1.0
    assert a.count.tolist() == [10, 10, 10]
    np.testing.assert_array_equal(a.entropy, b.entropy)  # same inputs, same probe, bit for bit
    assert (a.entropy < 0.3).all()  # confident on well separated classes (ln 3 = 1.1)...
    assert a.entropy[1] > max(a.entropy[0], a.entropy[2])  # ... least on the one with 2 borders


def test_balanced_softmax_removes_the_head_class_prior():
    """90/10 overlapping classes: the plain probe's boundary moves into the rare class, the
    balanced one (log prior added in training only) keeps it near the middle."""
    real, val = gaussians([180, 20], 2), gaussians([200, 200], 3)
    plain = probe_scores(real, EMPTY, val, 2, 0.5, False)
    balanced = probe_scores(real, EMPTY, val, 2, 0.5, True)
    assert plain.accuracy[1] < 0.6 < balanced.accuracy[1]
    assert balanced.accuracy[0] < plain.accuracy[0]


def test_synthetic_rows_weigh_their_share_and_move_the_scores():
    """Synthetic rows of the rare class: with share 0.5 they carry half the loss, so the rare
    class's validation accuracy rises; share 0 would ignore them (the same probe as none)."""
    real, val = gaussians([180, 20], 2), gaussians([200, 200], 3)
    syn = gaussians([0, 100], 4)
    none = probe_scores(real, EMPTY, val, 2, 0.5, False)
    half = probe_scores(real, syn, val, 2, 0.5, False)
    zero = probe_scores(real, syn, val, 2, 0.0, False)
    assert half.accuracy[1] > none.accuracy[1] + 0.2
    np.testing.assert_allclose(zero.accuracy, none.accuracy)


def test_probe_needs_a_real_split_classifier():
    cfg = build_config(preset="digits-lt", overrides={"synthesis.loop.measure": "probe"})
    with pytest.raises(ConfigError, match="synthesis.loop.measure=classifier"):
        measurement(cfg, None, None)  # type: ignore[arg-type]


def test_measure_key_is_checked():
    with pytest.raises(ConfigError, match="synthesis.loop.measure"):
        build_config(preset="digits-lt", overrides={"synthesis.loop.measure": "probes"})


def trust_case() -> tuple[Features, Features, Features]:
    """3 overlapping classes, class 1 rare (5 real rows). Synthetic rows: 40 of class 1 drawn
    like class 1 (they help), 40 labelled 0 but drawn like class 2 (the wrong label)."""
    real, val = gaussians([30, 5, 30], 0), gaussians([20, 20, 20], 1)
    helps = gaussians([0, 40, 0], 2)
    wrong = gaussians([0, 0, 40], 3)
    syn = Features(np.concatenate([helps.x, wrong.x]),
                   np.concatenate([helps.y, np.zeros(40, np.int64)]))
    return real, syn, val


def test_trust_is_0_for_wrongly_labelled_rows_and_1_for_rows_that_help():
    real, syn, val = trust_case()
    w = probe_trust(real, syn, val, 3, 0.5, True)
    assert w.tolist() == [0.0, 1.0, 1.0]  # class 2 has no synthetic rows: nothing to distrust
    assert probe_trust(real, syn, val, 3, 0.5, True).tolist() == w.tolist()  # deterministic
    assert probe_trust(real, EMPTY, val, 3, 0.5, True).tolist() == [1.0, 1.0, 1.0]


def test_trust_of_noise_rows_is_0():
    """Rows labelled 1 at random places (noise): trusting them lowers the validation
    likelihood, so their weight goes to 0; the other classes have no synthetic rows."""
    real, val = gaussians([30, 5, 30], 0), gaussians([20, 20, 20], 1)
    rng = np.random.default_rng(5)
    noise = Features(rng.uniform(-6, 10, (40, 2)).astype(np.float32), np.ones(40, np.int64))
    assert probe_trust(real, noise, val, 3, 0.5, True).tolist() == [1.0, 0.0, 1.0]


def test_learned_trust_moves_closed_loop_allocation_away_from_the_distrusted_class():
    """The trust above, through the loop's record, into closed_loop's exact counts."""
    real, syn, val = trust_case()
    scores = probe_scores(real, syn, val, 3, 0.5, True)
    learned = replace(scores, trust=probe_trust(real, syn, val, 3, 0.5, True))
    plan = plan_of("closed_loop", LoopConfig(explore=0.0), 30, 1, [30, 5, 30], {})
    acc = np.bincount(syn.y, minlength=3)
    with_trust = measure_round(plan, Loop(lambda _: learned, Path()), (acc, acc * 0), syn, None)
    without = measure_round(plan, Loop(lambda _: scores, Path()), (acc, acc * 0), syn, None)
    assert with_trust["classes"]["trust"] == [0.0, 1.0, 1.0]
    assert without["classes"]["trust"] == [1.0, 1.0, 1.0]
    assert decide(plan, [], with_trust, 0)["counts"] == [0, 16, 14]
    assert decide(plan, [], without, 0)["counts"] == [8, 12, 10]


def test_trust_key_is_checked_and_resolved():
    with pytest.raises(ConfigError, match="synthesis.loop.trust"):
        build_config(preset="digits", overrides={"synthesis.loop.trust": "learned"})
    with pytest.raises(ConfigError, match="trust: probe .*measure=classifier there is no probe"):
        build_config(preset="digits", overrides={"synthesis.loop.trust": "probe",
                                                 "synthesis.loop.measure": "classifier"})
    unicon = build_config(preset="digits", overrides={"synthesis.allocation": "closed_loop"})
    assert trust_kind(unicon, "probe") == "probe" and trust_kind(unicon, "classifier") == "none"
    assert trust_kind(build_config(preset="digits"), "probe") == "none"  # fixed: not used
    assert trust_kind(build_config(preset="digits-lt"), "probe") == "none"  # fixed: not used
    lt_loop = build_config(preset="digits-lt", overrides={"synthesis.allocation": "closed_loop"})
    assert trust_kind(lt_loop, "probe") == "probe"  # the classifier flow trains on the trust
    air = build_config(preset="digits", overrides={"flow": "air",
                                                   "synthesis.allocation": "closed_loop"})
    assert trust_kind(air, "probe") == "none"  # no flow of its own uses it
    probe = build_config(preset="digits-lt", overrides={"synthesis.loop.trust": "probe"})
    assert trust_kind(probe, "probe") == "probe"
    with pytest.raises(ConfigError, match="synthesis.loop.trust=none"):
        measurement(probe, None, None)  # type: ignore[arg-type]  # auto → classifier: no probe
