"""``report.json`` → ``report.md`` and a self-contained ``report.html`` (DESIGN §4).

The entry of the report: reads ``report.json``, gathers what else the run directory holds
(:mod:`raysynth.report.collect`) and writes the Markdown (:mod:`raysynth.report.markdown`) and
the HTML (:mod:`raysynth.report.html`), each atomically. Every section is optional: a key missing
from ``report.json`` (or a run directory without ``real/`` or ``synthetic/``) leaves its section
out.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from raysynth.errors import RunDirError
from raysynth.files import atomic_write_text
from raysynth.report.collect import (
    classes_meta,
    collect_gallery,
    collect_prototypes,
    use_report_thresholds,
)
from raysynth.report.html import build_html
from raysynth.report.markdown import build_markdown
from raysynth.report.values import as_dict
from raysynth.rundir import REPORT_HTML, REPORT_JSON, REPORT_MD
from raysynth.storage import as_path

log = logging.getLogger("raysynth.report")

THUMBS_PER_KIND = 8  # real, accepted and rejected thumbnails per class
MAX_CLASSES = 50  # classes with image strips and histogram panels


def render_report(
    run_dir: str | Path, *, per_class: int = THUMBS_PER_KIND, max_classes: int = MAX_CLASSES
) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` next to ``run_dir/report.json``; returns both paths."""
    root = as_path(run_dir)  # local, or the run directory's RemotePath
    src = root / REPORT_JSON
    if not src.is_file():
        raise RunDirError(f"{src} is missing; finish a run in {root} (raysynth run --resume) first")
    report = json.loads(src.read_text())
    meta = classes_meta(root)
    names = [str(c) for c in meta.get("class_names") or report.get("classes") or []]
    shown = names[:max_classes]
    if len(names) > len(shown):
        log.info(
            "image strips and histograms for the first %d of %d classes", len(shown), len(names)
        )
    gallery = collect_gallery(root, names, shown, per_class)
    use_report_thresholds(gallery, report)
    skipped = as_dict(report.get("data")).get("skipped", meta.get("skipped", []))
    md_path, html_path = root / REPORT_MD, root / REPORT_HTML
    atomic_write_text(md_path, build_markdown(report, skipped))
    prototypes = collect_prototypes(root, report)
    atomic_write_text(html_path, build_html(report, skipped, gallery, len(names), prototypes))
    log.info("wrote %s and %s", md_path, html_path)
    return md_path, html_path
