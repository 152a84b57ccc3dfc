"""The guidance bench at a small size: both models (the pixel model and a small SD built from
config, saved and loaded back) run through their product paths, every figure is a positive time
and the JSON written is the result returned."""

from __future__ import annotations

import json

import pytest

from raysynth.bench.guidance import run


def _positive(x) -> bool:
    return isinstance(x, float) and x > 0


@pytest.mark.slow
def test_bench_guidance_small(tmp_path):
    out = tmp_path / "bench-guidance.json"
    r = run(out=str(out), batch=4, num_steps=4, every=2, repeats=1, latent_batch=2)
    assert json.loads(out.read_text()) == r
    for key in ("ratio", "ratio_through_model", "guided_s", "unguided_s", "latent_ratio"):
        assert _positive(r[key]), key
    assert r["guided_steps"] == 2  # steps 0 and 2 of 4
    lat = r["latent"]
    assert lat["ratio"] == r["latent_ratio"]
    assert lat["batch"] == 2 and lat["num_steps"] == 4 and lat["every"] == 2
    assert _positive(lat["guided_s"]) and _positive(lat["unguided_s"])

