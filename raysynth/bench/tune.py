"""``raysynth bench tune``: parallel Ray Tune + HyperOpt vs the paper's sequential ``gp_minimize``.

Both search the same objective — the one ``raysynth study controlled --classes 0 9 --synthetic
swapped --k 16`` searches: the UniCon protocol at the default budget (200 encoder epochs, 3 × 3
runs, ≈ 5–10 s per evaluation on one core) — for the same number of evaluations, each evaluation
on one core. (A cheaper objective would measure Tune's per-trial overhead, not the search.)
Reported: the wall-time ratio (target ≤ 1/(0.8·c)), both best objectives, and the objective's
run-to-run noise (std of F at one point over seeds).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from raysynth.bench import emit
from raysynth.config.schema import RunConfig
from raysynth.flows.controlled import StudySpec, build_study_config, build_study_data
from raysynth.seeding import stable_seed
from raysynth.train.arrays import ProtocolData
from raysynth.train.protocol import evaluate
from raysynth.tune.gp import search_weights_gp
from raysynth.tune.search import SearchResult, search_weights

OBJECTIVE = {"tune.cpus_per_trial": 1}  # one core per evaluation, as gp_minimize's loop gets


def _evaluate_again(
    val: ProtocolData, cfg: RunConfig, tmp: str, weights: list[float], tag: str
) -> list[float]:
    """The objective at ``weights`` again, with 3 fresh seeds.

    Each best value is the maximum of noisy evaluations (it is biased upward): both best points
    are evaluated again with fresh seeds, and those means are compared."""
    return [
        evaluate(val, "unicon", weights, cfg, stable_seed("noise", s), tmp, f"{tag}{s}").mean
        for s in range(3)
    ]


def _sequential(
    val: ProtocolData, cfg: RunConfig, tmp: str, tuned: SearchResult
) -> tuple[SearchResult, float, list[float], list[float]]:
    """The paper's ``gp_minimize`` on one torch thread (the same one core per evaluation as a
    Tune trial gets), then both best points evaluated again: the GP result, its wall time and
    the re-evaluations of the GP's and of Tune's best points."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same one core per evaluation as a Tune trial gets
    try:
        t0 = time.perf_counter()
        gp = search_weights_gp(val, cfg, Path(tmp) / "gp")
        gp_wall = time.perf_counter() - t0
        noise = _evaluate_again(val, cfg, tmp, gp.best_weights, "g")
        tune_again = _evaluate_again(val, cfg, tmp, tuned.best_weights, "t")
    finally:
        torch.set_num_threads(threads)
    return gp, gp_wall, noise, tune_again


def _within_noise(noise: list[float], tune_again: list[float]) -> bool:
    """The two re-evaluated means differ by at most 2 pooled std (or 1 point)."""
    return bool(
        abs(np.mean(tune_again) - np.mean(noise))
        <= max(2 * float(np.sqrt((np.var(noise) + np.var(tune_again)) / 2)), 0.01)
    )


def run(out: str | None = None, concurrency: int = 2, evals: int = 16) -> dict[str, Any]:
    """Needs a connected Ray instance with at least ``concurrency`` CPUs."""
    spec = StudySpec(("0", "9"), "swapped", 16)
    overrides = {
        **OBJECTIVE,
        "tune.num_samples": evals,
        "tune.n_initial_points": max(evals // 4, 2),
        "tune.max_concurrent": concurrency,
    }
    cfg = build_study_config(spec, overrides)
    val, _ = build_study_data(spec, cfg)
    with tempfile.TemporaryDirectory(prefix="raysynth-bench-tune-") as tmp:
        # Warm-up: imports and the first Ray actor start are not what is being compared.
        evaluate(val, "unicon", [0.5, 0.5], cfg, 0, tmp, "warmup", threads=1)
        t0 = time.perf_counter()
        tuned = search_weights(val, cfg, Path(tmp) / "tune")
        tune_wall = time.perf_counter() - t0
        gp, gp_wall, noise, tune_again = _sequential(val, cfg, tmp, tuned)
    result = {
        "name": "tune",
        "ratio": tune_wall / gp_wall,
        "target_ratio": 1.0 / (0.8 * concurrency),
        "concurrency": concurrency,
        "evaluations": evals,
        "tune_wall_s": tune_wall,
        "gp_wall_s": gp_wall,
        "best_tune": tuned.best_val_acc,
        "best_gp": gp.best_val_acc,
        "best_tune_weights": tuned.best_weights,
        "best_gp_weights": gp.best_weights,
        "noise_std": float(np.std(noise)),
        "noise_values": noise,
        "best_tune_again": float(np.mean(tune_again)),
        "best_gp_again": float(np.mean(noise)),
        "within_noise": _within_noise(noise, tune_again),
        "measures": {
            "within_noise": "the two best points, each evaluated again with 3 fresh seeds, differ "
            "by at most 2 pooled within-point std (or 1 point)",
        },
    }
    return emit(result, out)
