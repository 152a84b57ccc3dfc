"""Hostile strings from data or config in every output of the report: class names, a preset,
table keys and skipped file names holding HTML, quotes, ``$`` (mathtext), Markdown, control
characters and ``../``. A real run directory (real splits, a synthetic part, report.json) is
rendered with :func:`render_report`; the outputs must hold the escaped forms and never the raw
characters, and nothing may be written outside the run directory."""

from __future__ import annotations

import html as html_lib
import io
import json
import logging
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raysynth.data.images import encode_png
from raysynth.data.imageset import ImageSet
from raysynth.data.splits import Splits
from raysynth.data.store import write_real
from raysynth.generate.actor import SYNTHETIC_SCHEMA
from raysynth.report import charts, render_report
from raysynth.report.text import md_code, md_text
from raysynth.text import PrintableFilter, printable

HOSTILE = [
    "<b>bold</b>&amp;<script>alert(1)</script>",
    "say \"hi\" 'there'",
    "cost $5",
    "$_$",
    "cost_$^$",
    "red\x1b[31mALERT\x1b[0m",
    "over\rwrite",
    "two\nlines",
    "../../etc/passwd",
    "*em* _u_ `code` [link](http://x) | pipe # h ~s~",
    "bidi\u202eevil",
]
RAW_CONTROLS = ("\x1b", "\r", "\u202e")


def _png(rng: np.random.Generator) -> bytes:
    return encode_png(rng.integers(0, 256, (8, 8), dtype=np.uint8))


def make_hostile_run(run: Path) -> Path:
    """A run directory whose class names, preset, keys and skipped inputs are all hostile."""
    rng = np.random.default_rng(0)
    n = len(HOSTILE)
    labels = np.repeat(np.arange(n), 4)
    data = ImageSet(
        images=[_png(rng) for _ in labels],
        labels=labels,
        class_names=HOSTILE,
        sources=[f"img{i}.png" for i in range(len(labels))],
        skipped=[(name, "not an image") for name in HOSTILE],
        channels=1,
    )
    pos = np.arange(len(labels)) % 4
    idx = np.arange(len(labels))
    write_real(run, data, Splits(idx[pos < 2], [], idx[pos == 2], idx[pos == 3]))
    rows = [
        {
            "sample_id": f"syn-{c}-{i}",
            "label": c,
            "class_name": HOSTILE[c],
            "round": 0,
            "seed": i,
            "prompt": HOSTILE[c],
            "image": _png(rng),
            "flagged": False,
            "real_cos": 0.5 + 0.1 * i,
            "threshold": 0.6,
            "accepted": i > 0,
        }
        for c in range(n)
        for i in range(2)
    ]
    part = run / "synthetic" / "round-000" / "part-0.parquet"
    part.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=SYNTHETIC_SCHEMA), part)
    report = {
        "preset": HOSTILE[0],
        "flow": HOSTILE[5],
        "classes": HOSTILE,
        "weights": {name: 0.1 * i % 1 for i, name in enumerate(HOSTILE)},
        "accuracy": {HOSTILE[3]: {"mean": 0.5, "std": 0.1, "runs": 2}, "unicon": {"mean": 0.6}},
        "classifier": {HOSTILE[4]: {"overall": 0.5}, HOSTILE[6]: {"overall": 0.6}},
        "synthesis": {
            "planned": 4,
            "per_class": {name: {"accepted": 1, "threshold": 0.6} for name in HOSTILE},
        },
        "tune": {"trials": 2, "best_so_far": [0.4, 0.5]},
        "timings": {"stages": {name: 1.0 for name in HOSTILE}, "total_s": 3.0},
        "data": {"skipped": [[name, HOSTILE[5]] for name in HOSTILE]},
    }
    (run / "report.json").write_text(json.dumps(report))
    return run


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> tuple[Path, str, str]:
    base = tmp_path_factory.mktemp("hostile")
    run = make_hostile_run(base / "a" / "run")
    before = _files(base)
    md_path, html_path = render_report(run)
    assert _files(base) - before == {md_path, html_path}, "wrote only report.md and report.html"
    return run, md_path.read_text(), html_path.read_text()


def test_no_raw_control_character_reaches_any_output(rendered):
    _, md, html = rendered
    for text in (md, html):
        for c in RAW_CONTROLS:
            assert c not in text, repr(c)
        assert all(ord(c) >= 0x20 or c == "\n" for c in text)
    # each visible escape is there instead
    assert r"red\x1b[31mALERT\x1b[0m" in html and r"over\rwrite" in html
    assert r"two\nlines" in html and r"bidi\u202eevil" in html
    assert r"red\\x1b\[31mALERT\\x1b\[0m" in md and r"two\\nlines" in md
    assert r"over\\rwrite" in md


