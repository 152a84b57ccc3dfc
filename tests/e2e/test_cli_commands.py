"""The job commands through the real CLI on one smoke run directory: `raysynth tune`, `train`,
`report`, `bench loss`, `run --list-presets`; and the fixed-weights and gp paths of the search
inside the pipeline. The run is made once per module (a shrunk `--set budget=smoke` digits run,
about a minute) and copied for each test that touches it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import raysynth

ARGS = ["--set", "budget=smoke", "--set", "data.classes=0,1,2", "--set", "data.k=8",
        "--set", "synthesis.generator.pixel_train_steps=40",
        "--set", "synthesis.generator.pixel_channels=[8,16]",
        "--set", "synthesis.generator.num_steps=8", "--set", "filter.enabled=false",
        "--set", "tune.num_samples=2", "--set", "tune.max_concurrent=2",
        "--set", "encoder.epochs=4", "--set", "encoder.width=8", "--set", "classifier.epochs=10"]


def raysynth_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raysynth.cli", *args], capture_output=True,
                          text=True, timeout=900, cwd=cwd)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "run"
    proc = raysynth_cli("run", *ARGS, "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture
def run_copy(smoke_run, tmp_path) -> Path:
    return Path(shutil.copytree(smoke_run, tmp_path / "run"))


def _stamps(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_list_presets_prints_the_shipped_presets_and_writes_nothing(tmp_path):
    proc = raysynth_cli("run", "--list-presets", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    shipped = sorted(p.stem for p in (Path(raysynth.__file__).parent / "presets").glob("*.yaml"))
    assert proc.stdout.split() == shipped and "digits" in shipped
    assert list(tmp_path.iterdir()) == []  # no run directory, no runs/


def test_report_rebuilds_report_md_and_html_from_report_json(run_copy):
    md, html = (run_copy / "report.md").read_text(), (run_copy / "report.html").read_text()
    (run_copy / "report.md").unlink()
    (run_copy / "report.html").unlink()
    proc = raysynth_cli("report", str(run_copy))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"wrote {run_copy / 'report.md'} and {run_copy / 'report.html'}" in proc.stdout
    # the same report but for its timings (the rebuild adds its own `report` stage time)
    def untimed(text: str) -> list[str]:
        return [ln for ln in text.splitlines() if not re.search(r"\d (s|min)\b", ln)]

    assert untimed((run_copy / "report.md").read_text()) == untimed(md)
    new_html = (run_copy / "report.html").read_text()
    assert new_html.count("<img") == html.count("<img") > 0
    assert untimed(new_html)[:5] == untimed(html)[:5]
    assert "UniCon" in md and "## Real images per class" in md


def test_report_of_a_folder_without_report_json_is_a_clear_error(tmp_path):
    proc = raysynth_cli("report", str(tmp_path))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "raysynth: error:" in proc.stderr and "report.json is missing" in proc.stderr


def test_tune_on_a_finished_run_prints_its_search_and_reruns_no_trial(run_copy):
    summary = json.loads((run_copy / "tune" / "summary.json").read_text())
    before = _stamps(run_copy / "tune")
    proc = raysynth_cli("tune", "--out", str(run_copy), *ARGS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = json.loads(proc.stdout)
    assert printed["tune"]["trials"] == summary["trials"] == 2
    assert printed["tune"]["best_weights"] == summary["best_weights"]
    assert _stamps(run_copy / "tune") == before


def test_tune_and_train_need_an_existing_run(tmp_path):
    for command in ("tune", "train"):
        proc = raysynth_cli(command, "--out", str(tmp_path / "none"), *ARGS)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert "holds no run" in proc.stderr and "raysynth run" in proc.stderr
        assert not (tmp_path / "none").exists()


def test_train_on_a_finished_run_reports_the_same_results_without_retraining(run_copy):
    report = json.loads((run_copy / "report.json").read_text())
    before = _stamps(run_copy / "train")
    proc = raysynth_cli("train", "--out", str(run_copy), *ARGS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = json.loads(proc.stdout)
    assert printed["accuracy"] == report["accuracy"] and printed["weights"] == report["weights"]
    assert json.loads((run_copy / "report.json").read_text())["accuracy"] == report["accuracy"]
    assert _stamps(run_copy / "train") == before  # every final run was reused


def test_bench_loss_writes_and_prints_its_json(tmp_path):
    out = tmp_path / "loss.json"
    proc = raysynth_cli("bench", "loss", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert json.loads(proc.stdout) == result
    assert result["name"] == "loss" and result["max_abs_diff"] <= 1e-5
    assert result["unicon_ms"] > 0 and result["ratio"] == pytest.approx(
        result["unicon_ms"] / result["supcon_ms"])


# the search stage's other paths, inside the pipeline -------------------------------------------


def _overrides(**extra):
    from raysynth.config import parse_set

    return {**parse_set(ARGS[1::2]), **extra}


def test_fixed_weights_skip_the_search_and_reach_the_final_training(ray_local, tmp_path):
    from raysynth.config import build_config
    from raysynth.flows.run import run_flow

    cfg = build_config("digits", overrides=_overrides(**{"tune.weights": [0.25, 0.5, 1.0]}))
    report = run_flow(cfg, tmp_path / "run")
    assert report["weights"] == {"0": 0.25, "1": 0.5, "2": 1.0}
    assert report["tune"]["trials"] == 0
    summary = json.loads((tmp_path / "run" / "tune" / "summary.json").read_text())
    assert summary["best_weights"] == [0.25, 0.5, 1.0] and summary["history"] == []
    assert not (tmp_path / "run" / "tune" / "search").exists()  # no Tune trial ran
    assert report["accuracy"]["unicon"]["runs"] == 2


def test_gp_searcher_runs_in_the_pipeline(ray_local, tmp_path):
    from raysynth.config import build_config
    from raysynth.flows.run import run_flow

    cfg = build_config("digits", overrides=_overrides(**{
        "tune.searcher": "gp", "tune.num_samples": 4, "tune.n_initial_points": 2}))
    result = run_flow(cfg, tmp_path / "run", until="search")["tune"]
    assert result["trials"] == 4 and len(result["history"]) == 4
    assert [h["weights"] for h in result["history"][:2]] == [[0.0] * 3, [1.0] * 3]  # warm start
    best = max(result["history"], key=lambda h: h["val_acc"])
    assert result["best_val_acc"] == best["val_acc"]
    assert not (tmp_path / "run" / "tune" / "search").exists()  # not Ray Tune's HyperOpt
