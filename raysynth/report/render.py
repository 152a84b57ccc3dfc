"""``report.json`` → ``report.md`` and a self-contained ``report.html`` (DESIGN §4).

The HTML carries every image inline (``data:image/png;base64``) and no external CSS, JS or fonts,
so it opens offline and can be mailed as one file. Every section is optional: a key missing from
``report.json`` (or a run directory without ``real/`` or ``synthetic/``) leaves its section out.
Thumbnails are streamed: real and synthetic tables are read only until each class has enough.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from PIL import Image

from raysynth import columns as col
from raysynth.data.store import read_classes, real_path
from raysynth.errors import RunDirError
from raysynth.generate.table import iter_tables
from raysynth.report import air as air_report
from raysynth.report import charts

log = logging.getLogger("raysynth.report")

THUMBS_PER_KIND = 8  # real, accepted and rejected thumbnails per class
THUMB_DISPLAY_PX = 64  # shown size; small images are upscaled with `image-rendering: pixelated`
MAX_EMBED_PX = 128  # larger images are downscaled before embedding, to keep the file small
MAX_CLASSES = 50  # classes with image strips and histogram panels
MAX_SKIPPED = 200
METHODS = {"supcon_real": "SupCon-Real", "supcon_mixed": "SupCon-Mixed", "unicon": "UniCon"}
GROUPS = ("overall", "many", "medium", "few")
DASH = "—"


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    best: int | None = None  # row to highlight


@dataclass
class Thumb:
    png: bytes
    title: str
    caption: str = ""


@dataclass
class Gallery:
    """Thumbnails and cosine scores per shown class name."""

    real: dict[str, list[Thumb]] = field(default_factory=dict)
    accepted: dict[str, list[Thumb]] = field(default_factory=dict)
    rejected: dict[str, list[Thumb]] = field(default_factory=dict)
    scores: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)


def render_report(
    run_dir: str | Path, *, per_class: int = THUMBS_PER_KIND, max_classes: int = MAX_CLASSES
) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` next to ``run_dir/report.json``; returns both paths."""
    root = Path(run_dir)
    src = root / "report.json"
    if not src.is_file():
        raise RunDirError(f"{src} is missing; finish a run in {root} (raysynth run --resume) first")
    report = json.loads(src.read_text())
    meta = _classes_meta(root)
    names = [str(c) for c in meta.get("class_names") or report.get("classes") or []]
    shown = names[:max_classes]
    if len(names) > len(shown):
        log.info(
            "image strips and histograms for the first %d of %d classes", len(shown), len(names)
        )
    gallery = collect_gallery(root, names, shown, per_class)
    for name, t in _dict(_dict(report.get("synthesis")).get("per_class")).items():
        if _finite(_dict(t).get("threshold")) is not None and name in gallery.scores:
            gallery.thresholds[name] = float(t["threshold"])
    skipped = _dict(report.get("data")).get("skipped", meta.get("skipped", []))
    md_path, html_path = root / "report.md", root / "report.html"
    _write_atomic(md_path, build_markdown(report, skipped))
    prototypes: dict[str, bytes] = {}
    if _dict(report.get("air")).get("prototypes"):
        try:
            prototypes = air_report.prototype_images(root, _dict(report.get("air")))
        except Exception as e:  # a report shows what it can
            log.warning("report: left out the prototypes (%s: %s)", type(e).__name__, e)
    _write_atomic(html_path, build_html(report, skipped, gallery, len(names), prototypes))
    log.info("wrote %s and %s", md_path, html_path)
    return md_path, html_path


# Reading the run directory -------------------------------------------------------------------


def _classes_meta(root: Path) -> dict[str, Any]:
    try:
        return read_classes(root)
    except (RunDirError, OSError, ValueError):
        return {}


def collect_gallery(root: Path, names: list[str], shown: list[str], per_class: int) -> Gallery:
    """Up to ``per_class`` real/accepted/rejected thumbnails and all cosine scores per class."""
    g = Gallery(
        real={n: [] for n in shown},
        accepted={n: [] for n in shown},
        rejected={n: [] for n in shown},
        scores={n: ([], []) for n in shown},
    )
    steps: list[tuple[str, Callable[[], None]]] = [
        ("real thumbnails", lambda: _real_thumbs(root, names, g.real, per_class)),
        ("cosine scores", lambda: _scores(root / "synthetic", names, g)),
        (
            "synthetic thumbnails",
            lambda: _synthetic_thumbs(root / "synthetic", names, g, per_class),
        ),
    ]
    for what, step in steps:
        try:
            step()
        except Exception as e:  # a report shows what it can; the run's data is not its concern
            log.warning("report: left out the %s (%s: %s)", what, type(e).__name__, e)
    return g


