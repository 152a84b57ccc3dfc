"""The study's table/aggregate and the report's closed-loop charts, from hand-made results."""

from __future__ import annotations

import pytest

from raysynth.errors import ConfigError
from raysynth.filter.loop import Plan, summary
from raysynth.flows.allocation_study import aggregate, result_of, study_configs, table_markdown
from raysynth.plan.allocation import PolicyOptions
from raysynth.report.allocation import allocation_charts
from raysynth.report.html import build_html


def _record(r, counts, gen, acc, overall, final=False):
    rec = {"round": r, "counts": counts, "spent_before": sum(gen), "overall": overall,
           "stopped": [], "classes": {"generated": gen, "accepted": acc, "trust": [1.0, 0.5]}}
    return {**rec, "final": True} if final else rec


def test_summary_and_charts_of_a_loop():
    plan = Plan("closed_loop", PolicyOptions(), 10, 2, (5, 2), (0, 3))
    records = [_record(0, [2, 3], [0, 0], [0, 0], 0.5), _record(1, [1, 4], [2, 3], [1, 3], 0.6),
               _record(2, [], [3, 7], [2, 5], 0.7, final=True)]
    s = summary(records, plan)
    assert s["counts"] == [[2, 3], [1, 4]]
    assert s["acceptance"] == [[0.5, 1.0], [1.0, 0.5]]
    assert [p["generated"] for p in s["curve"]] == [0, 5, 10]
    report = {"classes": ["a", "b"], "synthesis": {"allocation": s}}
    titles = [t for t, png in allocation_charts(report) if png[:4] == b"\x89PNG"]
    assert titles == ["Images allocated per round", "Validation accuracy versus images generated",
                      "Acceptance and trust per class over rounds"]
    assert "Acceptance and trust per class" in build_html(report)
    assert allocation_charts({"synthesis": {"planned": 3}}) == []  # today's runs: no charts


def test_study_table_and_schema():
    def run(overall, few, gen):
        report = {"classifier": {"with_synthetic": {"overall": {"mean": overall},
                                                    "few": {"mean": few}},
                                 "real_only": {"overall": {"mean": 0.95}, "few": {"mean": 0.875}}},
                  "synthesis": {"generated": gen, "accepted": gen}}
        return result_of(report)

    assert run(0.9, 0.8, 200)["baseline"] == {"overall": 95.0, "few": 87.5, "generated": 0,
                                              "accepted": 0}

    agg = aggregate({"balance": [run(0.9, 0.8, 200), run(0.8, 0.6, 200)],
                     "closed_loop": [run(0.9, 0.9, 150), run(0.9, 0.9, 170)]})
    assert agg["balance"]["overall"] == {"mean": pytest.approx(85.0), "std": pytest.approx(5.0)}
    assert agg["balance"]["few"]["mean"] == pytest.approx(70.0)
    assert agg["closed_loop"]["generated"] == 160 and agg["closed_loop"]["accepted"] == 160
    md = table_markdown(agg, "digits-lt")
    assert "| closed_loop | 90.00 ± 0.00 | 90.00 ± 0.00 | 160 | 160 |" in md
    unicon = {"accuracy": {"unicon": {"mean": 0.5}, "supcon_real": {"mean": 0.25}},
              "synthesis": {"generated": 4}}
    assert "few" not in aggregate({"fixed": [result_of(unicon)]})["fixed"]  # balanced: no few
    assert result_of(unicon)["baseline"]["overall"] == 25.0  # SupCon-Real, the same protocol


def test_study_arguments_are_checked():
    with pytest.raises(ConfigError, match="unknown greedy"):
        study_configs("digits-lt", ["greedy"], 1, {})
    with pytest.raises(ConfigError, match="use --policies"):
        study_configs("digits-lt", ["error"], 1, {"synthesis.allocation": "fixed"})
    cfgs = study_configs("digits-lt", ["error", "balance"], 2, {"seed": 5})
    assert {(s, c.seed, c.synthesis.allocation, c.synthesis.rounds)
            for (s, _), c in cfgs.items()} == {(0, 5, "error", 4), (0, 5, "balance", 4),
                                               (1, 6, "error", 4), (1, 6, "balance", 4)}
