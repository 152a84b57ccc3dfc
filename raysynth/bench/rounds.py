"""``raysynth bench rounds``: what a synthesis round costs beyond its images — a Ray Data pipeline
per round (``cold``, :func:`raysynth.generate.stage.generate` called once per round, as the
rounds ran before issue #16) against pools started once and fed round after round (``warm``,
:class:`raysynth.generate.warm.WarmGenerate`, what :func:`raysynth.filter.rounds.synthesize`
uses), measured side by side in one run.

Both paths run the same rounds of plan rows (the ``digits`` preset: its generator architecture,
sampling steps, batch size and pools, 8 images for each of 10 classes a round — ``k/2`` of its
``k = 16``) through the same generator and the product's filter stage
(:class:`~raysynth.filter.stage.FilterScorer` on a freshly initialised classifier, as the
``filter`` bench builds it) into the synthetic table. A part's time is its file's modification
time (written under a temporary name, then renamed into place). Per path:

- ``gap_s``: the median over rounds 1.. of the time from a round's last part written to the next
  round's first part written. Nothing runs between the rounds here (the closed loop's
  measurement, the allocation's own work, is left out), so the gap is what a round costs to
  start: its existing-id check and plan, the pipeline or its pools, the models, and the latency
  of its first block through the generator, filter and writer (a floor no start-up removes);
- ``round_s``: the median over rounds of a round's first to last part written (its images
  being made); ``ratio`` = ``gap_s / round_s`` (the issue's target: ≤ 0.1 warm);
- ``first_block_s``: a round's first block's share of ``round_s`` (its rows / the round's: one
  generator batch, :func:`~raysynth.generate.stage.plan_blocks`), the floor of ``gap_s``: a
  round's plan waits for the round before it, so its first images take one batch to make;
- ``wall_s``: the median over rounds of a round's call, start to end (what a round costs the
  loop: a smaller first block would lower ``gap_s`` by moving images from ``round_s`` into its
  place, not by making the round shorter);
- per round: ``start``, ``first``, ``last``, ``end`` (s from the path's start) and images.

``same_images``: both paths wrote the same rows with the same bytes.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from raysynth.bench.fixtures import (
    filter_spec,
    generator_spec,
    plan_rows,
    train_tiny_pixel_model,
    write_classifier,
)
from raysynth.bench.harness import load_average, write_result
from raysynth.bench.synthesis import same_images
from raysynth.config import build_config
from raysynth.filter.stage import FilterScorer
from raysynth.generate.stage import generate, plan_blocks
from raysynth.generate.warm import WarmGenerate
from raysynth.ray_data import PoolStage


def _timed_rounds(run_round: Any, rounds: list[list[dict]], folder: Path) -> list[dict[str, Any]]:
    """Each round's start, first and last part written (the parts' modification times: written
    once, renamed into place) and end, in seconds from the first round's start."""
    t0 = time.time()
    out = []
    for r, rows in enumerate(rounds):
        start = time.time() - t0
        run_round(rows, f"round-{r:03d}")
        parts = sorted(p.stat().st_mtime - t0 for p in (folder / f"round-{r:03d}").glob("*.parquet"))
        out.append({"start": start, "first": parts[0], "last": parts[-1],
                    "end": time.time() - t0, "images": len(rows), "parts": len(parts)})
    return out


def figures(timed: list[dict[str, Any]], block_rows: int) -> dict[str, Any]:
    """``gap_s``, ``round_s``, ``ratio``, ``first_block_s``, ``wall_s`` and the rounds (module
    docstring)."""
    gaps = [b["first"] - a["last"] for a, b in zip(timed, timed[1:])]
    spans = [t["last"] - t["first"] for t in timed]
    gap, span = statistics.median(gaps), statistics.median(spans)
    images = statistics.median(t["images"] for t in timed)
    return {"gap_s": round(gap, 3), "round_s": round(span, 3),
            "ratio": round(gap / span, 3) if span > 0 else None,
            "first_block_s": round(span * block_rows / images, 3),
            "wall_s": round(statistics.median(t["end"] - t["start"] for t in timed), 3),
            "gaps": [round(g, 3) for g in gaps], "rounds": timed}


def run(out: str | None = None, rounds: int = 4, per_class: int = 8) -> dict[str, Any]:
    """Run the bench on the connected Ray instance; print its JSON and write it to ``out``."""
    cfg = build_config(preset="digits", overrides={"synthesis.generator.device": "cpu",
                                                   "filter.device": "cpu"})
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="raysynth-bench-rounds-") as tmp:
        root = Path(tmp)
        spec = generator_spec(cfg, train_tiny_pixel_model(root / "model"))
        stage = PoolStage(FilterScorer, cfg.filter.pool,
                          {"spec": filter_spec(cfg, write_classifier(root / "clf", cfg), "cpu")})
        plans = [plan_rows(cfg, 10 * per_class, r) for r in range(rounds)]
        s = cfg.synthesis
        # warm-up: imports and Ray Data's first execution, on neither path's folder
        generate(plans[0][:s.pool.batch_size], spec, root / "warm-up", s, [stage])
        cold = _timed_rounds(
            lambda rows, name: generate(rows, spec, root / "cold", s, [stage], name), plans,
            root / "cold")
        with WarmGenerate(spec, root / "warm", s, [stage]) as warm_generate:
            warm = _timed_rounds(warm_generate, plans, root / "warm")
        identical = same_images(root / "cold", root / "warm")
    n = len(plans[0])
    block = len(plan_blocks(plans[0], s.pool)[0])
    result = {
        "name": "rounds",
        "cold": figures(cold, block),
        "warm": figures(warm, block),
        "same_images": identical,
        "rounds": rounds,
        "images_per_round": n,
        "block_rows": block,
        "steps": s.generator.num_steps,
        "batch": s.pool.batch_size,
        "generator_actors": s.pool.max_actors,
        "filter_actors": cfg.filter.pool.max_actors,
        "load_avg": {"before": load_before, "after": load_average()},
    }
    write_result(result, out, "rounds")
    return result
