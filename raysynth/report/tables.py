"""The tables of the report, shared by its Markdown and its HTML: each reads one section of
``report.json`` into a :class:`Table` of formatted cells (or None / ``[]`` when the section is
missing), plus the summary line and the list of skipped inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import raysynth.report.air as air_report
from raysynth.report.values import DASH, as_dict, class_name, dur, finite, num, pct

MAX_SKIPPED = 200
METHODS = {"supcon_real": "SupCon-Real", "supcon_mixed": "SupCon-Mixed", "unicon": "UniCon"}
GROUPS = ("overall", "many", "medium", "few")


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    best: int | None = None  # row to highlight


def accuracy_table(report: dict) -> Table | None:
    acc = as_dict(report.get("accuracy"))
    keys = [m for m in METHODS if m in acc] + [m for m in acc if m not in METHODS]
    if not keys:
        return None
    split = str(report.get("split", "test"))
    rows, means = [], []
    for m in keys:
        a = as_dict(acc[m])
        rows.append(
            [
                METHODS.get(m, m),
                f"{pct(a.get('mean'))} ± {pct(a.get('std'))}",
                num(a.get("runs")),
            ]
        )
        means.append(finite(a.get("mean")))
    best = max(
        (i for i, v in enumerate(means) if v is not None), key=lambda i: means[i], default=None
    )
    return Table(["method", f"{split} accuracy (%), mean ± std", "runs"], rows, best)


def classifier_table(report: dict) -> Table | None:
    series = classifier_series(report)
    if not series:
        return None
    groups = [gr for gr in GROUPS if any(gr in s for s in series.values())]
    header = ["group", *(f"{name} (%)" for name in series)]
    pair = list(series.values()) if len(series) == 2 else None
    if pair:
        header.append("change (points)")
    rows = []
    for gr in groups:
        row = [gr, *(_mean_std(s.get(gr)) for s in series.values())]
        if pair:
            a, b = finite(group_mean(pair[0].get(gr))), finite(group_mean(pair[1].get(gr)))
            row.append(DASH if a is None or b is None else f"{100 * (b - a):+.2f}")
        rows.append(row)
    return Table(header, rows)


def per_class_series(report: dict) -> dict[str, list]:
    """``{method or series: [per-class {mean, std} in class order]}`` of the final runs."""
    acc = as_dict(report.get("accuracy"))
    keys = [m for m in METHODS if m in acc] + [m for m in acc if m not in METHODS]
    out = {METHODS.get(m, m): as_dict(acc[m]).get("per_class") for m in keys}
    out.update({k: as_dict(v).get("per_class") for k, v in classifier_series(report).items()})
    return {k: v for k, v in out.items() if isinstance(v, list) and v}


def per_class_table(report: dict) -> Table | None:
    """Test accuracy (%) per class for each method, mean ± std over the final runs."""
    series = per_class_series(report)
    if not series:
        return None
    classes = [str(c) for c in report.get("classes", [])]
    n = max(len(v) for v in series.values())
    rows = [[class_name(classes, i), *(_mean_std(v[i]) if i < len(v) else DASH
                                       for v in series.values())] for i in range(n)]
    split = str(report.get("split", "test"))
    return Table(["class", *(f"{name}, {split} accuracy (%)" for name in series)], rows)


def classifier_series(report: dict) -> dict[str, dict]:
    clf = as_dict(report.get("classifier"))
    return {k.replace("_", " "): v for k, v in clf.items() if isinstance(v, dict)}


def group_mean(v: Any) -> Any:
    """A group's accuracy: ``{"mean", "std", "runs"}`` (what the classifier flow writes) or a
    plain number."""
    return v.get("mean") if isinstance(v, dict) else v


def _mean_std(v: Any) -> str:
    if isinstance(v, dict) and finite(v.get("std")) is not None:
        return f"{pct(v.get('mean'))} ± {pct(v.get('std'))}"
    return pct(group_mean(v))


def weights_of(report: dict) -> dict[str, float]:
    w = report.get("weights")
    if isinstance(w, list):
        w = dict(zip((str(c) for c in report.get("classes", [])), w))
    return {str(k): v for k, v in as_dict(w).items()}


def weights_table(weights: dict[str, float]) -> Table:
    return Table(["class", "weight"], [[c, num(w)] for c, w in weights.items()])


AIR_NOTE = ("Pseudo-label accuracy is measured on the unlabeled images (their labels are never "
            "trained on); test accuracy on the test split.")
TRUST_NOTE = ("Learned by the closed loop on the validation split (0 = distrust the class's "
              "synthetic images, 1 = trust them); the classifier with synthetic images trained "
              "on that share of each class's accepted images.")


def trust_table(report: dict) -> Table | None:
    """The classifier flow's per-class trust (``report["trust"]``): trust, accepted, kept."""
    t = as_dict(report.get("trust"))
    trust, accepted, kept = (t.get(k) for k in ("trust", "accepted", "kept"))
    if not isinstance(trust, list) or not isinstance(accepted, list) or not isinstance(kept, list):
        return None
    classes = [str(c) for c in report.get("classes", [])]
    rows = [[class_name(classes, i), num(w), num(a), num(k)]
            for i, (w, a, k) in enumerate(zip(trust, accepted, kept))]
    rows.append(["synthetic batch share", DASH, DASH, num(t.get("synthetic_share"))])
    return Table(["class", "trust", "accepted", "trained on"], rows)


