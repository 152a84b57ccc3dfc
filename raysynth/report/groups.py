"""Worst-group and per-group accuracy (NICO++: groups are class × context pairs), the table the
classifier flow's report shows when the test split has groups: the worst group, the mean over
groups and the groups lowest under the last series (with synthetic images), each with the same
groups under every series."""

from __future__ import annotations

from typing import Any

from raysynth.report.tables import Table, classifier_series, group_mean
from raysynth.report.values import finite, pct

GROUP_KEY = "group:"  # as raysynth.train.classifier.GROUP_KEY (report sits above train)
SHOWN = 10  # per-group rows


def worst_group_table(report: dict) -> Table | None:
    """None when no classifier series has per-group accuracies."""
    series = classifier_series(report)
    if not any("worst_group" in s for s in series.values()):
        return None
    last = list(series.values())[-1]
    names = sorted((k for k in last if k.startswith(GROUP_KEY)),
                   key=lambda k: (finite(group_mean(last[k])) or 0.0, k))
    rows = [["worst group", *(_cell(s.get("worst_group")) for s in series.values())],
            ["mean over groups", *(_cell(s.get("mean_group")) for s in series.values())]]
    rows += [[k[len(GROUP_KEY):], *(_cell(s.get(k)) for s in series.values())]
             for k in names[:SHOWN]]
    return Table(["group (class in context)", *(f"{n} (%)" for n in series)], rows)


def _cell(v: Any) -> str:
    if isinstance(v, dict) and finite(v.get("std")) is not None:
        return f"{pct(v.get('mean'))} ± {pct(v.get('std'))}"
    return pct(group_mean(v))
