"""The main job's stages on tiny settings: filter rounds, resume after synthesis."""

import json

import numpy as np
import pyarrow.compute as pc

from raysynth import columns as col
from raysynth.config import build_config
from raysynth.flows.run import run_flow
from raysynth.generate.table import read_table

TINY = {
    "budget": "smoke",
    "data.classes": ["0", "1", "7"],
    "data.k": 6,
    "synthesis.quota": "fixed",
    "synthesis.per_class": 4,
    "synthesis.pool.batch_size": 4,
    "synthesis.generator.pixel_train_steps": 60,
    "synthesis.generator.pixel_channels": [8, 16],
    "synthesis.generator.num_steps": 8,
    "filter.max_rounds": 6,
    "encoder.width": 8,
    "end_to_end.epochs": 5,
}


def test_filter_rounds_regenerate_rejected_rows_with_new_seeds(ray_local, tmp_path):
    cfg = build_config("digits", overrides=TINY)
    out = tmp_path / "run"
    result = run_flow(cfg, out, until="synthesis")["synthesis"]
    table = read_table(out / "synthetic", [col.LABEL, col.ROUND, col.SEED, col.ACCEPTED,
                                           col.REAL_COS, "threshold", col.IMAGE])
    assert table.num_rows == result["generated"] == result["accepted"] + result["rejected"]
    accepted = np.asarray(table[col.ACCEPTED].to_pylist())
    cos = np.asarray(table[col.REAL_COS].to_pylist())
    tau = np.asarray(table["threshold"].to_pylist())
    np.testing.assert_array_equal(accepted, cos > tau)  # the filter's rule, row by row
    seeds = table[col.SEED].to_pylist()
    assert len(set(seeds)) == len(seeds)  # every regeneration got a new seed
    images = table[col.IMAGE].to_pylist()  # ... that the generator used: no image comes twice
    assert None not in images and len(set(images)) == len(images)
    for pc_ in result["per_class"].values():
        assert pc_["accepted"] + pc_["unfilled"] == 4  # the quota is met unless unfilled
        assert pc_["accepted"] <= 4
    rounds = table[col.ROUND].to_pylist()
    # this tiny, barely trained generator always has rows rejected in round 0, so the rounds
    # below are exercised, not skipped
    assert result["rejected"] > 0 and max(rounds) >= 1  # rejected rows were re-planned
    # round r > 0 makes exactly the deficit left by rounds < r
    for r in range(1, max(rounds) + 1):
        before = pc.and_(pc.less(table[col.ROUND], r), table[col.ACCEPTED])
        acc_before = np.bincount(np.asarray(table.filter(before)[col.LABEL]), minlength=3)
        made = np.bincount(np.asarray(table.filter(pc.equal(table[col.ROUND], r))[col.LABEL]),
                           minlength=3)
        np.testing.assert_array_equal(made, np.maximum(4 - acc_before, 0))


def test_run_resumes_after_synthesis_without_regenerating(ray_local, tmp_path):
    cfg = build_config("digits", overrides={**TINY, "filter.max_rounds": 1})
    out = tmp_path / "run"
    run_flow(cfg, out, until="synthesis")
    files = {p: p.stat().st_mtime_ns for p in (out / "synthetic").rglob("*.parquet")}
    report = run_flow(cfg, out, resume=True)
    assert {p: p.stat().st_mtime_ns for p in (out / "synthetic").rglob("*.parquet")} == files
    assert report["tune"]["trials"] == 4
    assert set(report["accuracy"]) == {"supcon_real", "supcon_mixed", "unicon"}
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["synthesis"] == report["synthesis"]
    assert (out / "report.html").is_file() and (out / "report.md").is_file()


def test_air_selection_picks_the_most_confident_accepted_image(ray_local, tmp_path):
    # a fixed threshold between the cosines of this tiny run's round-0 images, so that a class
    # has several accepted images of different confidence and a rejected one more confident
    # than all of them (checked below): picking the least confident image, or any image
    # regardless of the filter, chooses another row
    over = {**TINY, "filter.max_rounds": 1, "filter.threshold": "fixed",
            "filter.fixed_threshold": 0.9955}
    cfg = build_config("digits", overrides=over)
    out = tmp_path / "run"
    result = run_flow(cfg, out, until="synthesis")["synthesis"]
    table = read_table(out / "synthetic", [col.SAMPLE_ID, col.LABEL, col.ACCEPTED, "own_prob"])
    every = table.to_pylist()
    assert all(0.0 <= r["own_prob"] <= 1.0 for r in every)
    rows = [r for r in every if r[col.ACCEPTED]]
    assert set(result["representative"]) == {
        name for c, name in enumerate(["0", "1", "7"]) if any(r[col.LABEL] == c for r in rows)
    }
    discriminating = 0
    for c, name in enumerate(["0", "1", "7"]):
        mine = [r["own_prob"] for r in rows if r[col.LABEL] == c]
        rejected = [r["own_prob"] for r in every if r[col.LABEL] == c and not r[col.ACCEPTED]]
        if not mine:  # covered by the set equality above
            continue
        best = max((r for r in rows if r[col.LABEL] == c), key=lambda r: r["own_prob"])
        assert result["representative"][name] == best[col.SAMPLE_ID]
        discriminating += min(mine) < max(mine) < max(rejected, default=0.0)
    assert discriminating, "no class tells the most confident accepted image from the others"
