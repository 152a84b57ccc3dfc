"""Closed-loop synthesis rounds (issue #16): measure, allocate, generate — round after round.

``synthesis.budget`` generated images are spread over ``synthesis.rounds``. Before each round the
measurement hook scores a quick classifier trained on real ∪ the images accepted in the earlier
rounds on the validation split; with the filter's counts, the learned trust and the accuracy
change since the previous round, that gives each class a :class:`ClassMeasure`, from which the
``synthesis.allocation`` policy splits the round's budget (:mod:`raysynth.plan.allocation`).

Every decision is appended to ``allocation.jsonl`` (one JSON object per round, written atomically
before the round's images are generated) and a resumed run replays the recorded decisions instead
of measuring again: the same counts, so the same rows and ``sample_id``s (round ``r``'s rows are
indices ``start .. start + n`` of each class in round ``r``, ``start`` = what earlier rounds
planned), and the generate stage skips the ids already written. A last record (``"final":
true``) holds the measurement after the last round: the end of the accuracy-vs-images curve.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc

from raysynth import columns as col
from raysynth.data import to_tensor_array
from raysynth.data.tables import trusted_rows
from raysynth.errors import ConfigError, RunDirError
from raysynth.files import atomic_write_text, finite
from raysynth.generate.table import iter_tables
from raysynth.plan.allocation import (
    ClassMeasure,
    Measurements,
    PolicyOptions,
    allocate,
    round_budget,
)
from raysynth.train.arrays import LabeledArrays
from raysynth.train.measure import ClassScores

log = logging.getLogger("raysynth.flows")

MeasureFn = Callable[[LabeledArrays], ClassScores]  # accepted so far → per-class val scores
AcceptedFn = Callable[[int], tuple[np.ndarray, np.ndarray]]  # round → accepted, rejected counts
ImagesFn = Callable[[int], LabeledArrays]  # round → the images accepted before it
RoundFn = Callable[[list[dict[str, Any]], int], int]  # plan rows, round → images generated
PlanFn = Callable[[dict[int, int], int, dict[int, int]], list[dict[str, Any]]]
MEASURED = ("error", "entropy", "generated", "accepted", "trust", "gain", "val", "real", "quota")


@dataclass(frozen=True)
class Loop:
    """What the closed loop needs besides the synthesis stage's own inputs: the measurement hook
    (``None``: record counts only — enough for ``fixed`` / ``balance``), where the decisions are
    recorded, and a fixed per-class trust (``None``: 1 for every class) — a measurement that
    learns the trust each round (``ClassScores.trust``) takes its place."""

    measure: MeasureFn | None
    log: Path
    trust: tuple[float, ...] | None = None


@dataclass(frozen=True)
class Plan:
    """The loop's fixed inputs: policy, its options, total budget, rounds, real counts, quotas."""

    policy: str
    options: PolicyOptions
    budget: int
    rounds: int
    real: tuple[int, ...]
    quota: tuple[int, ...]


def read_records(path: Path) -> list[dict[str, Any]]:
    """The recorded rounds (none when the file does not exist)."""
    if not path.is_file():
        return []
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise RunDirError(
            f"{path} is not valid JSON lines ({e}); it records the allocation decisions of this "
            "run — restore it, or move the run's synthetic/ and it aside to synthesize afresh"
        ) from e


def write_records(path: Path, records: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(finite(r), sort_keys=True) + "\n" for r in records))


def measures_of(record: dict[str, Any]) -> tuple[ClassMeasure, ...]:
    """A record's per-class measurements as :class:`ClassMeasure` (``None`` → NaN / no gain)."""
    cols = record["classes"]
    k = len(cols["error"])

    def value(name: str, c: int) -> Any:
        v = cols[name][c]
        if name == "gain":
            return v
        return math.nan if v is None else v

    return tuple(ClassMeasure(**{n: value(n, c) for n in MEASURED}) for c in range(k))


