"""report.html in a real browser: headless Chromium draws it offline and decodes every image.

Needs a Chromium binary (CI: ``apt-get install -y chromium``); skipped without one.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from raysynth.data.images import encode_png
from raysynth.data.imageset import ImageSet
from raysynth.data.splits import Splits
from raysynth.data.store import write_real
from raysynth.generate.actor import SYNTHETIC_SCHEMA
from raysynth.report import render_report

CHROMIUM = (
    shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
)
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (apt-get install -y chromium)"),
]
CLASSES = ["0", "1"]


def _digit(rng: np.random.Generator) -> bytes:
    return encode_png(rng.integers(0, 256, (8, 8), dtype=np.uint8))


def make_run(run: Path) -> Path:
    """Two classes: 6 real train images each, 5 accepted and 3 rejected synthetic ones each."""
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 8)
    data = ImageSet(
        [_digit(rng) for _ in labels],
        labels,
        CLASSES,
        [f"img{i}.png" for i in range(16)],
        [("broken.png", "truncated")],
        channels=1,
    )
    idx = np.arange(16)
    write_real(run, data, Splits(idx[idx % 8 < 6], [], idx[idx % 8 == 6], idx[idx % 8 == 7]))
    rows = [
        {
            "sample_id": f"syn-{y}-{i}",
            "label": y,
            "class_name": CLASSES[y],
            "round": 0,
            "image": _digit(rng),
            "real_cos": 0.5 + 0.04 * i,
            "threshold": 0.7,
            "accepted": i >= 3,
        }
        for y in (0, 1)
        for i in range(8)
    ]
    (run / "synthetic" / "round-000").mkdir(parents=True)
    pq.write_table(
        pa.Table.from_pylist(rows, schema=SYNTHETIC_SCHEMA),
        run / "synthetic" / "round-000" / "block-0.parquet",
    )
    report = {
        "preset": "digits",
        "flow": "unicon",
        "classes": CLASSES,
        "weights": {"0": 0.8, "1": 0.2},
        "accuracy": {
            m: {"mean": 0.9, "std": 0.01, "runs": 3}
            for m in ("supcon_real", "supcon_mixed", "unicon")
        },
        "synthesis": {"planned": 10, "generated": 16, "accepted": 10, "rejected": 6, "rounds": 1},
        "tune": {"trials": 4, "concurrency": 2, "best_val_acc": 0.9, "best_so_far": [0.7, 0.9]},
        "timings": {"total_s": 30.0},
    }
    (run / "report.json").write_text(json.dumps(report))
    return run


def chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp / 'profile'}",
        "--window-size=1200,3000",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def test_report_renders_in_chromium_with_every_image_decoded(tmp_path):
    _, html_path = render_report(make_run(tmp_path / "run"))
    n_img = html_path.read_text().count("<img")
    assert n_img == 3 + 2 * (6 + 5 + 3)  # weights, histograms, best-so-far + thumbnails

    shot = tmp_path / "shot.png"
    proc = chromium(tmp_path, f"--screenshot={shot}", html_path.as_uri())
    assert shot.is_file(), proc.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (3000, 1200)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20  # text, charts and digits drawn
    assert pixels.std() > 10

    proc = chromium(tmp_path, "--dump-dom", "--virtual-time-budget=5000", html_path.as_uri())
    found = re.search(r'data-images-ok="(\d+)"', proc.stdout)
    assert found, f"the page's load script did not run: {proc.stderr[-2000:]}"
    assert int(found.group(1)) == n_img
