"""report.json → report.md + self-contained report.html, on a tiny hand-built run directory."""

from __future__ import annotations

import base64
import io
import json
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from raysynth.data.images import encode_png
from raysynth.data.imageset import ImageSet
from raysynth.data.splits import Splits
from raysynth.data.store import write_real
from raysynth.errors import RunDirError
from raysynth.generate.actor import SYNTHETIC_SCHEMA
from raysynth.report import collect as render_mod
from raysynth.report import render_report
from raysynth.report.samples import recognition_rate, write_sample_grid
from raysynth.train.checkpoint import write_checkpoint
from raysynth.train.models import build_model

CLASSES = ["0", "1", "2"]
REPORT = {
    "preset": "digits",
    "flow": "unicon",
    "classes": CLASSES,
    "weights": {"0": 0.81, "1": 0.12, "2": 0.5},
    "accuracy": {
        "supcon_real": {"mean": 0.9, "std": 0.01, "runs": 9},
        "supcon_mixed": {"mean": 0.88, "std": 0.02, "runs": 9},
        "unicon": {"mean": 0.9312, "std": 0.0051, "runs": 9},
    },
    "split": "test",
    "synthesis": {
        "planned": 30,
        "generated": 38,
        "accepted": 13,
        "rejected": 15,
        "rounds": 2,
        "flagged": 1,
        "per_class": {
            "0": {"accepted": 10, "rejected": 4, "threshold": 0.71, "unfilled": 0},
            "1": {"accepted": 2, "rejected": 9, "threshold": 0.73, "unfilled": 8},
            "2": {"accepted": 1, "rejected": 1, "threshold": 0.6, "unfilled": 9},
        },
    },
    "tune": {
        "trials": 12,
        "concurrency": 2,
        "best_val_acc": 0.93,
        "wall_s": 500.0,
        "best_so_far": [0.8, 0.85, 0.85, 0.93],
    },
    "timings": {"total_s": 600.0, "stages": {"data": 1.0, "synthesis": 60.0, "search": 400.0}},
    "data": {
        "skipped": [["inputs/bad <1>.png", "not an image"]],
        "counts": {"train": [10, 10, 10], "val": [1, 1, 1]},
    },
}
# Thumbnails the full run dir yields (8 per kind at most): real 8 per class; accepted
# 8 (of 10) + 2 + 1; rejected 3 (the flagged row has no image) + 8 (of 9) + 1.
N_REAL, N_ACCEPTED, N_REJECTED = 24, 11, 12
N_CHARTS = 3  # weights, cosine histograms, best-so-far


def _png(rng: np.random.Generator, size: int = 8, rgb: bool = False) -> bytes:
    shape = (size, size, 3) if rgb else (size, size)
    return encode_png(rng.integers(0, 256, shape, dtype=np.uint8))


def write_real_split(run: Path, per_class: int = 10) -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(len(CLASSES)), per_class + 2)
    data = ImageSet(
        images=[_png(rng) for _ in labels],
        labels=labels,
        class_names=CLASSES,
        sources=[f"img{i}.png" for i in range(len(labels))],
        skipped=[("inputs/bad <1>.png", "not an image")],
        channels=1,
    )
    pos = np.arange(len(labels)) % (per_class + 2)
    idx = np.arange(len(labels))
    write_real(
        run, data, Splits(idx[pos < per_class], [], idx[pos == per_class], idx[pos > per_class])
    )


def synthetic_rows(label: int, n: int, accepted: bool | None, start: int, cos0: float, **kw):
    rng = np.random.default_rng(label * 100 + start)
    return [
        {
            "sample_id": f"syn-{label}-{start + i:04d}",
            "label": label,
            "class_name": CLASSES[label],
            "round": kw.get("round", 0),
            "seed": start + i,
            "prompt": f"a digit {label}",
            "image": None
            if kw.get("flagged")
            else _png(rng, kw.get("size", 8), kw.get("rgb", False)),
            "flagged": bool(kw.get("flagged")),
            "real_cos": cos0 + 0.001 * i,
            "threshold": kw.get("threshold", 0.7),
            "accepted": accepted,
        }
        for i in range(n)
    ]


