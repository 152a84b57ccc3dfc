"""The synthesis, memory and filter benches at tiny sizes: their JSON and that the images exist.

Timing targets are not asserted (a shared machine's timings are noise); the values must be
finite and positive and every requested image must have been written.
"""

import json
import math
import os

import pytest

from raysynth.bench import filter as bench_filter
from raysynth.bench import harness as bench_harness
from raysynth.bench import memory as bench_memory
from raysynth.bench import synthesis as bench_synthesis


def _positive(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def test_steady_rate_is_the_slope_of_images_against_time():
    one_actor = [(10.0 + i, 4, 0) for i in range(5)]  # a batch of 4 every second
    assert bench_harness.steady_rate(one_actor) == pytest.approx(4.0)
    two_actors = [(10.0 + i // 2, 4, 0) for i in range(8)]  # batches finishing in pairs
    assert bench_harness.steady_rate(two_actors) == pytest.approx(8.0)
    assert math.isnan(bench_harness.steady_rate(one_actor[:1]))


def test_steady_rate_of_a_pool_counts_only_while_every_actor_runs():
    # actor 1 makes a batch of 4 every second from t = 0; actor 2 starts late (t = 5) and both
    # run until t = 15: 8 images/s while both run, which the whole span's slope understates
    early = [(float(t), 4, 1) for t in range(16)]
    late = [(float(t) + 0.5, 4, 2) for t in range(5, 16)]
    stamps = sorted(early + late)
    assert bench_harness.steady_rate(stamps) == pytest.approx(8.0, rel=0.02)
    assert bench_harness.all_running(stamps)[0] == (5.5, 4, 2)
    assert bench_harness.all_running(stamps)[-1] == (15.0, 4, 1)
    # one source, or a window too short for a slope (each actor one batch): every stamp counts
    assert bench_harness.all_running(early) == early
    short = [(0.0, 4, 1), (1.0, 4, 1), (2.0, 4, 1), (2.5, 4, 2)]
    assert bench_harness.all_running(short) == short


def test_stamps_carry_the_process_that_took_them(tmp_path):
    path = tmp_path / "s.stamps"
    bench_harness.stamp(path, 4)
    bench_harness.stamp(path, 2)
    (t1, n1, pid1), (t2, n2, pid2) = bench_harness.read_stamps(path)
    assert (n1, n2) == (4, 2) and pid1 == pid2 == os.getpid() and t1 <= t2
    path.write_text("12.5 8\n")  # a stamp file without sources reads as one source
    assert bench_harness.read_stamps(path) == [(12.5, 8, 0)]


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
    # growth is peak RSS at the largest N over the smallest, minus one: the driver streams, so
    # doubling N must not grow its peak memory by more than a quarter (target < 0.10)
    assert r["growth"] == pytest.approx(r["rss_mb"]["128"] / r["rss_mb"]["64"] - 1)
    assert r["growth"] < 0.25, r
    assert r["rows_written"] == {"64": 64, "128": 128}
    for n in ("64", "128"):
        assert _positive(r["rss_mb"][n]) and _positive(r["wall_s"][n])
        assert r["rss_mb"][n] >= r["rss_before_generate_mb"][n]
        # rss_mb is ru_maxrss, the high-water mark of the RSS that psutil sampled during generate:
        # a peak in the wrong unit or taken before generate falls below the samples (1% for the
        # kernel's lazily synced RSS counters)
        assert 0 < r["rss_sampled_mb"][n] <= r["rss_mb"][n] * 1.01, r


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
