"""`raysynth study allocation` as a user runs it, at a tiny budget: 1 seed, 2 policies, 2 rounds
on 3 long-tailed digit classes — every run's closed loop records its rounds, spends exactly the
budget, and the study writes the issue's allocation.json schema, the table and the figure."""

import json
import subprocess
import sys

import pytest

TINY = ["--set", "budget=smoke", "--set", "data.classes=0,1,2", "--set", "data.k=12",
        "--set", "synthesis.budget=18", "--set", "synthesis.rounds=2",
        "--set", "synthesis.loop.measure_epochs=3", "--set", "end_to_end.epochs=3",
        "--set", "synthesis.generator.num_steps=10",
        "--set", "synthesis.generator.pixel_train_steps=40",
        "--set", "synthesis.generator.pixel_channels=[8,16]",
        "--set", "synthesis.feedback.criterion=none", "--set", "encoder.width=8"]


def test_study_allocation_tiny(tmp_path):
    out = tmp_path / "study"
    cmd = [sys.executable, "-m", "raysynth.cli", "study", "allocation", "--preset", "digits-lt",
           "--policies", "balance", "closed_loop", "--seeds", "1", "--out", str(out), *TINY]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "allocation.json").read_text())
    assert set(summary["policies"]) == {"balance", "closed_loop"}
    for name, p in summary["policies"].items():
        assert set(p) >= {"overall", "few", "generated", "accepted"}
        assert set(p["overall"]) == {"mean", "std"} and 0 <= p["overall"]["mean"] <= 100
        assert p["generated"] == 18  # the same budget, spent exactly (filter off: all accepted)
        records = [json.loads(x) for x in
                   (out / "seed-0" / name / "allocation.jsonl").read_text().splitlines()]
        assert [r["round"] for r in records] == [0, 1, 2] and records[-1]["final"]
        assert [sum(r["counts"]) for r in records[:2]] == [9, 9]
        assert all(r["overall"] is not None for r in records)  # measured on val every round
        html = (out / "seed-0" / name / "report.html").read_text()
        assert "Images allocated per round" in html
    # the pixel model was trained once and copied: same key in both runs
    keys = [sorted(p.name for p in (out / "seed-0" / n / "generator").iterdir()
                   if not p.name.startswith(".")) for n in ("balance", "closed_loop")]
    assert keys[0] == keys[1] and len(keys[0]) == 1
    assert (out / "allocation.png").read_bytes()[:4] == b"\x89PNG"
    md = (out / "allocation.md").read_text()
    assert "| closed_loop |" in md and "| no synthetic images |" in md
    real = json.loads((out / "seed-0" / "balance" / "report.json").read_text())
    real = real["classifier"]["real_only"]["few"]["mean"]
    assert summary["baseline"]["few"]["mean"] == pytest.approx(100 * real)  # the runs' real-only
    assert summary["baseline"]["generated"] == 0
    assert "closed_loop" in done.stdout