def write_synthetic(run: Path, name: str, rows: list[dict]) -> None:
    path = run / "synthetic" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=SYNTHETIC_SCHEMA), path)


def make_run(run: Path, report: dict = REPORT) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    (run / "report.json").write_text(json.dumps(report))
    write_real_split(run)
    write_synthetic(
        run,
        "round-000/block-0.parquet",
        synthetic_rows(0, 10, True, 0, 0.8123)
        + synthetic_rows(0, 3, False, 10, 0.5)
        + synthetic_rows(0, 1, False, 13, 0.4, flagged=True)
        + synthetic_rows(1, 2, True, 0, 0.9)
        + synthetic_rows(1, 9, False, 2, 0.3)
        + synthetic_rows(2, 2, None, 0, float("nan")),  # not filtered yet: shown nowhere
    )
    write_synthetic(
        run,
        "round-001/block-0.parquet",
        synthetic_rows(2, 1, True, 10, 0.65, round=1, size=300, rgb=True)
        + synthetic_rows(2, 1, False, 11, 0.55, round=1),
    )
    return run


class TagChecker(HTMLParser):
    """Collects <img> attributes and checks that every non-void tag is closed in order."""

    VOID = {"meta", "img", "br", "hr", "input", "link", "source"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.imgs: list[dict] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.imgs.append(dict(attrs))
        elif tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()


def parse(html: str) -> TagChecker:
    checker = TagChecker()
    checker.feed(html)
    checker.close()
    assert checker.errors == [] and checker.stack == [], (checker.errors, checker.stack)
    return checker


def _decode(img: dict) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert img["src"].startswith(prefix)
    im = Image.open(io.BytesIO(base64.b64decode(img["src"][len(prefix) :])))
    im.load()
    assert im.format == "PNG"
    return im


def test_full_report_is_self_contained_and_shows_everything(tmp_path):
    run = make_run(tmp_path / "run")
    md_path, html_path = render_report(run)
    assert (md_path, html_path) == (run / "report.md", run / "report.html")
    html, md = html_path.read_text(), md_path.read_text()

    page = parse(html)
    assert len(page.imgs) == html.count("<img") == N_CHARTS + N_REAL + N_ACCEPTED + N_REJECTED
    sizes = Counter(_decode(img).size for img in page.imgs)
    # the 300×300 synthetic image was shrunk before embedding; the 8×8 ones kept as they are
    assert sizes[(8, 8)] == N_REAL + N_ACCEPTED + N_REJECTED - 1 and sizes[(128, 128)] == 1
    assert html.count('class="thumb real"') == N_REAL
    assert html.count('class="thumb accepted"') == N_ACCEPTED
    assert html.count('class="thumb rejected"') == N_REJECTED
    # nothing fetched from outside: no external src/href, no stylesheet links, no CSS urls
    assert 'src="http' not in html and "href=" not in html and "url(" not in html
    assert {"link", "iframe", "object"}.isdisjoint(page.tags)
    assert "image-rendering: pixelated" in html

    for text in (html, md):
        assert "93.12 ± 0.51" in text and "90.00 ± 1.00" in text and "88.00 ± 2.00" in text
        assert "0.810" in text and "0.120" in text  # weights
        assert "0.710" in text and "0.730" in text  # per-class thresholds
        assert "preset digits · flow unicon · 3 classes (0, 1, 2) · total time 10.0 min" in text
        assert "8.3 min" in text  # search wall time
    assert '<tr class="best"><td>UniCon</td>' in html
    assert "| **UniCon** | **93.12 ± 0.51** | **9** |" in md
    assert "see report.html for the images" in md.lower() and "<img" not in md

    # captions carry the cosine scores, accepted and rejected
    assert "<figcaption>cos 0.812</figcaption>" in html
    assert "<figcaption>cos 0.500</figcaption>" in html
    assert "<figcaption>cos 0.650</figcaption>" in html
    assert "cos nan" not in html and "syn-2-0000" not in html  # unfiltered rows are not shown
    # skipped inputs listed by name, escaped in the HTML
    assert "inputs/bad &lt;1&gt;.png: not an image" in html
    assert "inputs/bad <1>.png: not an image" in md
    assert not [p.name for p in run.iterdir() if p.name.startswith(".report")]


def test_user_strings_are_escaped(tmp_path):
    evil = "<script>alert(1)</script>"
    report = {
        "preset": evil,
        "classes": [evil],
        "weights": {evil: 0.5},
        "synthesis": {"per_class": {evil: {"accepted": 1}}},
    }
    (tmp_path / "report.json").write_text(json.dumps(report))
    _, html_path = render_report(tmp_path)
    html = html_path.read_text()
    assert evil not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    parse(html)


PARTIAL = [
    ({}, 0),
    ({"preset": "digits"}, 0),
    ({"preset": "digits", "accuracy": {"unicon": {"mean": 0.5}}}, 0),
    ({"weights": {"0": 0.3}, "tune": {"trials": 3}}, 1),
    ({"tune": {"best_so_far": [0.1, float("nan"), 0.4]}, "synthesis": {"planned": 5}}, 1),
    ({"synthesis": {"per_class": {"0": {"threshold": None}}}, "timings": {"stages": {}}}, 0),
    ({"accuracy": {"unicon": "broken"}, "weights": [0.2, 0.4], "classes": ["a", "b"]}, 1),
]


@pytest.mark.parametrize(("report", "n_img"), PARTIAL)
def test_partial_report_renders_what_is_there(tmp_path, report, n_img):
    (tmp_path / "report.json").write_text(json.dumps(report))
    md_path, html_path = render_report(tmp_path)
    html = html_path.read_text()
    assert len(parse(html).imgs) == n_img
    assert md_path.read_text().startswith("# raysynth report")
    if "accuracy" in report and isinstance(report["accuracy"]["unicon"], dict):
        assert "50.00 ± —" in html and "50.00 ± —" in md_path.read_text()


def test_classifier_flow_shows_groups_with_and_without_synthetic(tmp_path):
    def groups(overall, many, medium, few, std=0.01):  # as learn.classifier_flow writes them
        return {
            g: {"mean": v, "std": std, "runs": 3}
            for g, v in (("overall", overall), ("many", many), ("medium", medium), ("few", few))
        }

    report = {
        "preset": "digits-lt",
        "flow": "classifier",
        "classes": CLASSES,
        "classifier": {
            "real_only": groups(0.8, 0.9, 0.8, 0.5),
            "with_synthetic": groups(0.85, 0.9, 0.85, 0.7, std=0.025),
        },
    }
    (tmp_path / "report.json").write_text(json.dumps(report))
    md_path, html_path = render_report(tmp_path)
    html, md = html_path.read_text(), md_path.read_text()
    assert len(parse(html).imgs) == 1  # the grouped bar chart
    assert "| few | 50.00 ± 1.00 | 70.00 ± 2.50 | +20.00 |" in md
    assert "| many | 90.00 ± 1.00 | 90.00 ± 2.50 | +0.00 |" in md
    assert "<td>few</td><td>50.00 ± 1.00</td><td>70.00 ± 2.50</td><td>+20.00</td>" in html
    assert "real only (%)" in html and "with synthetic (%)" in html
    # plain numbers (no std) still render
    report["classifier"] = {"real_only": {"few": 0.5}, "with_synthetic": {"few": 0.7}}
    (tmp_path / "report.json").write_text(json.dumps(report))
    assert "| few | 50.00 | 70.00 | +20.00 |" in render_report(tmp_path)[0].read_text()


def test_synthetic_table_is_read_only_until_every_class_is_full(tmp_path, monkeypatch):
    run = make_run(tmp_path / "run")
    # round-000 now covers every class, so one thumbnail of each kind needs only that file
    write_synthetic(
        run,
        "round-000/block-1.parquet",
        synthetic_rows(2, 1, True, 20, 0.9) + synthetic_rows(2, 1, False, 21, 0.1),
    )
    image_reads = []
    real_iter = render_mod.iter_tables

    def counting(root, columns=None):
        for t in real_iter(root, columns):
            if "image" in t.column_names:
                image_reads.append(t.num_rows)
            yield t

    monkeypatch.setattr(render_mod, "iter_tables", counting)
    _, html_path = render_report(run, per_class=1)
    html = html_path.read_text()
    assert len(image_reads) == 2  # both round-000 files, not round-001
    assert html.count('class="thumb real"') == 3
    assert html.count('class="thumb accepted"') == 3 and html.count('class="thumb rejected"') == 3


def test_missing_report_json_says_what_to_do(tmp_path):
    with pytest.raises(RunDirError, match="report.json is missing"):
        render_report(tmp_path)


def _write_parts(run: Path, parts: dict[str, list[tuple]]) -> None:
    """One synthetic file per part name, rows given as ``(sample_id, label, round, image,
    accepted)``."""
    keys = ("sample_id", "label", "round", "image", "accepted")
    for name, rows in parts.items():
        write_synthetic(run, name, [dict(zip(keys, r)) for r in rows])


def test_sample_grid_shows_accepted_images_first_per_class(tmp_path):
    rng = np.random.default_rng(0)
    img = {k: rng.integers(0, 256, (4, 4, 3), dtype=np.uint8) for k in "ABCDEFG"}
    png = {k: encode_png(v) for k, v in img.items()}
    _write_parts(
        tmp_path,
        {
            "round-000/block-0.parquet": [
                ("s0", 0, 0, png["A"], False),
                ("s1", 0, 0, png["B"], True),
                ("s2", 0, 0, None, None),  # flagged: no image
                ("s3", 0, 0, png["C"], True),
                ("s4", 1, 0, png["D"], False),
            ],
            "round-001/block-0.parquet": [
                ("s5", 1, 1, png["E"], True),
                ("s6", 1, 1, png["F"], True),
                ("s7", 0, 1, png["G"], True),
            ],
        },
    )
    out = tmp_path / "samples.png"
    assert write_sample_grid(tmp_path / "synthetic", out, num_classes=3, per_class=2) == out
    with Image.open(out) as im:
        assert (im.format, im.mode, im.size) == ("PNG", "RGB", (2 * 5 * 16, 3 * 5 * 16))
        grid = np.asarray(im)
    # 4×4 images in 5×5 cells (a white line after each), upscaled 64 // 4 = 16 times; accepted
    # images come first within each file, files in order; class 2 has none: its row stays white
    want = np.full((3 * 5, 2 * 5, 3), 255, np.uint8)
    for (c, j), k in {(0, 0): "B", (0, 1): "C", (1, 0): "D", (1, 1): "E"}.items():
        want[c * 5 : c * 5 + 4, j * 5 : j * 5 + 4] = img[k]
    assert np.array_equal(grid, want.repeat(16, axis=0).repeat(16, axis=1))


def test_recognition_rate_counts_what_the_classifier_calls_the_intended_class(tmp_path):
    cfg = {
        "kind": "classifier",
        "encoder": {"arch": "small_cnn", "in_channels": 1, "width": 4, "feat_dim": 8},
        "num_classes": 3,
    }
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():  # a classifier that calls every image class 1
        model.fc.weight.zero_()
        model.fc.bias.copy_(torch.tensor([0.0, 5.0, 0.0]))
    folder = write_checkpoint(tmp_path / "cls", model.eval(), cfg)
    rng = np.random.default_rng(0)
    png = [encode_png(rng.integers(0, 256, (8, 8), dtype=np.uint8)) for _ in range(8)]
    hit, miss = 1, 0  # the class the classifier calls every image, and another one
    _write_parts(
        tmp_path,
        {
            "round-000/block-0.parquet": [
                ("s0", hit, 0, png[0], True),
                ("s1", miss, 0, png[1], False),
                ("s2", hit, 0, None, True),  # flagged: no image, not counted
                ("s3", 2, 0, png[2], True),  # a miss as well
                ("s4", hit, 0, png[3], None),  # not filtered yet
                ("s5", hit, 0, png[4], False),
            ],
            "round-001/block-0.parquet": [
                ("s6", hit, 1, png[5], False),
                ("s7", miss, 1, png[6], True),
            ],
            "round-001/block-1.parquet": [("s8", hit, 1, None, None)],
        },
    )
    got = recognition_rate(tmp_path / "synthetic", folder, channels=1)
    assert got == {"all": 4 / 7, "round0": 3 / 5, "accepted": 1 / 3}
    empty = recognition_rate(tmp_path / "nothing", folder, channels=1)
    assert set(empty) == {"all", "round0", "accepted"}
    assert all(np.isnan(v) for v in empty.values())
