"""Closed-loop allocation: how a round's generation budget is split across classes (issue #16).

One small interface: a policy takes the per-class measurements of the rounds so far
(:class:`Measurements`) and the round's budget, and returns per-class counts that sum to the
budget exactly (:func:`apportion`: largest remainders, ties to the lower class index) — or to
less only when every class has stopped. Policies are pure functions of their inputs: a resumed
run that replays the recorded measurements gets the same decisions.

- ``fixed`` — the configured quotas' proportions (today's ``synthesis.quota``);
- ``balance`` — the deficits to a target count (today's top-up);
- ``error`` — proportional to the validation error rate (ActGen);
- ``entropy`` — proportional to the mean predictive entropy (Deliberate Practice);
- ``ucb`` — a bandit over classes on the observed marginal gain (UCB1 bonus);
- ``closed_loop`` — expected gain per generated image, need × acceptance × trust, plus an
  exploration bonus, and a per-class stop (:func:`stopped`) once the class's validation
  accuracy no longer moves by more than its sampling noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from raysynth.errors import ConfigError


@dataclass(frozen=True)
class ClassMeasure:
    """One class after a round: val error rate and mean entropy of the quick classifier, images
    generated and accepted so far, learned trust (1 where the flow has no weight), the class's
    validation accuracy change per accepted image since the previous measurement (``None``
    before any), the number of validation images and of real train images, and the target
    (quota) count the fixed / balance policies use."""

    error: float
    entropy: float = 0.0
    generated: int = 0
    accepted: int = 0
    trust: float = 1.0
    gain: float | None = None
    val: int = 1
    real: int = 0
    quota: int = 0

    @property
    def acceptance(self) -> float:
        """Accepted / generated, with one accepted image of prior (1.0 before any image)."""
        return (self.accepted + 1) / (self.generated + 1)


@dataclass(frozen=True)
class Measurements:
    """Per-class measurements of the current round plus the history of earlier ones (oldest
    first; the same layout), the round's index and the classes stopped so far."""

    classes: tuple[ClassMeasure, ...]
    history: tuple[tuple[ClassMeasure, ...], ...] = ()
    round: int = 0
    stopped: frozenset[int] = field(default_factory=frozenset)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass(frozen=True)
class PolicyOptions:
    """``synthesis.loop``'s policy knobs: exploration weight, the stop rule's z and patience."""

    explore: float = 0.1
    stop_z: float = 1.0
    patience: int = 2  # rounds with images in which a class's accuracy must stay flat to stop