def test_html_escapes_markup_and_quotes(rendered):
    _, _, html = rendered
    assert "<script>alert(1)</script>" not in html and "<b>bold</b>" not in html
    assert "&lt;b&gt;bold&lt;/b&gt;&amp;amp;&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "say &quot;hi&quot; &#x27;there&#x27;" in html
    assert "$_$" in html and "cost_$^$" in html and "../../etc/passwd" in html
    assert html.count("<script>") == 1  # the page's own image counter only


class _Cells(HTMLParser):
    """The text of every table cell and list item of an HTML fragment, and its tags."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[str] = []
        self.tags: set[str] = set()
        self._open = 0

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        if tag in ("td", "th", "li"):
            self.cells.append("")
            self._open += 1

    def handle_endtag(self, tag):
        if tag in ("td", "th", "li"):
            self._open -= 1

    def handle_data(self, data):
        if self._open:
            self.cells[-1] += data


def test_markdown_renders_every_name_as_its_own_characters(rendered):
    """Rendered by a real CommonMark renderer (tables on, raw HTML allowed), each hostile name
    comes out as text equal to the name itself (controls as their visible escapes): no tag,
    emphasis, link or code span is created by the data."""
    markdown_it = pytest.importorskip("markdown_it")
    _, md, _ = rendered
    out = markdown_it.MarkdownIt("commonmark").enable("table").render(md)
    parsed = _Cells()
    parsed.feed(out)
    cells = {c.strip() for c in parsed.cells}  # HTMLParser unescapes character references
    for name in HOSTILE:
        assert printable(name) in cells, name  # the weights / per-class tables
        assert f"{printable(name)}: {printable(HOSTILE[5])}" in cells, name  # skipped inputs
    # the data made no markup: only the tags the report itself writes
    assert parsed.tags <= {"h1", "h2", "p", "table", "thead", "tbody", "tr", "th", "td", "ul",
                           "li", "code", "strong"}
    heading = out.split("</h1>")[0]
    assert html_lib.unescape(heading.split("<h1>")[1]) == f"raysynth report: {HOSTILE[0]}"


def test_markdown_lines_are_not_broken_by_names(rendered):
    _, md, _ = rendered
    lines = md.splitlines()
    weights = lines.index("## Learned weight per class")
    table = []
    for line in lines[weights + 4 :]:
        if not line:
            break
        table.append(line)
    assert len(table) == 2 + len(HOSTILE)  # header, rule, one row per class — no extra lines
    assert all(line.startswith("|") and line.endswith("|") for line in table)


@pytest.mark.parametrize("name", ["$_$", "cost_$^$", "$\\frac{1}{$", "a$b", "\x1b[31m$x^$"])
def test_charts_draw_names_that_mathtext_cannot_parse(name):
    for png in (
        charts.weights_chart({name: 0.5, "ok": 0.2}),
        charts.cosine_histograms({name: ([0.5, 0.6], [0.1])}, {name: 0.4}),
        charts.grouped_accuracy_chart({name: {"overall": 0.5}}, ["overall"]),
    ):
        assert png.startswith(b"\x89PNG")


def test_charts_leave_the_global_mathtext_setting_alone():
    import matplotlib

    before = matplotlib.rcParams["text.parse_math"]
    charts.weights_chart({"$_$": 0.5})
    assert matplotlib.rcParams["text.parse_math"] == before


def test_escapes_of_each_output():
    assert printable("a\x1b[31mb\r\n\t\x00\u202e") == "a\\x1b[31mb\\r\\n\\t\\x00\\u202e"
    assert printable("plain ünïcode λ") == "plain ünïcode λ"
    assert md_text("<a href='x'>*b*</a> | $x$") == "\\<a href='x'\\>\\*b\\*\\</a\\> \\| \\$x\\$"
    assert md_text("1. item", line_start=True) == "1\\. item"
    assert md_text("- item", line_start=True) == "\\- item"
    assert md_text("0.810") == "0.810"
    assert md_code("a ``b`` c") == "```a ``b`` c```"
    assert md_code("`x") == "`` `x ``"


def test_log_lines_show_control_characters_as_escapes():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(PrintableFilter())
    logger = logging.getLogger("raysynth.test.hostile")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("class %s skipped", "red\x1b[31mALERT\rover\nforged line")
    finally:
        logger.removeHandler(handler)
    line = stream.getvalue()
    assert line == "class red\\x1b[31mALERT\\rover\\nforged line skipped\n"


# --- paths confined: the tune ledger and the preset name --------------------------------------


def _trial_row(folder: str, acc: float) -> dict:
    return {"trial_id": folder, "dir": folder, "result": {"val_acc": acc, "done": True}}


def _ledger(tune: Path, rows: list[dict]) -> Path:
    tune.mkdir(parents=True, exist_ok=True)
    path = tune / "trials.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_the_ledger_stores_trial_folders_relative_to_the_tune_root(tmp_path):
    """The driver's callback, fed a trial the way Tune does (a stand-in object with the fields
    the callback reads: Tune's Trial needs a running experiment), writes a relative folder."""
    from types import SimpleNamespace

    from raysynth.tune.ledger import ledger_callback, read_ledger

    tune = tmp_path / "run" / "tune"
    tune.mkdir(parents=True)
    trial = SimpleNamespace(
        trial_id="t1", config={"w000": 0.25, "w001": 1.0}, path=str(tune / "search" / "trial_t1")
    )
    ledger_callback(tune / "trials.jsonl", 2).on_trial_result(
        0, [], trial, {"val_acc": 0.75, "val_std": 0.1, "timestamp": 5.0}
    )
    (row,) = read_ledger(tune / "trials.jsonl")
    assert row["dir"] == "search/trial_t1"
    assert row["weights"] == [0.25, 1.0] and row["val_acc"] == 0.75