def _name(names: list[str], label: Any) -> str:
    return names[label] if isinstance(label, int) and 0 <= label < len(names) else str(label)


def _real_thumbs(root: Path, names: list[str], out: dict[str, list[Thumb]], k: int) -> None:
    path = real_path(root, "train")
    if not path.is_file():
        return
    for batch in pq.ParquetFile(path).iter_batches(
        1024, columns=[col.SAMPLE_ID, col.LABEL, col.IMAGE]
    ):
        ids, labels = batch.column(0).to_pylist(), batch.column(1).to_pylist()
        for i, label in enumerate(labels):
            bucket = out.get(_name(names, label))
            if bucket is not None and len(bucket) < k:
                thumb = _thumb(batch.column(2)[i].as_py(), ids[i])
                if thumb:
                    bucket.append(thumb)
        if all(len(b) >= k for b in out.values()):
            return


def _scores(root: Path, names: list[str], g: Gallery) -> None:
    """Every filtered row's cosine score (narrow columns only, no images)."""
    cols = [col.LABEL, col.REAL_COS, col.ACCEPTED, "threshold"]
    for t in iter_tables(root, cols):
        for label, cos, accepted, threshold in zip(*(t.column(c).to_pylist() for c in cols)):
            pair = g.scores.get(_name(names, label))
            if pair is None or accepted is None or _finite(cos) is None:
                continue
            pair[0 if accepted else 1].append(float(cos))
            if _finite(threshold) is not None:  # later rounds come later: the last one wins
                g.thresholds[_name(names, label)] = float(threshold)


def _synthetic_thumbs(root: Path, names: list[str], g: Gallery, k: int) -> None:
    cols = [col.SAMPLE_ID, col.LABEL, col.REAL_COS, col.ACCEPTED]
    for t in iter_tables(root, [*cols, col.IMAGE]):
        for i, (sid, label, cos, accepted) in enumerate(
            zip(*(t.column(c).to_pylist() for c in cols))
        ):
            if accepted is None:
                continue
            bucket = (g.accepted if accepted else g.rejected).get(_name(names, label))
            if bucket is not None and len(bucket) < k:
                thumb = _thumb(t.column(col.IMAGE)[i].as_py(), sid, f"cos {_num(cos)}")
                if thumb:
                    bucket.append(thumb)
        if all(len(b) >= k for b in (*g.accepted.values(), *g.rejected.values())):
            return


def _thumb(data: bytes | None, title: str, caption: str = "") -> Thumb | None:
    """PNG bytes fit for embedding: small PNGs as they are, anything else re-encoded smaller."""
    if not data:
        return None  # flagged by the safety checker: no image was kept
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if im.format == "PNG" and max(im.size) <= MAX_EMBED_PX:
                return Thumb(data, title, caption)
            small = im.convert("RGBA" if "A" in im.getbands() else "RGB")
            small.thumbnail((MAX_EMBED_PX, MAX_EMBED_PX))
            buf = io.BytesIO()
            small.save(buf, format="PNG")
            return Thumb(buf.getvalue(), title, caption)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        log.warning("report: image %s is unreadable (%s); left out", title, e)
        return None


# Tables shared by the Markdown and the HTML --------------------------------------------------


def accuracy_table(report: dict) -> Table | None:
    acc = _dict(report.get("accuracy"))
    keys = [m for m in METHODS if m in acc] + [m for m in acc if m not in METHODS]
    if not keys:
        return None
    split = str(report.get("split", "test"))
    rows, means = [], []
    for m in keys:
        a = _dict(acc[m])
        rows.append(
            [
                METHODS.get(m, m),
                f"{_pct(a.get('mean'))} ± {_pct(a.get('std'))}",
                _num(a.get("runs")),
            ]
        )
        means.append(_finite(a.get("mean")))
    best = max(
        (i for i, v in enumerate(means) if v is not None), key=lambda i: means[i], default=None
    )
    return Table(["method", f"{split} accuracy (%), mean ± std", "runs"], rows, best)


def classifier_table(report: dict) -> Table | None:
    series = _classifier_series(report)
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
            a, b = _finite(_mean(pair[0].get(gr))), _finite(_mean(pair[1].get(gr)))
            row.append(DASH if a is None or b is None else f"{100 * (b - a):+.2f}")
        rows.append(row)
    return Table(header, rows)


def _classifier_series(report: dict) -> dict[str, dict]:
    clf = _dict(report.get("classifier"))
    return {k.replace("_", " "): v for k, v in clf.items() if isinstance(v, dict)}


