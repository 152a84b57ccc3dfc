"""The paper's sequential search (scikit-optimize ``gp_minimize``, ``gp_hedge``, ``lbfgs``),
kept as the baseline the parallel Tune search is benchmarked against (``raysynth bench tune``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from raysynth.config.schema import RunConfig
from raysynth.seeding import stable_seed
from raysynth.train.arrays import ProtocolData
from raysynth.train.protocol import evaluate
from raysynth.tune.search import SearchResult, pick_best
from raysynth.tune.tuner import METRIC


def gp_search(
    objective: Callable[[list[float]], float],
    num_classes: int,
    num_samples: int,
    n_initial_points: int,
    seed: int,
    warm_start: bool = True,
) -> SearchResult:
    """Maximise ``objective(w)`` over ``[0,1]^C`` with ``gp_minimize`` (paper 000 §3.3)."""
    from skopt import gp_minimize
    from skopt.space import Real

    history: list[dict] = []

    def negative(w: list[float]) -> float:
        value = float(objective([float(x) for x in w]))
        history.append({"weights": [float(x) for x in w], METRIC: value, "val_std": 0.0})
        return -value

    x0 = [[0.0] * num_classes, [1.0] * num_classes] if warm_start else None
    t0 = time.perf_counter()
    gp_minimize(
        negative,
        [Real(0.0, 1.0) for _ in range(num_classes)],
        n_calls=num_samples,
        n_initial_points=n_initial_points,
        acq_func="gp_hedge",
        acq_optimizer="lbfgs",
        x0=x0,
        random_state=seed,
    )
    wall = time.perf_counter() - t0
    return SearchResult.from_rows(history, 1, wall)


def search_weights_gp(data: ProtocolData, cfg: RunConfig, storage: str | Path) -> SearchResult:
    """The weight search of :func:`raysynth.tune.search.search_weights`, run sequentially."""
    seed = stable_seed(cfg.seed, "search")
    calls = {"n": 0}
    stds: list[float] = []
    nlls: list[float] = []

    def objective(w: list[float]) -> float:
        calls["n"] += 1
        res = evaluate(data, "unicon", w, cfg, seed, storage, f"gp-{calls['n']:04d}")
        stds.append(res.std)
        nlls.append(res.nll)
        return res.mean

    result = gp_search(
        objective,
        data.num_classes,
        cfg.tune.num_samples,
        cfg.tune.n_initial_points,
        stable_seed(cfg.seed, "gp"),
        cfg.tune.warm_start,
    )
    for h, s, nll in zip(result.history, stds, nlls):
        h["val_std"], h["val_nll"] = s, nll
    best = pick_best(result.history)
    result.best_weights, result.best_val_acc = best["weights"], best[METRIC]
    result.best_val_std = best["val_std"]
    return result