def apportion(weights: Sequence[float], budget: int, eligible: Sequence[bool] | None = None
              ) -> list[int]:
    """Integer counts proportional to ``weights`` summing to ``budget`` exactly (largest
    remainders; ties to the lower index). Zero / negative / non-finite weights count as zero;
    when every eligible weight is zero the budget is spread evenly over the eligible classes.
    No eligible class → all zeros."""
    if budget < 0:
        raise ConfigError(f"a round's budget must be >= 0, got {budget}")
    n = len(weights)
    ok = list(eligible) if eligible is not None else [True] * n
    w = [max(0.0, x) if ok[i] and math.isfinite(x) else 0.0 for i, x in enumerate(weights)]
    if sum(w) <= 0:
        w = [1.0 if ok[i] else 0.0 for i in range(n)]
    total = sum(w)
    if total <= 0 or budget == 0:
        return [0] * n
    exact = [budget * x / total for x in w]
    counts = [math.floor(e) for e in exact]
    left = budget - sum(counts)
    order = sorted(range(n), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in [i for i in order if w[i] > 0][:left]:
        counts[i] += 1
    return counts


def stopped(m: Measurements, opts: PolicyOptions) -> frozenset[int]:
    """Classes whose marginal gain is indistinguishable from zero: over their last
    ``patience`` measured rounds in which they received images, the validation accuracy rose by
    no more than ``stop_z`` standard errors of a difference of two accuracies on ``val`` images
    (p clamped to [1/val, 1 - 1/val], so a class at 100% is not infinitely certain) — or, after
    a single such round, fell by more than ``stop_z`` standard errors (a clear loss needs no
    second round to confirm it). Once stopped, a class stays stopped."""
    out = set(m.stopped)
    rounds = (*m.history, m.classes)
    for c in range(m.num_classes):
        if c in out:
            continue
        moved = [r[c].gain * _new_accepted(rounds, i, c) for i, r in enumerate(rounds)
                 if i and r[c].gain is not None and _new_accepted(rounds, i, c) > 0]
        if not moved:
            continue
        cur = m.classes[c]
        n = max(1, cur.val)
        p = min(max(1 - cur.error, 1 / n), 1 - 1 / n) if n > 1 else 0.5
        se = math.sqrt(2 * p * (1 - p) / n)
        if moved[-1] < -opts.stop_z * se:
            out.add(c)  # a clear loss in the last round
        elif len(moved) >= opts.patience and sum(moved[-opts.patience:]) <= opts.stop_z * se:
            out.add(c)
    return frozenset(out)


def _new_accepted(rounds: Sequence[Sequence[ClassMeasure]], i: int, c: int) -> int:
    return rounds[i][c].accepted - rounds[i - 1][c].accepted


def _fixed(m: Measurements, opts: PolicyOptions) -> list[float]:
    """What is left of each quota (so the rounds together make the quotas exactly); the quotas'
    proportions once every quota is met."""
    left = [float(max(0, c.quota - c.generated)) for c in m.classes]
    return left if any(left) else [float(c.quota) for c in m.classes]


def _balance(m: Measurements, opts: PolicyOptions) -> list[float]:
    target = max((c.quota + c.real for c in m.classes), default=0)
    return [float(max(0, target - c.real - c.accepted)) for c in m.classes]


def _error(m: Measurements, opts: PolicyOptions) -> list[float]:
    return [c.error for c in m.classes]


def _entropy(m: Measurements, opts: PolicyOptions) -> list[float]:
    return [c.entropy for c in m.classes]


def _ucb(m: Measurements, opts: PolicyOptions) -> list[float]:
    """Mean observed gain per accepted image (×100: points per image) + a UCB1 bonus
    ``explore·sqrt(2 ln t / n_c)``, n_c the rounds in which class c received images."""
    rounds = (*m.history, m.classes)
    t = len(rounds)
    out = []
    for c in range(m.num_classes):
        gains = [r[c].gain for i, r in enumerate(rounds)
                 if i and r[c].gain is not None and _new_accepted(rounds, i, c) > 0]
        if not gains:
            out.append(math.inf)  # an arm never pulled is tried first
            continue
        mean = 100 * sum(gains) / len(gains)
        out.append(max(0.0, mean) + opts.explore * math.sqrt(2 * math.log(t) / len(gains)))
    if all(math.isinf(x) for x in out) or not any(math.isinf(x) for x in out):
        return [1.0 if math.isinf(x) else x for x in out]
    return [1.0 if math.isinf(x) else 0.0 for x in out]  # untried arms first


def _closed_loop(m: Measurements, opts: PolicyOptions) -> list[float]:
    """Expected gain per generated image: need × acceptance × trust + exploration.

    need = the mean of the error rate and the entropy normalised by ln K (the two say how much
    the classifier still gets wrong and how unsure it is); acceptance = the share of a class's
    generated images the filter keeps; trust = the learned weight (1 without one). The bonus
    ``explore / sqrt(1 + accepted)`` keeps sampling classes with few synthetic images."""
    k = max(2, m.num_classes)
    out = []
    for c in m.classes:
        need = 0.5 * c.error + 0.5 * min(1.0, c.entropy / math.log(k))
        out.append(need * c.acceptance * c.trust + opts.explore / math.sqrt(1 + c.accepted))
    return out


POLICIES: dict[str, Callable[[Measurements, PolicyOptions], list[float]]] = {
    "fixed": _fixed,
    "balance": _balance,
    "error": _error,
    "entropy": _entropy,
    "ucb": _ucb,
    "closed_loop": _closed_loop,
}


@dataclass(frozen=True)
class Decision:
    counts: tuple[int, ...]
    stopped: frozenset[int]
    weights: tuple[float, ...]


def allocate(policy: str, m: Measurements, budget: int, opts: PolicyOptions = PolicyOptions()
             ) -> Decision:
    """The round's per-class counts under ``policy`` (sum = ``budget`` unless every class has
    stopped; only ``closed_loop`` stops classes)."""
    if policy not in POLICIES:
        raise ConfigError(
            f"synthesis.allocation: got {policy!r}; choose one of {', '.join(POLICIES)}"
        )
    weights = POLICIES[policy](m, opts)
    stop = stopped(m, opts) if policy == "closed_loop" else frozenset()
    eligible = [c not in stop for c in range(m.num_classes)]
    if policy in ("fixed", "balance"):  # a class with no quota / deficit gets nothing
        eligible = [e and w > 0 for e, w in zip(eligible, weights)] if any(weights) else eligible
    counts = apportion(weights, budget, eligible)
    finite = tuple(float(w) if math.isfinite(w) else 1e300 for w in weights)
    return Decision(tuple(counts), stop, finite)


def round_budget(total: int, spent: int, rounds: int, round_: int) -> int:
    """Round ``round_``'s share of what is left: an even split of ``total - spent`` over the
    remaining rounds (the last takes the rest, so the budget is never lost or overspent)."""
    if not 0 <= round_ < rounds:
        raise ConfigError(f"round {round_} is outside 0..{rounds - 1}")
    left = max(0, total - spent)
    return left // (rounds - round_) if round_ < rounds - 1 else left