def _mean(v: Any) -> Any:
    """A group's accuracy: ``{"mean", "std", "runs"}`` (what the classifier flow writes) or a
    plain number."""
    return v.get("mean") if isinstance(v, dict) else v


def _mean_std(v: Any) -> str:
    if isinstance(v, dict) and _finite(v.get("std")) is not None:
        return f"{_pct(v.get('mean'))} ± {_pct(v.get('std'))}"
    return _pct(_mean(v))


def weights_of(report: dict) -> dict[str, float]:
    w = report.get("weights")
    if isinstance(w, list):
        w = dict(zip((str(c) for c in report.get("classes", [])), w))
    return {str(k): v for k, v in _dict(w).items()}


def weights_table(weights: dict[str, float]) -> Table:
    return Table(["class", "weight"], [[c, _num(w)] for c, w in weights.items()])


def synthesis_tables(report: dict) -> list[Table]:
    syn = _dict(report.get("synthesis"))
    if not syn:
        return []
    keys = ["planned", "generated", "accepted", "rejected", "rounds", "flagged"]
    out = [Table(keys, [[_num(syn.get(k)) for k in keys]])]
    per = _dict(syn.get("per_class"))
    if per:
        order = [str(c) for c in report.get("classes", []) if str(c) in per]
        order += [c for c in per if c not in order]
        cols = ["accepted", "rejected", "threshold", "unfilled"]
        rows = [[c, *(_num(_dict(per[c]).get(k)) for k in cols)] for c in order]
        out.append(Table(["class", *cols], rows))
    return out


def tune_table(report: dict) -> Table | None:
    t = _dict(report.get("tune"))
    if not t:
        return None
    row = [
        _num(t.get("trials")),
        _num(t.get("concurrency")),
        _pct(t.get("best_val_acc")),
        _dur(t.get("wall_s")),
    ]
    return Table(["trials", "concurrent", "best val accuracy (%)", "wall time"], [row])


def air_tables(report: dict) -> list[Table]:
    """AiR (``flow: air``): accuracy per classifier, settings, prompt-learning iterations."""
    a = _dict(report.get("air"))
    if not a:
        return []
    out = [Table(*air_report.air_accuracy_rows(a, _pct, DASH)),
           Table(*air_report.air_settings_rows(a, _num))]
    header, rows = air_report.air_history_rows(a, _pct, _num)
    if rows:
        out.append(Table(header, rows))
    return out


def timings_table(report: dict) -> Table | None:
    t = _dict(report.get("timings"))
    rows = [[str(k), _dur(v)] for k, v in _dict(t.get("stages")).items()]
    if "total_s" in t:
        rows.append(["total", _dur(t["total_s"])])
    return Table(["stage", "time"], rows) if rows else None


def counts_table(report: dict) -> Table | None:
    counts = {
        k: v
        for k, v in _dict(_dict(report.get("data")).get("counts")).items()
        if isinstance(v, list)
    }
    if not counts:
        return None
    classes = [str(c) for c in report.get("classes", [])]
    n = max(len(v) for v in counts.values())
    rows = [
        [_name(classes, i), *(_num(v[i]) if i < len(v) else DASH for v in counts.values())]
        for i in range(n)
    ]
    return Table(["class", *counts], rows)


def summary_line(report: dict) -> str:
    classes = [str(c) for c in report.get("classes", [])]
    parts = [f"preset {report.get('preset', '?')}", f"flow {report.get('flow', '?')}"]
    if classes:
        listed = ", ".join(classes[:12]) + (", …" if len(classes) > 12 else "")
        parts.append(f"{len(classes)} classes ({listed})")
    study = _dict(report.get("study"))
    if study:
        parts.append("study " + ", ".join(f"{k} {v}" for k, v in study.items()))
    total = _dict(report.get("timings")).get("total_s")
    if total is not None:
        parts.append(f"total time {_dur(total)}")
    return " · ".join(parts)


def _skipped_items(skipped: Any) -> tuple[list[str], int]:
    items = [
        f"{s[0]}: {s[1]}" if isinstance(s, list | tuple) and len(s) == 2 else str(s)
        for s in (skipped if isinstance(skipped, list) else [])
    ]
    return items[:MAX_SKIPPED], max(0, len(items) - MAX_SKIPPED)


# Markdown ------------------------------------------------------------------------------------


def _md_table(t: Table) -> str:
    def cell(s: str, i: int) -> str:
        s = s.replace("|", "\\|")
        return f"**{s}**" if i == t.best else s

    lines = ["| " + " | ".join(t.header) + " |", "|" + "---|" * len(t.header)]
    lines += ["| " + " | ".join(cell(c, i) for c in r) + " |" for i, r in enumerate(t.rows)]
    return "\n".join(lines)


