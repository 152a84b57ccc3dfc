"""The one Ray Tune builder: a ``Tuner`` with a searcher behind a concurrency limit, resources
per trial, loggers (CSV, JSON, TensorBoard) and storage in the run directory — used by the weight
search and by AiR's (λ, β) search."""

from __future__ import annotations

import logging
from typing import Any

from raysynth.config.schema import RunConfig
from raysynth.seeding import stable_seed
from raysynth.storage import AnyPath, local_or_remote, ray_storage

log = logging.getLogger("raysynth.tune")

METRIC = "val_acc"


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


def make_tuner(
    trainable: Any,
    cfg: RunConfig,
    root: AnyPath,
    name: str,
    searcher: Any,
    num_samples: int,
    param_space: dict[str, Any] | None = None,
    first: list[Any] | None = None,
    last: list[Any] | None = None,
):
    """A ``Tuner`` running ``trainable`` with ``tune.cpus_per_trial`` / ``gpus_per_trial``,
    ``searcher`` limited to the resolved concurrency, ``num_samples`` trials, in ``root/name``;
    callbacks ``first`` run before the loggers and ``last`` after them."""
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback
    from ray.tune.search import ConcurrencyLimiter

    trainable = tune.with_resources(
        trainable, {"cpu": cfg.tune.cpus_per_trial, "gpu": cfg.tune.gpus_per_trial}
    )
    loggers = [CSVLoggerCallback(), JsonLoggerCallback(), TBXLoggerCallback()]
    storage, storage_fs = ray_storage(root)
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=resolve_concurrency(cfg)),
            num_samples=num_samples,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage,  # the run directory's location, local or s3://…
            storage_filesystem=storage_fs,
            callbacks=[*(first or []), *loggers, *(last or [])],
            failure_config=tune.FailureConfig(max_failures=1),
            verbose=1,
        ),
    )


def build_search_tuner(
    trainable: Any,
    space: dict[str, Any],
    cfg: RunConfig,
    tune_root: str | AnyPath,
    *,
    points: list[dict[str, float]] | None = None,
    metric: str = METRIC,
    name: str = "search",
    resume: bool = False,
):
    """A Ray Tune ``Tuner`` maximising ``metric`` over ``space`` with HyperOpt (TPE), run with the
    settings of ``cfg.tune`` (samples, random points, concurrency, resources per trial) and the
    searcher seeded from ``cfg.seed``; ``points`` are evaluated first. It lives in
    ``tune_root/name`` and is restored from there when ``resume`` and a previous run exists.
    """
    from ray import tune
    from ray.tune.search.hyperopt import HyperOptSearch

    root = local_or_remote(tune_root)
    path, fs = ray_storage(root / name)
    if resume and tune.Tuner.can_restore(path, storage_filesystem=fs):
        log.info("resuming the search in %s", root / name)
        trainable = tune.with_resources(
            trainable, {"cpu": cfg.tune.cpus_per_trial, "gpu": cfg.tune.gpus_per_trial}
        )
        return tune.Tuner.restore(path, trainable, resume_unfinished=True, restart_errored=True,
                                  storage_filesystem=fs)
    searcher = HyperOptSearch(
        metric=metric,
        mode="max",
        points_to_evaluate=points or None,
        n_initial_points=cfg.tune.n_initial_points,
        random_state_seed=stable_seed(cfg.seed, "hyperopt"),
    )
    return make_tuner(trainable, cfg, root, name, searcher, cfg.tune.num_samples, space)
