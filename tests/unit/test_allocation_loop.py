"""The closed loop's rounds without Ray: allocation.jsonl records each round before its images
are made, and a run killed mid-allocation replays the records — same decisions, same sample ids,
each id written once. The stand-in generator accepts every row (the loop is under test here;
tests/e2e/test_study.py runs it with the real generator, filter stage and quick classifier)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from raysynth.config.schema import LoopConfig, SynthesisConfig
from raysynth.filter.loop import Loop, plan_of, read_records, run_loop
from raysynth.plan.quotas import plan_round, quotas
from raysynth.train.arrays import LabeledArrays
from raysynth.train.measure import ClassScores

NAMES = ["a", "b", "c"]
IDS = {c: [f"real-{c}-{i}" for i in range(4)] for c in range(3)}
REAL = [40, 10, 4]
CFG = SynthesisConfig(quota="top_up", top_up_to=40)


class Killed(Exception):
    pass


class Table:
    """The synthetic table: rows written once per sample_id (as the generate stage skips ids
    already there), killed part-way through one round when asked."""

    def __init__(self) -> None:
        self.rows: dict[str, dict] = {}
        self.kill_at: tuple[int, int] | None = None  # (round, rows written before the kill)

    def run_round(self, rows: list[dict], r: int) -> int:
        todo = [x for x in rows if x["sample_id"] not in self.rows]
        for i, x in enumerate(todo):
            if self.kill_at == (r, i):
                self.kill_at = None
                raise Killed
            self.rows[x["sample_id"]] = x
        return len(todo)

    def accepted(self, r: int) -> tuple[np.ndarray, np.ndarray]:
        y = [x["label"] for x in self.rows.values() if x["round"] < r]
        return np.bincount(y, minlength=3), np.zeros(3, np.int64)

    def images(self, r: int) -> LabeledArrays:
        y = np.array([x["label"] for x in self.rows.values() if x["round"] < r], np.int64)
        return LabeledArrays(np.zeros((len(y), 1, 2, 2), np.float32), y)


def measure(shift: float = 0.0):
    """Accuracy rising with a class's images (a need that falls as it is filled); a learned
    trust that distrusts class c once it has more than 10 + 100·shift·c synthetic images."""

    def scores(syn: LabeledArrays) -> ClassScores:
        made = np.bincount(syn.y, minlength=3)
        n = made + np.array(REAL)
        acc = np.clip(0.3 + 0.0175 * n + shift * np.arange(3), 0, 1)
        trust = np.where(made > 10 + 100 * shift * np.arange(3), 0.25, 1.0)
        return ClassScores(acc, 1 - acc, np.full(3, 25), float(acc.mean()), trust)

    return scores


def plan_rows(counts, r, start):
    return plan_round(CFG, NAMES, IDS, counts, 7, r, start)


def run(table, log, policy="closed_loop", shift=0.0, rounds=3, budget=60):
    plan = plan_of(policy, LoopConfig(), budget, rounds, REAL, quotas(CFG, REAL))
    loop = Loop(measure(shift), log)
    return run_loop(plan, loop, table.accepted, table.images, plan_rows, table.run_round)


@pytest.fixture()
def whole(tmp_path):
    t = Table()
    return t, run(t, tmp_path / "whole.jsonl")


def test_each_round_is_recorded_and_spends_the_budget(whole, tmp_path):
    table, records = whole
    assert [r["round"] for r in records] == [0, 1, 2, 3] and records[-1]["final"]
    assert [sum(r["counts"]) for r in records[:3]] == [20, 20, 20]
    assert len(table.rows) == 60
    on_disk = read_records(tmp_path / "whole.jsonl")
    assert json.loads(json.dumps(records)) == on_disk
    # the loop saw its own images: class a (40 real) is needed least in every round
    assert all(r["counts"][0] < r["counts"][2] for r in records[:3])
    assert records[1]["classes"]["accepted"] == records[0]["counts"]
    # the learned trust is recorded each round (class c distrusted past 10 images)
    assert [r["classes"]["trust"] for r in records] == [
        [1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 0.25, 0.25], [1.0, 0.25, 0.25]]


def test_killed_mid_round_resumes_to_the_same_decisions_and_ids(whole, tmp_path):
    table, records = whole
    t = Table()
    t.kill_at = (1, 7)
    with pytest.raises(Killed):
        run(t, tmp_path / "killed.jsonl")
    assert len(read_records(tmp_path / "killed.jsonl")) == 2  # round 1 recorded before its images
    again = run(t, tmp_path / "killed.jsonl")
    assert again == records
    assert sorted(t.rows) == sorted(table.rows)


def test_resume_replays_recorded_decisions_even_when_a_remeasure_would_differ(whole, tmp_path):
    _, records = whole
    t = Table()
    t.kill_at = (1, 3)
    with pytest.raises(Killed):
        run(t, tmp_path / "log.jsonl")
    shifted = run(t, tmp_path / "log.jsonl", shift=0.3)  # a quick classifier that changed
    assert [r["counts"] for r in shifted[:2]] == [r["counts"] for r in records[:2]]
    assert [r["classes"]["trust"] for r in shifted[:2]] == [r["classes"]["trust"]
                                                            for r in records[:2]]
    assert shifted[2]["classes"]["trust"] == [1.0, 1.0, 1.0]  # measured afresh: trust too
    assert shifted[2]["counts"] != records[2]["counts"]  # measured afresh: the shift shows
    fresh = run(Table(), tmp_path / "fresh.jsonl", shift=0.3)
    assert fresh[1]["counts"] != records[1]["counts"]  # without the record, round 1 differs


def test_balance_in_one_round_plans_todays_top_up_rows(tmp_path):
    t = Table()
    run(t, tmp_path / "b.jsonl", policy="balance", rounds=1, budget=0)
    today = plan_round(CFG, NAMES, IDS, quotas(CFG, REAL), 7, 0)
    assert sorted(t.rows) == sorted(r["sample_id"] for r in today)
    assert SynthesisConfig().closed_loop is False  # the default stays today's quota rounds
    assert SynthesisConfig(allocation="balance").closed_loop is True