def build_markdown(report: dict, skipped: Any = ()) -> str:
    out = [
        f"# raysynth report: {report.get('preset', 'run')}",
        "",
        summary_line(report),
        "",
        "See report.html for the images and charts.",
        "",
    ]

    def section(title: str, tables: Iterable[Table | None], note: str = "") -> None:
        tables = [t for t in tables if t is not None]
        if tables:
            out.extend([f"## {title}", ""] + ([note, ""] if note else []))
            for t in tables:
                out.extend([_md_table(t), ""])

    section("Accuracy", [accuracy_table(report)], "The best method is in bold.")
    section("Classifier accuracy per group", [classifier_table(report)])
    weights = weights_of(report)
    if weights:
        section(
            "Learned weight per class",
            [weights_table(weights)],
            "0 = distrust the synthetic images of the class, 1 = trust them.",
        )
    section(
        "AiR: pseudo-labels and prompt learning",
        air_tables(report),
        "Pseudo-label accuracy is measured on the unlabeled images (their labels are never "
        "trained on); test accuracy on the test split.",
    )
    section("Synthesis", synthesis_tables(report))
    section("Weight search", [tune_table(report)])
    section("Timings", [timings_table(report)])
    section("Real images per class", [counts_table(report)])
    items, more = _skipped_items(skipped)
    if items:
        out.extend(["## Skipped input images", ""] + [f"- `{s}`" for s in items])
        out.extend([f"- … and {more} more" if more else "", ""])
    return "\n".join(out).rstrip() + "\n"


# HTML ----------------------------------------------------------------------------------------

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
    return html.escape(str(s), quote=True)


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
    if (t := accuracy_table(report)) is not None:
        body += ["<h2>Accuracy</h2>", _html_table(t)]
    if (t := classifier_table(report)) is not None:
        series = {
            name: {gr: _mean(v) for gr, v in s.items()}
            for name, s in _classifier_series(report).items()
        }
        groups = [gr for gr in GROUPS if any(gr in s for s in series.values())]
        body += [
            "<h2>Classifier accuracy per group</h2>",
            _html_table(t),
            _img(charts.grouped_accuracy_chart(series, groups), "accuracy per group"),
        ]
    if weights := weights_of(report):
        body += [
            "<h2>Learned weight per class</h2>",
            _img(charts.weights_chart(weights), "weights"),
            f"<details><summary>values</summary>{_html_table(weights_table(weights))}</details>",
        ]
    if tables := air_tables(report):
        body += ["<h2>AiR: pseudo-labels and prompt learning</h2>", *map(_html_table, tables)]
        protos = [
            _thumb(png, name, name)
            for name, png in (prototypes or {}).items()
        ]
        if protos := [t for t in protos if t is not None]:
            body += ["<h3>Prototype per class (the most representative generated image)</h3>",
                     _strip("prototypes", protos, "accepted")]
    if tables := synthesis_tables(report):
        body += ["<h2>Synthesis</h2>", *map(_html_table, tables)]
    body += _html_images(g, total)
    tune = _dict(report.get("tune"))
    if tune:
        body += ["<h2>Weight search</h2>", _html_table(tune_table(report))]
        curve = [v for v in tune.get("best_so_far") or [] if _finite(v) is not None]
        if curve:
            body.append(_img(charts.best_so_far_chart(curve), "best validation accuracy so far"))
    if (t := timings_table(report)) is not None:
        body += ["<h2>Timings</h2>", _html_table(t)]
    if (t := counts_table(report)) is not None:
        body += ["<h2>Real images per class</h2>", _html_table(t)]
    items, more = _skipped_items(skipped)
    if items:
        lis = "".join(f"<li><code>{_e(s)}</code></li>" for s in items)
        lis += f"<li>… and {more} more</li>" if more else ""
        body += ["<h2>Skipped input images</h2>", f"<ul>{lis}</ul>"]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        f"<title>{_e(title)}</title><style>{CSS}</style></head>\n<body>\n"
        + "\n".join(body)
        + f"\n<script>{SCRIPT}</script>\n</body></html>\n"
    )


# Small helpers -------------------------------------------------------------------------------


def _dict(v: Any) -> dict:
    return v if isinstance(v, dict) else {}


def _finite(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _pct(v: Any) -> str:
    f = _finite(v)
    return DASH if f is None else f"{100 * f:.2f}"


def _num(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return DASH if v is None else str(v)
    if isinstance(v, int):
        return str(v)
    f = _finite(v)
    return DASH if f is None else f"{f:.3f}"


def _dur(v: Any) -> str:
    s = _finite(v)
    if s is None:
        return DASH
    if s < 120:
        return f"{s:.1f} s"
    return f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.2f} h"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
