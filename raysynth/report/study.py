"""``report.md`` of the controlled study (``raysynth study controlled``): the headline, test
accuracy per method overall and per class, the learned weights (and why, when all are 0) and the
weight search, from the study's ``report.json``."""

from __future__ import annotations

from raysynth.report.text import md_text

METHODS = ("supcon_real", "supcon_mixed", "unicon")
NAMES = {"supcon_real": "SupCon-Real", "supcon_mixed": "SupCon-Mixed", "unicon": "UniCon"}


def summary_markdown(report: dict) -> str:
    acc = report["accuracy"]
    study = report["study"]
    data = md_text(study.get("data", "digits"))
    classes = [md_text(c) for c in report["classes"]]
    lines = [
        f"# Controlled study: {md_text(study['kind'])} on {data} {' vs '.join(classes)}",
        "",
        f"k = {study['k']} real and {study['synthetic_per_class']} synthetic images per class "
        f"(drawn afresh for each encoder run from {study['synthetic_pool_per_class']}); "
        f"accuracy on the test split, mean ± std over {acc['unicon']['runs']} runs "
        "(encoder runs × classifier runs).",
        "",
    ]
    if "headline" in report:
        lines += [f"**{report['headline']['text']}**", ""]
    lines += ["| class | " + " | ".join(NAMES[m] for m in METHODS) + " |",
              "|---" * (len(METHODS) + 1) + "|"]

    def cell(a: dict) -> str:
        return f"{100 * a['mean']:.2f} ± {100 * a['std']:.2f}"

    lines.append("| **all** | " + " | ".join(f"**{cell(acc[m])}**" for m in METHODS) + " |")
    for i, c in enumerate(classes):
        if all(len(acc[m].get("per_class", ())) > i for m in METHODS):
            lines.append(f"| {c} | " + " | ".join(cell(acc[m]["per_class"][i]) for m in METHODS)
                         + " |")
    lines += ["", "Learned weight per class (0 = distrust the synthetic images, 1 = trust them):", ""]
    lines += [f"- class {md_text(c)}: {w:.3f}" for c, w in report["weights"].items()]
    if "weights_note" in report:
        lines += ["", report["weights_note"]]
    t = report["tune"]
    lines += [
        "",
        f"Weight search: {t['trials']} trials, {t['concurrency']} at a time, best validation "
        f"accuracy {100 * t['best_val_acc']:.2f}, {t['wall_s']:.0f} s; each trial's validation "
        "accuracy (%): " + ", ".join(f"{100 * v:.2f}" for v in t.get("trial_scores", [])) + ".",
        "",
    ]
    return "\n".join(lines)