def synthesis_tables(report: dict) -> list[Table]:
    syn = as_dict(report.get("synthesis"))
    if not syn:
        return []
    keys = ["planned", "generated", "accepted", "rejected", "rounds", "flagged"]
    out = [Table(keys, [[num(syn.get(k)) for k in keys]])]
    per = as_dict(syn.get("per_class"))
    if per:
        order = [str(c) for c in report.get("classes", []) if str(c) in per]
        order += [c for c in per if c not in order]
        cols = ["accepted", "rejected", "threshold", "unfilled"]
        rows = [[c, *(num(as_dict(per[c]).get(k)) for k in cols)] for c in order]
        out.append(Table(["class", *cols], rows))
    return out


def tune_table(report: dict) -> Table | None:
    t = as_dict(report.get("tune"))
    if not t:
        return None
    row = [
        num(t.get("trials")),
        num(t.get("concurrency")),
        pct(t.get("best_val_acc")),
        dur(t.get("wall_s")),
    ]
    return Table(["trials", "concurrent", "best val accuracy (%)", "wall time"], [row])


def trial_scores(report: dict) -> list[str]:
    """Each trial's validation accuracy (%), formatted, in completion order."""
    scores = as_dict(report.get("tune")).get("trial_scores")
    return [pct(v) for v in scores] if isinstance(scores, list) else []


def air_tables(report: dict) -> list[Table]:
    """AiR (``flow: air``): accuracy per classifier, settings, prompt-learning iterations."""
    a = as_dict(report.get("air"))
    if not a:
        return []
    out = [
        Table(*air_report.air_accuracy_rows(a, pct, DASH)),
        Table(*air_report.air_settings_rows(a, num)),
    ]
    header, rows = air_report.air_history_rows(a, pct, num)
    if rows:
        out.append(Table(header, rows))
    return out


def timings_table(report: dict) -> Table | None:
    t = as_dict(report.get("timings"))
    rows = [[str(k), dur(v)] for k, v in as_dict(t.get("stages")).items()]
    if "total_s" in t:
        rows.append(["total", dur(t["total_s"])])
    return Table(["stage", "time"], rows) if rows else None


def counts_table(report: dict) -> Table | None:
    counts = {
        k: v
        for k, v in as_dict(as_dict(report.get("data")).get("counts")).items()
        if isinstance(v, list)
    }
    if not counts:
        return None
    classes = [str(c) for c in report.get("classes", [])]
    n = max(len(v) for v in counts.values())
    rows = [
        [class_name(classes, i), *(num(v[i]) if i < len(v) else DASH for v in counts.values())]
        for i in range(n)
    ]
    return Table(["class", *counts], rows)


def summary_line(report: dict) -> str:
    classes = [str(c) for c in report.get("classes", [])]
    parts = [f"preset {report.get('preset', '?')}", f"flow {report.get('flow', '?')}"]
    if classes:
        listed = ", ".join(classes[:12]) + (", …" if len(classes) > 12 else "")
        parts.append(f"{len(classes)} classes ({listed})")
    study = as_dict(report.get("study"))
    if study:
        parts.append("study " + ", ".join(f"{k} {v}" for k, v in study.items()))
    total = as_dict(report.get("timings")).get("total_s")
    if total is not None:
        parts.append(f"total time {dur(total)}")
    return " · ".join(parts)


def skipped_items(skipped: Any) -> tuple[list[str], int]:
    items = [
        f"{s[0]}: {s[1]}" if isinstance(s, list | tuple) and len(s) == 2 else str(s)
        for s in (skipped if isinstance(skipped, list) else [])
    ]
    return items[:MAX_SKIPPED], max(0, len(items) - MAX_SKIPPED)
