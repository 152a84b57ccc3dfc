"""The synthesis, memory and filter benches at tiny sizes: their JSON and that the images exist.

Timing targets are not asserted (a shared machine's timings are noise); the values must be
finite and positive and every requested image must have been written.
"""

import json
import math
import os

import pytest

from raysynth.bench import filter as bench_filter
from raysynth.bench import memory as bench_memory
from raysynth.bench import synthesis as bench_synthesis


def _positive(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def test_steady_rate_is_the_slope_of_images_against_time():
    one_actor = [(10.0 + i, 4) for i in range(5)]  # a batch of 4 every second
    assert bench_synthesis.steady_rate(one_actor) == pytest.approx(4.0)
    two_actors = [(10.0 + i // 2, 4) for i in range(8)]  # batches finishing in pairs
    assert bench_synthesis.steady_rate(two_actors) == pytest.approx(8.0)
    assert math.isnan(bench_synthesis.steady_rate(one_actor[:1]))


@pytest.mark.slow
def test_synthesis_bench(ray_local, tmp_path):
    out = tmp_path / "bench-synthesis.json"
    r = bench_synthesis.run(out=str(out), images=8, batch=4, steps=1, repeats=1)
    assert json.loads(out.read_text()) == r
    keys = ("ratio", "ratio_end_to_end", "ratio_wide_actor", "scaling", "scaling_end_to_end")
    for key in (*keys, "gflop_per_image"):
        assert _positive(r[key]), key
    for path in ("plain", "pool", "wide_actor", "one_actor"):
        assert _positive(r["images_per_s"][path]["steady"]), path
        assert _positive(r["images_per_s"][path]["end_to_end"]), path
    assert r["pool_actors"] == 2  # at the same total cores as plain: one actor per core
    assert all(len(r["per_repeat"][k]) == 1 for k in ("ratio", "ratio_wide_actor", "scaling"))
    assert r["rows_written"] == 8  # every run wrote every image
    assert r["identical_images"] is True  # same rows → same bytes, with or without Ray
    if "OMP_NUM_THREADS" not in os.environ:  # Ray gives an actor of 2 CPUs 2 torch threads
        assert r["actor_threads"] == r["plain_threads"] == 2
    assert r["flop_fraction"] is None  # CPU


@pytest.mark.slow
def test_memory_bench(tmp_path):
    r = bench_memory.run(out=str(tmp_path), sizes=(64, 128), batch=32, steps=1)
    assert json.loads((tmp_path / "bench-memory.json").read_text()) == r
    assert math.isfinite(r["growth"]) and r["growth"] > -1
    assert r["rows_written"] == {"64": 64, "128": 128}
    for n in ("64", "128"):
        assert _positive(r["rss_mb"][n]) and _positive(r["wall_s"][n])
        assert r["rss_mb"][n] >= r["rss_before_generate_mb"][n]


@pytest.mark.slow
def test_filter_bench(ray_local, tmp_path):
    r = bench_filter.run(
        out=str(tmp_path / "f.json"),
        images=16,
        batch=8,
        batches=3,
        filter_batch=4,
        steps=1,
        repeats=1,
    )
    keys = ("ratio", "ratio_end_to_end", "ratio_product_batch", "ratio_wide_actor", "overlap",
            "overlap_end_to_end")
    for key in keys:
        assert _positive(r[key]), key
    for path in ("plain", "ray", "ray_wide_actor", "plain_product_batch", "ray_product_batch"):
        assert _positive(r["images_per_s"][path]["steady"]), path
    for stage in ("generate", "filter", "pipeline"):
        assert _positive(r["stages"]["images_per_s"][stage]["steady"]), stage
        assert _positive(r["stages"]["wall_s"][stage]), stage
    assert all(_positive(v) for v in r["wall_s"].values())
    # generate, filter, pipeline: every image; filter alone: 3 batches of 8 rows
    assert r["rows_written"] == {"filter_alone": 24, "generate_filter": 16}
    assert 0 <= r["accepted"] <= 16
