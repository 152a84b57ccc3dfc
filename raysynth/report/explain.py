"""The sentences that make the report explain itself, each from the values of ``report.json``:

- :func:`headline` — what synthetic images bought: the best method that uses them against the
  real-only baseline (SupCon-Real in the UniCon flow and study, the real-only classifier in the
  classifier flow), with the standard error of the difference over the final runs;
- :func:`weights_note` — why every learned weight is 0, when it is.

:func:`explain` gathers them; the flows record it in ``report.json`` and the Markdown and HTML
show it (recomputed from the accuracies when an older ``report.json`` lacks it).
"""

from __future__ import annotations

import math
from typing import Any

from raysynth.report.values import as_dict, finite

NAMES = {"supcon_real": "SupCon-Real", "supcon_mixed": "SupCon-Mixed", "unicon": "UniCon",
         "real_only": "real only", "with_synthetic": "with synthetic images"}


def explain(report: dict) -> dict[str, Any]:
    """``{"headline": ..., "weights_note": ...}``, each only when the report has what it needs."""
    out: dict[str, Any] = {}
    if (h := headline(report)) is not None:
        out["headline"] = h
    if (w := weights_note(report)) is not None:
        out["weights_note"] = w
    return out


def _candidates(report: dict) -> tuple[str, dict, dict[str, dict]] | None:
    """(baseline name, its summary, the other methods' summaries), or None."""
    acc = as_dict(report.get("accuracy"))
    if "supcon_real" in acc:
        return "supcon_real", as_dict(acc["supcon_real"]), {
            k: as_dict(v) for k, v in acc.items() if k != "supcon_real"}
    clf = as_dict(report.get("classifier"))
    if "real_only" in clf:
        def overall(v: Any) -> dict:
            return as_dict(as_dict(v).get("overall"))

        return "real_only", overall(clf["real_only"]), {
            k: overall(v) for k, v in clf.items() if k != "real_only"}
    return None


def _sample_var(summary: dict) -> tuple[float, int] | None:
    """The runs' sample variance (from the recorded population std) and their count."""
    std, n = finite(summary.get("std")), summary.get("runs")
    if std is None or not isinstance(n, int) or n < 2:
        return None
    return std * std * n / (n - 1), n


def headline(report: dict) -> dict[str, Any] | None:
    """The best method using synthetic images against the real-only baseline, on the split the
    report evaluates: ``{"text", "method", "baseline", "gain_points", "se_points", "runs"}``;
    ``se_points`` is ``√(s²_a/n_a + s²_b/n_b)`` over the final runs (None with fewer than 2)."""
    found = _candidates(report)
    if found is None:
        return None
    base_name, base, others = found
    means = {k: finite(v.get("mean")) for k, v in others.items()}
    means = {k: m for k, m in means.items() if m is not None}
    b = finite(base.get("mean"))
    if not means or b is None:
        return None
    best = max(means, key=lambda k: means[k])
    gain = 100 * (means[best] - b)
    va, vb = _sample_var(others[best]), _sample_var(base)
    se = None if va is None or vb is None else 100 * math.sqrt(va[0] / va[1] + vb[0] / vb[1])
    split = str(report.get("split", "test"))
    kind = "a gain" if gain > 0 else "a loss" if gain < 0 else "no change"
    text = (f"{_cap(NAMES.get(best, best))}: {100 * means[best]:.2f}% against "
            f"{NAMES.get(base_name, base_name)} {100 * b:.2f}% on the {split} split, "
            f"{kind} of {gain:+.2f} points")
    if se is not None:
        text += f" ± {se:.2f} (standard error over {va[1]} and {vb[1]} runs)"
        if abs(gain) < 2 * se:
            text += "; within the runs' noise (less than 2 standard errors)"
    return {"text": text + ".", "method": best, "baseline": base_name, "gain_points": gain,
            "se_points": se, "runs": [others[best].get("runs"), base.get("runs")]}


def weights_note(report: dict) -> str | None:
    """Why the learned weights are what they are, when every one of them is 0 (else None)."""
    w = report.get("weights")
    values = list(w.values()) if isinstance(w, dict) else w if isinstance(w, list) else []
    nums = [finite(v) for v in values]
    if not nums or any(v is None or v != 0 for v in nums):
        return None
    tune = as_dict(report.get("tune"))
    trials = tune.get("trials")
    if not trials:
        return ("Every weight is 0 because tune.weights set them so (no search ran): UniCon "
                "uses the synthetic images only as negatives for the other classes.")
    best = finite(tune.get("best_val_acc"))
    at = "" if best is None else f" (best validation accuracy {100 * best:.2f}%)"
    return (f"Every weight is 0: of the search's {trials} trials, the best{at} trusted no "
            "class's synthetic images; no trial with a weight above 0 scored higher on the "
            "validation split (ties go to the lower validation loss). UniCon then uses the "
            "synthetic images only as negatives for the other classes, never as positives of "
            "their own.")


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]