def measure_round(
    plan: Plan, loop: Loop, counts: tuple[np.ndarray, np.ndarray], images: LabeledArrays | None,
    previous: dict[str, Any] | None,
) -> dict[str, Any]:
    """The per-class measurements before a round, as the record's ``classes`` columns."""
    acc, rej = counts
    k = len(plan.real)
    trust = loop.trust or (1.0,) * k
    if loop.measure is not None and images is not None:
        s = loop.measure(images)
        error, entropy, val, overall = 1 - s.accuracy, s.entropy, s.count, s.overall
        trust = trust if s.trust is None else s.trust  # learned this round
    else:
        error, entropy, val, overall = np.full(k, np.nan), np.full(k, np.nan), np.zeros(k), None
    gain: list[float | None] = [None] * k
    if previous is not None and previous.get("overall") is not None and overall is not None:
        prev = measures_of(previous)
        for c in range(k):
            new = int(acc[c]) - prev[c].accepted
            if new > 0 and math.isfinite(prev[c].error) and math.isfinite(error[c]):
                gain[c] = float(prev[c].error - error[c]) / new
    cols = {
        "error": error, "entropy": entropy, "generated": acc + rej, "accepted": acc,
        "trust": trust, "gain": gain, "val": val, "real": plan.real, "quota": plan.quota,
    }
    return {"overall": overall, "classes": {n: [_plain(v) for v in cols[n]] for n in MEASURED}}


def _plain(v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, (int, np.integer)):
        return int(v)
    return float(v)


def decide(plan: Plan, records: list[dict[str, Any]], measured: dict[str, Any], round_: int
           ) -> dict[str, Any]:
    """Round ``round_``'s record: its measurements, budget and the policy's decision."""
    history = tuple(measures_of(r) for r in records)
    current = measures_of(measured)
    stopped = frozenset(records[-1]["stopped"]) if records else frozenset()
    spent = sum(sum(r["counts"]) for r in records)
    budget = round_budget(plan.budget, spent, plan.rounds, round_)
    m = Measurements(current, history, round_, stopped)
    d = allocate(plan.policy, m, budget, plan.options)
    return {
        "round": round_, "policy": plan.policy, "budget": budget, "spent_before": spent,
        **measured, "counts": list(d.counts), "stopped": sorted(d.stopped),
        "weights": list(d.weights),
    }


def run_loop(
    plan: Plan, loop: Loop, accepted: AcceptedFn, images: ImagesFn, plan_rows: PlanFn,
    run_round: RoundFn,
) -> list[dict[str, Any]]:
    """Measure → allocate → generate for every round, replaying the rounds ``loop.log`` already
    records; returns the records (the last one ``final``)."""
    if plan.policy not in ("fixed", "balance") and loop.measure is None:
        raise ConfigError(f"synthesis.allocation={plan.policy} needs the per-round measurement")
    records = read_records(loop.log)
    rounds = [r for r in records if not r.get("final")]
    done = any(r.get("final") for r in records)
    start: dict[int, int] = {c: 0 for c in range(len(plan.real))}
    for r in range(plan.rounds):
        if r >= len(rounds) and done:
            break  # the loop stopped early (every class stopped) before the kill
        if r < len(rounds):
            record = rounds[r]
            log.info("allocation round %d: replaying the recorded decision", r)
        else:
            measured = measure_round(plan, loop, accepted(r), _images(loop, images, r),
                                     rounds[-1] if rounds else None)
            record = decide(plan, rounds, measured, r)
            rounds.append(record)
            write_records(loop.log, rounds)
        counts = {c: int(n) for c, n in enumerate(record["counts"]) if n > 0}
        log.info("allocation round %d (%s): %d images %s", r, plan.policy, sum(counts.values()),
                 record["counts"])
        if counts:
            run_round(plan_rows(counts, r, dict(start)), r)
        for c, n in counts.items():
            start[c] += n
        if not counts and record["stopped"]:
            break  # every class stopped: the rest of the budget stays unspent
    final = next((r for r in records if r.get("final")), None)
    if final is None:
        after = len(rounds)
        final = {"round": after, "final": True, "counts": [], "stopped": rounds[-1]["stopped"],
                 **measure_round(plan, loop, accepted(after), _images(loop, images, after),
                                 rounds[-1])}
        write_records(loop.log, [*rounds, final])
    return [*rounds, final]


