"""The report as Markdown (``report.md``): the summary line and every table of
:mod:`raysynth.report.tables`, no images (``report.html`` has those).

Every string is escaped (:func:`raysynth.report.text.md_text`): a class name, preset or file name
holding Markdown, HTML, ``$`` or control characters shows as those characters and never as markup
or terminal control codes (``raysynth run`` prints this file).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import raysynth.report.tables as tables
from raysynth.report.explain import explain
from raysynth.report.groups import SHOWN, worst_group_table
from raysynth.report.tables import Table
from raysynth.report.text import md_code, md_text


def _md_table(t: Table) -> str:
    def cell(s: str, i: int) -> str:
        s = md_text(s)
        return f"**{s}**" if i == t.best else s

    lines = ["| " + " | ".join(map(md_text, t.header)) + " |", "|" + "---|" * len(t.header)]
    lines += ["| " + " | ".join(cell(c, i) for c in r) + " |" for i, r in enumerate(t.rows)]
    return "\n".join(lines)


def build_markdown(report: dict, skipped: Any = ()) -> str:
    notes = {**explain(report), **report}  # recorded sentences win; an older report gets new ones
    out = [
        f"# raysynth report: {md_text(report.get('preset', 'run'))}",
        "",
        md_text(tables.summary_line(report), line_start=True),
        "",
    ]
    if isinstance(h := notes.get("headline"), dict) and h.get("text"):
        out += [f"**{md_text(h['text'])}**", ""]
    out += ["See report.html for the images and charts.", ""]

    def section(title: str, parts: Iterable[Table | None], note: str = "") -> None:
        parts = [t for t in parts if t is not None]
        if parts:
            out.extend([f"## {title}", ""] + ([note, ""] if note else []))
            for t in parts:
                out.extend([_md_table(t), ""])

    section("Accuracy", [tables.accuracy_table(report)], "The best method is in bold.")
    section("Classifier accuracy per group", [tables.classifier_table(report)])
    section("Accuracy per class", [tables.per_class_table(report)],
            "Mean ± std over the final runs.")
    section("Worst-group accuracy", [worst_group_table(report)],
            f"Groups are class × context pairs of the test split; the {SHOWN} lowest shown.")
    weights = tables.weights_of(report)
    if weights:
        note = "0 = distrust the synthetic images of the class, 1 = trust them."
        if isinstance(why := notes.get("weights_note"), str):
            note += " " + md_text(why)
        section("Learned weight per class", [tables.weights_table(weights)], note)
    section("Trust per class (closed loop)", [tables.trust_table(report)], tables.TRUST_NOTE)
    section("AiR: pseudo-labels and prompt learning", tables.air_tables(report), tables.AIR_NOTE)
    section("Synthesis", tables.synthesis_tables(report))
    section("Weight search", [tables.tune_table(report)])
    scores = tables.trial_scores(report)
    if scores:
        out += ["Validation accuracy (%) of each trial, in completion order: "
                + ", ".join(scores) + ".", ""]
    section("Timings", [tables.timings_table(report)])
    section("Real images per class", [tables.counts_table(report)])
    items, more = tables.skipped_items(skipped)
    if items:
        out.extend(["## Skipped input images", ""] + [f"- {md_code(s)}" for s in items])
        out.extend([f"- … and {more} more" if more else "", ""])
    return "\n".join(out).rstrip() + "\n"
