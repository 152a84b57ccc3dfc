"""The report as one self-contained HTML page (``report.html``, DESIGN §4).

The page carries every image inline (``data:image/png;base64``) and no external CSS, JS or fonts,
so it opens offline and can be mailed as one file; a Content-Security-Policy forbids fetching
anything. Every section is optional: a table or chart with nothing to show is left out.
"""

from __future__ import annotations

import base64
import html
from typing import Any

import raysynth.report.charts as charts
from raysynth.report.allocation import allocation_charts
from raysynth.report.collect import Gallery, Thumb, make_thumb
from raysynth.report.explain import explain
from raysynth.report.groups import worst_group_table
from raysynth.report.tables import (
    AIR_NOTE,
    GROUPS,
    TRUST_NOTE,
    Table,
    accuracy_table,
    air_tables,
    classifier_series,
    classifier_table,
    counts_table,
    group_mean,
    per_class_series,
    per_class_table,
    skipped_items,
    summary_line,
    synthesis_tables,
    timings_table,
    trust_table,
    tune_table,
    weights_of,
    weights_table,
)
from raysynth.report.values import as_dict, class_name, finite
from raysynth.text import printable

MAX_CHART_CLASSES = 20  # classes drawn in the per-class accuracy chart (the table has them all)
THUMB_DISPLAY_PX = 64  # shown size; small images are upscaled with `image-rendering: pixelated`

CSS = f"""
body {{ font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
  max-width: 1150px; margin: 1.5em auto; padding: 0 1em; color: #222; }}
h1 {{ margin-bottom: .2em; }} .summary {{ color: #555; margin-top: 0; }}
table {{ border-collapse: collapse; margin: .6em 0; font-size: 14px; }}
th, td {{ border: 1px solid #ccc; padding: 3px 9px; text-align: right; }}
th {{ background: #f2f2f2; }} td:first-child, th:first-child {{ text-align: left; }}
tr.best td {{ background: #fff3b0; font-weight: bold; }}
img.chart {{ max-width: 100%; height: auto; display: block; margin: .5em 0; }}
.cls {{ margin: .8em 0 1.2em; }} .cls h3 {{ margin: .2em 0; font-size: 15px; }}
.row {{ display: flex; flex-wrap: wrap; align-items: flex-start; gap: 4px; margin: 2px 0; }}
.lab {{ width: 5.5em; font-size: 12px; color: #555; padding-top: 4px; }}
figure.thumb {{ margin: 0; text-align: center; font-size: 10px; color: #333; }}
figure.thumb img {{ width: {THUMB_DISPLAY_PX}px; height: {THUMB_DISPLAY_PX}px; object-fit: contain;
  image-rendering: pixelated; border: 2px solid #999; display: block; background: #fff; }}
figure.accepted img {{ border-color: {charts.ACCEPTED_COLOUR}; }}
figure.rejected img {{ border-color: {charts.REJECTED_COLOUR}; }}
.none {{ font-size: 12px; color: #999; padding-top: 4px; }} .note {{ color: #555; font-size: 13px; }}
.headline {{ font-size: 16px; font-weight: bold; background: #f4f8ff; padding: .4em .6em; }}
"""

# Counts the images the browser decoded (the browser test reads `data-images-ok`).
SCRIPT = """window.addEventListener("load", function () {
  var ok = 0;
  document.querySelectorAll("img").forEach(function (im) {
    if (im.complete && im.naturalWidth > 0) { ok++; }
  });
  document.body.dataset.imagesOk = String(ok);
});"""

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


def _e(s: Any) -> str:
    """Any string as HTML text or attribute value: control characters made visible
    (:func:`raysynth.report.text.printable`), then ``<>&"'`` escaped."""
    return html.escape(printable(s), quote=True)


def _img(png: bytes, alt: str, cls: str = "chart") -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img class="{cls}" src="data:image/png;base64,{data}" alt="{_e(alt)}">'