def _images(loop: Loop, images: ImagesFn, r: int) -> LabeledArrays | None:
    return images(r) if loop.measure is not None else None


def accepted_images(root: Path, channels: int, size: int, before_round: int | None = None,
                    trust: Sequence[float] | None = None) -> LabeledArrays:
    """The accepted synthetic images (rounds ``< before_round`` when given; with ``trust``, only
    the rows :func:`raysynth.data.tables.trusted_rows` keeps) as training arrays, in
    ``sample_id`` order: which Parquet part holds a row depends on how Ray Data happened to
    batch the stream, so the parts' order would make the images drawn for training depend on
    timing (DESIGN §2: nothing depends on order of arrival)."""
    rows: list[tuple[str, int, bytes]] = []
    for t in iter_tables(root, [col.SAMPLE_ID, col.LABEL, col.IMAGE, col.ACCEPTED, col.ROUND]):
        keep = t.filter(t[col.ACCEPTED].fill_null(False))
        if before_round is not None:
            keep = keep.filter(pc.less(keep[col.ROUND], before_round))
        ids, labels, pngs = (keep[c].to_pylist() for c in (col.SAMPLE_ID, col.LABEL, col.IMAGE))
        rows.extend(zip(ids, labels, pngs))
    rows.sort(key=lambda r: r[0])
    if trust is not None and rows:
        keep = trusted_rows([r[0] for r in rows], [r[1] for r in rows], trust)
        rows = [r for r, k in zip(rows, keep) if k]
    if not rows:
        empty = np.zeros((0, channels, size, size), np.float32)
        return LabeledArrays(empty, np.zeros(0, np.int64))
    x = to_tensor_array([r[2] for r in rows], channels)
    return LabeledArrays(x, np.array([r[1] for r in rows], np.int64))


def plan_of(policy: str, options: Any, budget: int, rounds: int, real: list[int],
            quota: dict[int, int]) -> Plan:
    """The loop's :class:`Plan` (``budget`` 0 → the quotas' total)."""
    q = tuple(int(quota.get(c, 0)) for c in range(len(real)))
    opts = PolicyOptions(**{f.name: getattr(options, f.name) for f in fields(PolicyOptions)})
    return Plan(policy, opts, budget or sum(q), rounds, tuple(real), q)


def summary(records: list[dict[str, Any]], plan: Plan) -> dict[str, Any]:
    """The ``allocation`` section of synthesis.json: the policy, budget, per-round counts and
    the accuracy-vs-images-generated curve."""
    curve = [{"generated": r["spent_before"] if not r.get("final") else
              sum(sum(x["counts"]) for x in records if not x.get("final")),
              "val_accuracy": r.get("overall")} for r in records]
    return {
        "policy": plan.policy, "budget": plan.budget, "rounds": plan.rounds,
        "options": asdict(plan.options),
        "counts": [r["counts"] for r in records if not r.get("final")],
        "stopped": records[-1]["stopped"], "curve": curve,
        "acceptance": [_acceptance(a, b) for a, b in zip(records, records[1:])],
        "trust": [r["classes"]["trust"] for r in records[:-1]],
        # learned on every accepted image (the measurement after the last round): what the
        # classifier flow keeps of each class's synthetic images (synthesis.loop.train_by_trust)
        "final_trust": records[-1]["classes"]["trust"],
    }


def _acceptance(before: dict[str, Any], after: dict[str, Any]) -> list[float | None]:
    """Each class's acceptance rate of the images made between two records (None: none made)."""
    a, b = before["classes"], after["classes"]
    out: list[float | None] = []
    for c in range(len(a["generated"])):
        made = b["generated"][c] - a["generated"][c]
        out.append((b["accepted"][c] - a["accepted"][c]) / made if made > 0 else None)
    return out
