"""Allocation policies on hand-made measurements: exact counts, the stop rule, rounding."""

from __future__ import annotations

import random

import pytest

from raysynth.errors import ConfigError
from raysynth.plan.allocation import (
    ClassMeasure as M,
)
from raysynth.plan.allocation import (
    Measurements,
    PolicyOptions,
    allocate,
    apportion,
    round_budget,
    stopped,
)


def counts(policy, classes, budget, history=(), opts=None):
    m = Measurements(tuple(classes), tuple(tuple(h) for h in history), len(history))
    return list(allocate(policy, m, budget, opts or PolicyOptions()).counts)


def test_fixed_spends_what_is_left_of_each_quota():
    q = [M(0.5, quota=10), M(0.5, quota=5), M(0.5, quota=0)]
    assert counts("fixed", q, 6) == [4, 2, 0]
    assert counts("fixed", q, 7) == [5, 2, 0]
    # after a round that made 6 and 1: 4 and 4 left
    done = [M(0.5, quota=10, generated=6), M(0.5, quota=5, generated=1), M(0.5, quota=0)]
    assert counts("fixed", done, 8) == [4, 4, 0]


def test_balance_tops_up_the_deficit_to_the_head_class():
    cls = [M(0.1, real=40, quota=0), M(0.3, real=10, quota=30, accepted=5),
           M(0.6, real=4, quota=36)]
    assert counts("balance", cls, 10) == [0, 4, 6]
    assert counts("balance", cls, 61) == [0, 25, 36]


def test_error_and_entropy_are_proportional_with_largest_remainders():
    cls = [M(0.1), M(0.3), M(0.6)]
    assert counts("error", cls, 10) == [1, 3, 6]
    assert counts("error", cls, 7) == [1, 2, 4]
    ent = [M(0, entropy=0.5), M(0, entropy=0.5), M(0, entropy=1.0)]
    assert counts("entropy", ent, 5) == [1, 1, 3]
    tie = [M(0, entropy=1.0)] * 3
    assert counts("entropy", tie, 4) == [2, 1, 1]  # a tie goes to the lower class index


def test_closed_loop_is_need_times_acceptance_times_trust_plus_exploration():
    cls = [M(0.4), M(0.4, generated=9, accepted=4), M(0.4, trust=0.0)]
    assert counts("closed_loop", cls, 9, opts=PolicyOptions(explore=0.0)) == [6, 3, 0]
    assert counts("closed_loop", cls, 10, opts=PolicyOptions(explore=0.1)) == [5, 3, 2]


def test_ucb_tries_untried_classes_first_then_gain_plus_bonus():
    r0 = [M(0.5), M(0.5), M(0.5)]
    r1 = [M(0.3, accepted=10, gain=0.002), M(0.5, accepted=10, gain=0.0), M(0.5)]
    assert counts("ucb", r0, 6) == [2, 2, 2]
    assert counts("ucb", r1, 6, history=[r0]) == [0, 0, 6]
    r1b = [*r1[:2], M(0.4, accepted=10, gain=0.001)]
    assert counts("ucb", r1b, 10, history=[r0]) == [5, 2, 3]


def _flat_then_moving():
    # class 0: +0.01 then +0.005 accuracy over 10 images each (noise); class 1: +0.1 twice
    r0 = [M(0.2, val=25), M(0.5, val=25)]
    r1 = [M(0.2, val=25, accepted=10, gain=0.001), M(0.4, val=25, accepted=10, gain=0.01)]
    r2 = [M(0.2, val=25, accepted=20, gain=0.0005), M(0.3, val=25, accepted=20, gain=0.01)]
    return r0, r1, r2


def test_stop_rule_stops_a_flat_class_after_patience_rounds_only():
    r0, r1, r2 = _flat_then_moving()
    opts = PolicyOptions(stop_z=1.0, patience=2)
    assert stopped(Measurements(tuple(r1), (tuple(r0),)), opts) == frozenset()  # one round only
    m = Measurements(tuple(r2), (tuple(r0), tuple(r1)))
    assert stopped(m, opts) == frozenset({0})  # 0.015 <= 1 se (0.113); 0.2 > it
    assert stopped(m, PolicyOptions(stop_z=0.1, patience=2)) == frozenset()  # se·0.1 = 0.011
    # a stopped class gets nothing; its share goes to the others; stays stopped
    assert counts("closed_loop", r2, 7, history=[r0, r1], opts=opts) == [0, 7]
    again = Measurements(tuple(r2), (tuple(r0), tuple(r1)), 3, frozenset({1}))
    assert allocate("closed_loop", again, 7, opts).counts == (0, 0)


def test_stop_rule_stops_a_clear_loss_after_one_round():
    # class 0: accuracy 0.8 → 0.6 over 10 images (−0.2 < −1 se = −0.139 at p = 0.6, 25 val);
    # class 1: 0.8 → 0.76 (−0.04: within noise, kept until patience judges it)
    r0 = [M(0.2, val=25), M(0.2, val=25)]
    r1 = [M(0.4, val=25, accepted=10, gain=-0.02), M(0.24, val=25, accepted=10, gain=-0.004)]
    opts = PolicyOptions(stop_z=1.0, patience=2)
    m = Measurements(tuple(r1), (tuple(r0),))
    assert stopped(m, opts) == frozenset({0})
    assert stopped(m, PolicyOptions(stop_z=1.5, patience=2)) == frozenset()  # 1.5 se = 0.208
    assert counts("closed_loop", r1, 9, history=[r0], opts=opts) == [0, 9]


def test_apportion_never_loses_or_overspends():
    rng = random.Random(0)
    for _ in range(500):
        n = rng.randint(1, 12)
        w = [rng.choice([0.0, rng.random(), rng.random() * 1e-9, float("nan")]) for _ in range(n)]
        ok = [rng.random() > 0.2 for _ in range(n)]
        b = rng.randint(0, 1000)
        c = apportion(w, b, ok)
        assert min(c) >= 0
        assert sum(c) == (b if any(ok) else 0)
        assert all(ci == 0 for ci, e in zip(c, ok) if not e)


def test_round_budget_splits_the_rest_evenly_and_the_last_round_takes_it_all():
    assert [round_budget(100, s, 3, r) for s, r in ((0, 0), (33, 1), (66, 2))] == [33, 33, 34]
    assert round_budget(100, 20, 3, 1) == 40  # a stopped class's unspent share carries over
    with pytest.raises(ConfigError, match="outside"):
        round_budget(10, 0, 2, 2)
    with pytest.raises(ConfigError, match="choose one of"):
        allocate("greedy", Measurements((M(0.1),)), 1)


def test_decisions_are_deterministic():
    cls = [M(0.3, entropy=0.4, generated=5, accepted=3), M(0.1, entropy=0.9)]
    a = [allocate(p, Measurements(tuple(cls)), 11) for p in ("error", "closed_loop", "ucb")]
    b = [allocate(p, Measurements(tuple(cls)), 11) for p in ("error", "closed_loop", "ucb")]
    assert a == b