def test_a_copied_run_directory_restores_results_into_the_copy(tmp_path, caplog):
    import shutil

    from raysynth.tune.ledger import read_ledger, restore_trial_results

    orig = tmp_path / "orig" / "tune"
    (orig / "search" / "t-old").mkdir(parents=True)
    rows = [
        _trial_row("search/t-new", 0.5),  # written relative, as the ledger does now
        _trial_row(str(orig / "search" / "t-old"), 0.6),  # an old absolute entry
    ]
    _ledger(orig, rows)
    copy = tmp_path / "copy" / "tune"
    shutil.copytree(orig, copy)
    before = _files(orig.parent)

    with caplog.at_level(logging.WARNING, logger="raysynth.tune"):
        written = restore_trial_results(read_ledger(copy / "trials.jsonl"), copy)
    assert written == 1
    assert json.loads((copy / "search" / "t-new" / "result.json").read_text())["val_acc"] == 0.5
    assert _files(orig.parent) == before, "nothing written into the original run directory"
    assert not (orig / "search" / "t-old" / "result.json").exists()
    assert "outside this run's tune folder" in caplog.text and "t-old" in caplog.text

    # in the original, the old absolute entry lies inside the current root: still restored
    assert restore_trial_results(read_ledger(orig / "trials.jsonl"), orig) == 2
    assert json.loads((orig / "search" / "t-old" / "result.json").read_text())["val_acc"] == 0.6


def test_a_tampered_ledger_writes_nothing_outside_the_run(tmp_path, caplog):
    from raysynth.tune.ledger import read_ledger, restore_trial_results

    victim = tmp_path / "victim"
    victim.mkdir()
    tune = tmp_path / "run" / "tune"
    (tune / "search").mkdir(parents=True)
    (tune / "search" / "link").symlink_to(victim, target_is_directory=True)
    evil = [
        str(victim),  # absolute path elsewhere
        "../../victim",  # climbs out of the root
        "search/../../../victim",
        "search/link",  # a symlink out
        ".",  # the tune root itself
        "",
    ]
    _ledger(tune, [_trial_row(e, 0.9) for e in evil] + [{"trial_id": "x", "dir": 3, "result": {}}])
    before = _files(tmp_path)
    with caplog.at_level(logging.WARNING, logger="raysynth.tune"):
        assert restore_trial_results(read_ledger(tune / "trials.jsonl"), tune) == 0
    assert _files(tmp_path) == before and list(victim.iterdir()) == []
    assert caplog.text.count("ignoring") == len(evil) + 1


@pytest.mark.parametrize(
    "name", ["../..", "..", ".", "a/b", "a\\b", "/abs", "", "x y", "runs/../x", "na\x1bme", "é"]
)
def test_a_preset_name_that_is_not_one_plain_folder_name_is_refused(name):
    from raysynth.config import build_config, parse_set
    from raysynth.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^preset: .* is not a valid name.*--set preset="):
        build_config("digits", overrides=parse_set([f"preset={name}"]) if name else {"preset": ""})


@pytest.mark.parametrize("name", ["digits", "my-run_2.1", "42"])
def test_plain_preset_names_are_kept(name):
    from raysynth.config import build_config, parse_set

    assert build_config("digits", overrides=parse_set([f"preset={name}"])).preset == name


def test_cli_refuses_a_preset_that_climbs_out_of_runs(tmp_path):
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.run(
        [sys.executable, "-m", "raysynth.cli", "run", "--set", "preset=../..", "--dry-run"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert "raysynth: error: preset: '../..' is not a valid name" in proc.stderr
    assert list(tmp_path.iterdir()) == []
