"""Per-class synthetic weights ``w ∈ [0,1]^C`` by parallel Bayesian search (METHODS §1).

Ray Tune + ``HyperOptSearch`` (TPE): ``n_initial_points`` random points, then guided trials, up
to ``num_samples`` in all, ``max_concurrent`` at a time; warm-start points w = 0 and w = 1 go
first. Each trial evaluates the UniCon protocol on the validation split. The search lives in
``<run>/tune/search`` (results, TensorBoard event files, searcher state) and ``resume=True``
continues it: finished trials are kept, unfinished ones are run again.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from raysynth.config.schema import RunConfig
from raysynth.seeding import stable_seed
from raysynth.train.arrays import ProtocolData
from raysynth.train.protocol import evaluate

log = logging.getLogger("raysynth.tune")

METRIC = "val_acc"
EXPERIMENT = "search"


@dataclass
class SearchResult:
    """What the search found; ``history`` lists trials in completion order."""

    best_weights: list[float]
    best_val_acc: float
    best_val_std: float
    trials: int
    concurrency: int
    wall_s: float
    history: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "trials": self.trials,
            "concurrency": self.concurrency,
            "best_val_acc": self.best_val_acc,
            "best_val_std": self.best_val_std,
            "wall_s": self.wall_s,
            "best_so_far": best_so_far([h[METRIC] for h in self.history]),
        }


def best_so_far(values: list[float]) -> list[float]:
    return [float(v) for v in np.maximum.accumulate(values)] if values else []


def weight_keys(num_classes: int) -> list[str]:
    return [f"w{c:03d}" for c in range(num_classes)]


def warm_start_points(num_classes: int) -> list[dict[str, float]]:
    keys = weight_keys(num_classes)
    return [dict.fromkeys(keys, 0.0), dict.fromkeys(keys, 1.0)]


def weights_from(config: dict[str, Any], num_classes: int) -> list[float]:
    return [float(config[k]) for k in weight_keys(num_classes)]


def resolve_concurrency(cfg: RunConfig) -> int:
    """``tune.max_concurrent``, or as many trials as the cluster's CPUs (and GPUs) allow."""
    if cfg.tune.max_concurrent:
        return cfg.tune.max_concurrent
    import ray

    res = ray.cluster_resources()
    n = int(res.get("CPU", 1) // cfg.tune.cpus_per_trial)
    if cfg.tune.gpus_per_trial:
        n = min(n, int(res.get("GPU", 0) // cfg.tune.gpus_per_trial))
    return max(n, 1)


def _trial(config: dict[str, Any], data: ProtocolData, cfg: RunConfig) -> None:
    """One trial: the UniCon protocol on the validation split at the trial's weights."""
    import ray.tune

    weights = weights_from(config, data.num_classes)
    ctx = ray.tune.get_context()
    trial_dir = Path(ctx.get_trial_dir())
    threads = max(int(cfg.tune.cpus_per_trial), 1)
    res = evaluate(
        data, "unicon", weights, cfg, stable_seed(cfg.seed, "search"), trial_dir, "unicon",
        threads=threads,
    )
    ray.tune.report({METRIC: res.mean, "val_std": res.std, "accs": res.accs, "done": True})


def build_tuner(data: ProtocolData, cfg: RunConfig, tune_root: str | Path, resume: bool = False):
    """The Ray Tune ``Tuner`` of the weight search (restored from ``tune_root`` when resuming)."""
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.hyperopt import HyperOptSearch

    trainable = tune.with_resources(
        tune.with_parameters(_trial, data=data, cfg=cfg),
        {"cpu": cfg.tune.cpus_per_trial, "gpu": cfg.tune.gpus_per_trial},
    )
    path = Path(tune_root).resolve() / EXPERIMENT
    if resume and tune.Tuner.can_restore(str(path)):
        log.info("resuming the weight search in %s", path)
        return tune.Tuner.restore(str(path), trainable, resume_unfinished=True, restart_errored=True)
    space = {k: tune.uniform(0.0, 1.0) for k in weight_keys(data.num_classes)}
    searcher = HyperOptSearch(
        metric=METRIC,
        mode="max",
        points_to_evaluate=warm_start_points(data.num_classes) if cfg.tune.warm_start else None,
        n_initial_points=cfg.tune.n_initial_points,
        random_state_seed=stable_seed(cfg.seed, "hyperopt"),
    )
    concurrency = resolve_concurrency(cfg)
    return tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=concurrency),
            num_samples=cfg.tune.num_samples,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=EXPERIMENT,
            storage_path=str(Path(tune_root).resolve()),
            callbacks=[CSVLoggerCallback(), JsonLoggerCallback(), TBXLoggerCallback()],
            failure_config=tune.FailureConfig(max_failures=1),
            verbose=1,
        ),
    )


def search_weights(
    data: ProtocolData, cfg: RunConfig, tune_root: str | Path, resume: bool = False
) -> SearchResult:
    """Run (or resume) the weight search; needs a connected Ray instance."""
    t0 = time.perf_counter()
    tuner = build_tuner(data, cfg, tune_root, resume)
    grid = tuner.fit()
    wall = time.perf_counter() - t0
    rows = []
    for result in grid:
        if result.error is not None or not result.metrics or METRIC not in result.metrics:
            continue
        rows.append(
            {
                "weights": weights_from(result.config, data.num_classes),
                METRIC: float(result.metrics[METRIC]),
                "val_std": float(result.metrics["val_std"]),
                "finished_at": float(result.metrics.get("timestamp", 0)),
                "trial_id": result.metrics.get("trial_id"),
            }
        )
    if not rows:
        errors = [str(r.error) for r in grid if r.error is not None][:3]
        raise RuntimeError(f"no trial of the weight search finished; first errors: {errors}")
    rows.sort(key=lambda r: (r["finished_at"], r["trial_id"] or ""))
    best = max(rows, key=lambda r: r[METRIC])
    return SearchResult(
        best_weights=best["weights"],
        best_val_acc=best[METRIC],
        best_val_std=best["val_std"],
        trials=len(rows),
        concurrency=resolve_concurrency(cfg),
        wall_s=wall,
        history=rows,
    )