def _html_table(t: Table | None) -> str:
    if t is None:
        return ""
    head = "".join(f"<th>{_e(h)}</th>" for h in t.header)
    body = "".join(
        ('<tr class="best">' if i == t.best else "<tr>")
        + "".join(f"<td>{_e(c)}</td>" for c in r)
        + "</tr>"
        for i, r in enumerate(t.rows)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _strip(label: str, thumbs: list[Thumb], kind: str) -> str:
    figs = "".join(
        f'<figure class="thumb {kind}">{_img(t.png, t.title, "thumb")}'
        + (f"<figcaption>{_e(t.caption)}</figcaption>" if t.caption else "")
        + "</figure>"
        for t in thumbs
    )
    figs = figs or '<span class="none">none</span>'
    return f'<div class="row"><span class="lab">{label}</span>{figs}</div>'


def _html_images(g: Gallery, total: int) -> list[str]:
    out = []
    shown = [n for n in g.real if g.real[n] or g.accepted[n] or g.rejected[n]]
    if shown:
        out.append("<h2>Images per class</h2>")
        if total > len(g.real):
            out.append(f'<p class="note">The first {len(g.real)} of {total} classes.</p>')
        out.append(
            '<p class="note">Real training images, then synthetic images the filter '
            "accepted and rejected, each captioned with its cosine score.</p>"
        )
        for n in shown:
            out.append(
                f'<section class="cls"><h3>class {_e(n)}</h3>'
                + _strip("real", g.real[n], "real")
                + _strip("accepted", g.accepted[n], "accepted")
                + _strip("rejected", g.rejected[n], "rejected")
                + "</section>"
            )
    scored = {n: s for n, s in g.scores.items() if s[0] or s[1]}
    if scored:
        out.append("<h2>Cosine scores per class</h2>")
        out.append(_img(charts.cosine_histograms(scored, g.thresholds), "cosine score histograms"))
    return out


def build_html(
    report: dict,
    skipped: Any = (),
    gallery: Gallery | None = None,
    total: int = 0,
    prototypes: dict[str, bytes] | None = None,
) -> str:
    g = gallery or Gallery()
    title = f"raysynth report: {report.get('preset', 'run')}"
    body = [f"<h1>{_e(title)}</h1>", f'<p class="summary">{_e(summary_line(report))}</p>']
    notes = {**explain(report), **report}  # recorded sentences win; an older report gets new ones
    if isinstance(h := notes.get("headline"), dict) and h.get("text"):
        body.append(f'<p class="headline">{_e(h["text"])}</p>')
    if (t := accuracy_table(report)) is not None:
        body += ["<h2>Accuracy</h2>", _html_table(t)]
    body += _classifier_section(report)
    body += _per_class_section(report)
    if (t := worst_group_table(report)) is not None:
        body += ["<h2>Worst-group accuracy</h2>", _html_table(t)]
    body += _weights_section(report, notes.get("weights_note"))
    if (t := trust_table(report)) is not None:
        body += ["<h2>Trust per class (closed loop)</h2>",
                 f'<p class="note">{_e(TRUST_NOTE)}</p>', _html_table(t)]
    body += _air_section(report, prototypes)
    if tables := synthesis_tables(report):
        body += ["<h2>Synthesis</h2>", *map(_html_table, tables)]
    for title, png in allocation_charts(report):  # the closed loop's rounds (issue #16)
        body += [f"<h3>{_e(title)}</h3>", _img(png, title)]
    body += _html_images(g, total)
    body += _tune_section(report)
    if (t := timings_table(report)) is not None:
        body += ["<h2>Timings</h2>", _html_table(t)]
    if (t := counts_table(report)) is not None:
        body += ["<h2>Real images per class</h2>", _html_table(t)]
    body += _skipped_section(skipped)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        f"<title>{_e(title)}</title><style>{CSS}</style></head>\n<body>\n"
        + "\n".join(body)
        + f"\n<script>{SCRIPT}</script>\n</body></html>\n"
    )


def _classifier_section(report: dict) -> list[str]:
    if (t := classifier_table(report)) is None:
        return []
    series = {
        name: {gr: group_mean(v) for gr, v in s.items()}
        for name, s in classifier_series(report).items()
    }
    groups = [gr for gr in GROUPS if any(gr in s for s in series.values())]
    return [
        "<h2>Classifier accuracy per group</h2>",
        _html_table(t),
        _img(charts.grouped_accuracy_chart(series, groups), "accuracy per group"),
    ]


def _per_class_section(report: dict) -> list[str]:
    if (t := per_class_table(report)) is None:
        return []
    out = ["<h2>Accuracy per class</h2>",
           '<p class="note">Mean ± std over the final runs.</p>', _html_table(t)]
    series = per_class_series(report)
    classes = [str(c) for c in report.get("classes", [])]
    n = max(len(v) for v in series.values())
    if n <= MAX_CHART_CLASSES:
        names = [class_name(classes, i) for i in range(n)]
        values = {k: {names[i]: group_mean(c) for i, c in enumerate(v)} for k, v in series.items()}
        out.append(_img(charts.grouped_accuracy_chart(values, names), "accuracy per class"))
    return out


def _weights_section(report: dict, why: Any = None) -> list[str]:
    if not (weights := weights_of(report)):
        return []
    note = [f'<p class="note why">{_e(why)}</p>'] if isinstance(why, str) else []
    return [
        "<h2>Learned weight per class</h2>",
        *note,
        _img(charts.weights_chart(weights), "weights"),
        f"<details open><summary>values</summary>{_html_table(weights_table(weights))}</details>",
    ]


def _air_section(report: dict, prototypes: dict[str, bytes] | None) -> list[str]:
    if not (tables := air_tables(report)):
        return []
    out = ["<h2>AiR: pseudo-labels and prompt learning</h2>",
           f'<p class="note">{_e(AIR_NOTE)}</p>', *map(_html_table, tables)]
    protos = [make_thumb(png, name, name) for name, png in (prototypes or {}).items()]
    if protos := [t for t in protos if t is not None]:
        out += [
            "<h3>Prototype per class (the most representative generated image)</h3>",
            _strip("prototypes", protos, "accepted"),
        ]
    return out


def _tune_section(report: dict) -> list[str]:
    if not (tune := as_dict(report.get("tune"))):
        return []
    out = ["<h2>Weight search</h2>", _html_table(tune_table(report))]
    curve = [v for v in tune.get("best_so_far") or [] if finite(v) is not None]
    scores = tune.get("trial_scores")
    scores = [v for v in scores if finite(v) is not None] if isinstance(scores, list) else []
    if curve:
        out.append(_img(charts.best_so_far_chart(curve, scores),
                        "each trial's validation accuracy and the best so far"))
    return out


def _skipped_section(skipped: Any) -> list[str]:
    items, more = skipped_items(skipped)
    if not items:
        return []
    lis = "".join(f"<li><code>{_e(s)}</code></li>" for s in items)
    lis += f"<li>… and {more} more</li>" if more else ""
    return ["<h2>Skipped input images</h2>", f"<ul>{lis}</ul>"]
