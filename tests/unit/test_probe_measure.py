"""The closed loop's probe measurement (``synthesis.loop.measure=probe``): a linear probe on fixed
features, deterministic, mirroring the end-to-end classifier's synthetic share and balanced
softmax; and the wiring that picks it."""

from __future__ import annotations

import numpy as np
import pytest

from raysynth.config import build_config
from raysynth.errors import ConfigError
from raysynth.flows.measurement import measurement
from raysynth.train.measure import Features, probe_scores


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
