"""What the report shows from the run directory besides ``report.json``: thumbnails of the real
train split and of the accepted and rejected synthetic images, every cosine score, the AiR
prototypes, and the class names of ``real/classes.json``.

Thumbnails are streamed: real and synthetic tables are read only until each class has enough.
A part that cannot be read is left out with a warning: a report shows what it can.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from PIL import Image

import raysynth.report.air as air_report
from raysynth import columns as col
from raysynth.data.images import png_size
from raysynth.data.store import read_classes, real_path
from raysynth.errors import RunDirError
from raysynth.generate.table import iter_tables
from raysynth.report.values import as_dict, class_name, finite, num
from raysynth.rundir import SYNTHETIC
from raysynth.storage import fs_path
from raysynth.text import printable

log = logging.getLogger("raysynth.report")

MAX_EMBED_PX = 128  # larger images are downscaled before embedding, to keep the file small


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


def classes_meta(root: Path) -> dict[str, Any]:
    """``real/classes.json`` (class names, skipped inputs), or ``{}`` when it cannot be read."""
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
        ("cosine scores", lambda: _scores(root / SYNTHETIC, names, g)),
        (
            "synthetic thumbnails",
            lambda: _synthetic_thumbs(root / SYNTHETIC, names, g, per_class),
        ),
    ]
    for what, step in steps:
        try:
            step()
        except Exception as e:  # a report shows what it can; the run's data is not its concern
            log.warning("report: left out the %s (%s: %s)", what, type(e).__name__, printable(e))
    return g


def use_report_thresholds(g: Gallery, report: dict) -> None:
    """The per-class thresholds ``report.json`` records win over those read from the table."""
    for name, t in as_dict(as_dict(report.get("synthesis")).get("per_class")).items():
        if finite(as_dict(t).get("threshold")) is not None and name in g.scores:
            g.thresholds[name] = float(t["threshold"])


def collect_prototypes(root: Path, report: dict) -> dict[str, bytes]:
    """``{class: PNG}`` of the AiR prototypes ``report.json`` names (``{}`` when none)."""
    air = as_dict(report.get("air"))
    if not air.get("prototypes"):
        return {}
    try:
        return air_report.prototype_images(root, air)
    except Exception as e:  # a report shows what it can
        log.warning("report: left out the prototypes (%s: %s)", type(e).__name__, printable(e))
        return {}


def _real_thumbs(root: Path, names: list[str], out: dict[str, list[Thumb]], k: int) -> None:
    path = real_path(root, "train")
    if not path.is_file():
        return
    fs, where = fs_path(path)
    for batch in pq.ParquetFile(where, filesystem=fs).iter_batches(
        1024, columns=[col.SAMPLE_ID, col.LABEL, col.IMAGE]
    ):
        ids, labels = batch.column(0).to_pylist(), batch.column(1).to_pylist()
        for i, label in enumerate(labels):
            bucket = out.get(class_name(names, label))
            if bucket is not None and len(bucket) < k:
                thumb = make_thumb(batch.column(2)[i].as_py(), ids[i])
                if thumb:
                    bucket.append(thumb)
        if all(len(b) >= k for b in out.values()):
            return


def _scores(root: Path, names: list[str], g: Gallery) -> None:
    """Every filtered row's cosine score (narrow columns only, no images)."""
    cols = [col.LABEL, col.REAL_COS, col.ACCEPTED, col.THRESHOLD]
    for t in iter_tables(root, cols):
        for label, cos, accepted, threshold in zip(*(t.column(c).to_pylist() for c in cols)):
            pair = g.scores.get(class_name(names, label))
            if pair is None or accepted is None or finite(cos) is None:
                continue
            pair[0 if accepted else 1].append(float(cos))
            if finite(threshold) is not None:  # later rounds come later: the last one wins
                g.thresholds[class_name(names, label)] = float(threshold)


def _synthetic_thumbs(root: Path, names: list[str], g: Gallery, k: int) -> None:
    cols = [col.SAMPLE_ID, col.LABEL, col.REAL_COS, col.ACCEPTED]
    for t in iter_tables(root, [*cols, col.IMAGE]):
        for i, (sid, label, cos, accepted) in enumerate(
            zip(*(t.column(c).to_pylist() for c in cols))
        ):
            if accepted is None:
                continue
            bucket = (g.accepted if accepted else g.rejected).get(class_name(names, label))
            if bucket is not None and len(bucket) < k:
                thumb = make_thumb(t.column(col.IMAGE)[i].as_py(), sid, f"cos {num(cos)}")
                if thumb:
                    bucket.append(thumb)
        if all(len(b) >= k for b in (*g.accepted.values(), *g.rejected.values())):
            return


def make_thumb(data: bytes | None, title: str, caption: str = "") -> Thumb | None:
    """PNG bytes fit for embedding: small PNGs as they are, anything else re-encoded smaller."""
    if not data:
        return None  # flagged by the safety checker: no image was kept
    size = png_size(data)
    if size is not None and max(size) <= MAX_EMBED_PX:  # a small PNG: embedded undecoded
        return Thumb(data, title, caption)
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
        log.warning("report: image %s is unreadable (%s); left out", printable(title), printable(e))
        return None
