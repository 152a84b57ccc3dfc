"""`raysynth run` as a user runs it, at the smoke budget (DESIGN §4 contract)."""

import json
import subprocess
import sys


def _run(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "raysynth.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_digits_smoke_report_contract(tmp_path):
    out = tmp_path / "digits"
    proc = _run("run", "--set", "budget=smoke", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["preset"] == "digits" and report["classes"] == [str(d) for d in range(10)]
    assert report["split"] == "test"
    assert set(report["weights"]) == set(report["classes"])
    assert all(0.0 <= w <= 1.0 for w in report["weights"].values())
    for m in ("supcon_real", "supcon_mixed", "unicon"):
        acc = report["accuracy"][m]
        assert acc["runs"] == 2 and 0.5 < acc["mean"] <= 1.0 and acc["std"] >= 0
    syn = report["synthesis"]
    assert syn["planned"] == 80 and syn["accepted"] + syn["rejected"] == syn["generated"]
    assert set(syn["per_class"]) == set(report["classes"])
    assert {"accepted", "rejected", "threshold"} <= set(syn["per_class"]["0"])
    assert report["tune"]["trials"] == 4 and report["tune"]["concurrency"] >= 1
    assert report["timings"]["total_s"] > 0
    for name in ("config.yaml", "meta.json", "report.md", "report.html", "real/train.parquet"):
        assert (out / name).is_file(), name
    assert any((out / "synthetic").rglob("*.parquet")) and any((out / "generator").iterdir())
    assert "[3/6] synthesis" in proc.stderr  # progress is visible per stage


SHRUNK = ["--set", "synthesis.generator.pixel_train_steps=40",
          "--set", "synthesis.generator.pixel_channels=[8,16]",
          "--set", "synthesis.generator.num_steps=8", "--set", "synthesis.feedback.every=4",
          "--set", "encoder.arch=small_cnn", "--set", "encoder.width=8",
          "--set", "end_to_end.epochs=2"]


def test_digits_lt_smoke_reports_groups(tmp_path):
    out = tmp_path / "lt"
    # the smoke budget shrunk where the groups and the top-up do not depend on it (the data, the
    # quota and the flow are the preset's): a smaller, briefer pixel model and classifier
    proc = _run("run", "--preset", "digits-lt", "--set", "budget=smoke", *SHRUNK, "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["flow"] == "classifier"
    for variant in ("real_only", "with_synthetic"):
        assert set(report["classifier"][variant]) >= {"overall", "many", "medium", "few"}
    per_class = report["synthesis"]["per_class"]
    assert per_class["0"]["quota"] == 0 and per_class["9"]["quota"] > 0  # top-up to balance
