"""Per-class synthetic weights ``w ∈ [0,1]^C`` by parallel Bayesian search (METHODS §1).

Ray Tune + ``HyperOptSearch`` (TPE): ``n_initial_points`` random points, then guided trials, up
to ``num_samples`` in all, ``max_concurrent`` at a time; warm-start points w = 0 and w = 1 go
first. Each trial evaluates the UniCon protocol on the validation split. The search lives in
``<run>/tune/search`` (results, TensorBoard event files, searcher state).

What is done is recorded in ``<run>/tune/trials.jsonl``: the driver appends (and fsyncs) each
trial's result the moment it receives it. Tune's own experiment state is not used for that: Tune
stages it on the driver's local disk and copies it into the run directory only every ≥ 10 s, so a
driver killed in between would lose — and on ``Tuner.restore`` run again — trials that had
finished. ``resume=True`` reads the ledger instead: finished trials are kept (and told to a new
searcher, so it neither repeats nor forgets them), only the remaining ``num_samples - done``
trials run; a trial that was running when the driver died is the one unit done again. Each
finished trial's folder is also copied into the run directory as soon as its loggers close it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
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
LEDGER = "trials.jsonl"


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


def pick_best(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The trial with the highest validation accuracy; among equal accuracies (common when the
    task saturates: 100% at many weights) the one with the lowest validation cross-entropy, then
    the earliest. Without this, a tie went to whichever tied trial finished first — usually the
    warm-start point w = 0 — whatever the weights did to the classifiers' confidence."""

    def nll(row: dict[str, Any]) -> float:
        v = float(row.get("val_nll", float("nan")))
        return v if np.isfinite(v) else float("inf")

    # accuracies equal up to float rounding (the same counts summed in another order) tie
    return min(enumerate(rows), key=lambda ir: (-round(ir[1][METRIC], 9), nll(ir[1]), ir[0]))[1]


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
    ray.tune.report(
        {METRIC: res.mean, "val_std": res.std, "val_nll": res.nll, "accs": res.accs, "done": True}
    )


def build_search_tuner(
    trainable: Any,
    space: dict[str, Any],
    cfg: RunConfig,
    tune_root: str | Path,
    *,
    points: list[dict[str, float]] | None = None,
    metric: str = METRIC,
    name: str = EXPERIMENT,
    resume: bool = False,
):
    """A Ray Tune ``Tuner`` maximising ``metric`` over ``space`` with HyperOpt (TPE), run with the
    settings of ``cfg.tune`` (samples, random points, concurrency, resources per trial) and the
    searcher seeded from ``cfg.seed``; ``points`` are evaluated first. It lives in
    ``tune_root/name`` and is restored from there when ``resume`` and a previous run exists.
    """
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.hyperopt import HyperOptSearch

    trainable = tune.with_resources(
        trainable, {"cpu": cfg.tune.cpus_per_trial, "gpu": cfg.tune.gpus_per_trial}
    )
    path = Path(tune_root).resolve() / name
    if resume and tune.Tuner.can_restore(str(path)):
        log.info("resuming the search in %s", path)
        return tune.Tuner.restore(str(path), trainable, resume_unfinished=True, restart_errored=True)
    searcher = HyperOptSearch(
        metric=metric,
        mode="max",
        points_to_evaluate=points or None,
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
            name=name,
            storage_path=str(Path(tune_root).resolve()),
            callbacks=[CSVLoggerCallback(), JsonLoggerCallback(), TBXLoggerCallback()],
            failure_config=tune.FailureConfig(max_failures=1),
            verbose=1,
        ),
    )


def read_ledger(path: str | Path) -> list[dict[str, Any]]:
    """The finished trials recorded in ``path``, in completion order (a line torn by a kill while
    it was being written is ignored; a trial recorded twice counts once)."""
    path = Path(path)
    if not path.is_file():
        return []
    rows, seen = [], set()
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("trial_id") not in seen:
            seen.add(row.get("trial_id"))
            rows.append(row)
    return rows


def _ledger_callback(path: Path, num_classes: int):
    from ray.tune import Callback

    class TrialLedger(Callback):
        """Appends each trial's result to the ledger when the driver receives it."""

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if METRIC not in result:
                return
            row = {
                "trial_id": trial.trial_id,
                "weights": weights_from(trial.config, num_classes),
                METRIC: float(result[METRIC]),
                "val_std": float(result["val_std"]),
                "val_nll": float(result.get("val_nll", float("nan"))),
                "finished_at": float(result.get("timestamp", time.time())),
                # the trial's folder in the run directory and its result: a driver killed after
                # this line and before the logs were copied leaves the folder to restore
                "dir": str(trial.path),
                "result": json.loads(json.dumps(result, default=str)),
            }
            with open(path, "a") as f:
                f.write(json.dumps(row) + "\n")
                f.flush()
                os.fsync(f.fileno())

    return TrialLedger()


def _has_result(path: Path) -> bool:
    """``path`` (a trial's ``result.json``) ends in a whole result line with the metric."""
    try:
        last = path.read_text().strip().splitlines()[-1]
        return METRIC in json.loads(last)
    except (OSError, IndexError, json.JSONDecodeError):
        return False


def restore_trial_results(rows: list[dict[str, Any]]) -> int:
    """Write ``result.json`` from the ledger for every recorded trial whose folder in the run
    directory lacks it (the driver was killed between the ledger line and the copy of the
    trial's logs, :func:`_trial_logs_callback`); returns how many were written."""
    written = 0
    for row in rows:
        if "dir" not in row or "result" not in row:
            continue
        dest = Path(row["dir"]) / "result.json"
        if not _has_result(dest):
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(json.dumps(row["result"]) + "\n")
            written += 1
    return written


def _trial_logs_callback():
    from ray.tune import Callback

    class TrialLogs(Callback):
        """Copies a trial's folder (result.json, progress.csv, TensorBoard events) from the
        driver's staging dir into the run directory at once: when its result has been logged,
        and again when the loggers have closed its files."""

        def _copy(self, trial) -> None:
            local, dest = Path(trial.local_path), Path(trial.path)
            if local.is_dir() and local != dest:
                shutil.copytree(local, dest, dirs_exist_ok=True)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if METRIC in result:
                self._copy(trial)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._copy(trial)

    return TrialLogs()


def build_searcher(cfg: RunConfig, num_classes: int, done: list[dict[str, Any]]):
    """``HyperOptSearch`` over ``[0,1]^C``, told the results of the ``done`` trials.

    A fresh search starts with the warm-start points. A resumed one replays the finished trials
    through the searcher (suggest them as points to evaluate, complete them with their result)
    and evaluates only the warm-start points not done yet; its random state is seeded with the
    number of finished trials, so it does not draw the points it drew before.
    """
    from ray import tune
    from ray.tune.search.hyperopt import HyperOptSearch

    keys = weight_keys(num_classes)
    done_points = [dict(zip(keys, map(float, row["weights"]))) for row in done]
    warm = warm_start_points(num_classes) if cfg.tune.warm_start else []
    warm = [p for p in warm if p not in done_points]
    points = done_points + warm
    searcher = HyperOptSearch(
        space={k: tune.uniform(0.0, 1.0) for k in keys},
        metric=METRIC,
        mode="max",
        points_to_evaluate=points or None,
        n_initial_points=cfg.tune.n_initial_points,
        random_state_seed=stable_seed(cfg.seed, "hyperopt", *([len(done)] if done else [])),
    )
    for i, row in enumerate(done):
        replay = f"done-{i}"
        searcher.suggest(replay)
        searcher.on_trial_complete(replay, {METRIC: float(row[METRIC])})
    return searcher


def build_tuner(
    data: ProtocolData,
    cfg: RunConfig,
    tune_root: str | Path,
    done: list[dict[str, Any]] | None = None,
):
    """The Ray Tune ``Tuner`` of the (rest of the) weight search: ``num_samples`` minus the
    ``done`` trials, each recorded in the ledger as it finishes."""
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback
    from ray.tune.search import ConcurrencyLimiter

    done = done or []
    trainable = tune.with_resources(
        tune.with_parameters(_trial, data=data, cfg=cfg),
        {"cpu": cfg.tune.cpus_per_trial, "gpu": cfg.tune.gpus_per_trial},
    )
    root = Path(tune_root).resolve()
    searcher = build_searcher(cfg, data.num_classes, done)
    concurrency = resolve_concurrency(cfg)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=concurrency),
            num_samples=cfg.tune.num_samples - len(done),
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=EXPERIMENT,
            storage_path=str(root),
            # The ledger first: a result is on disk before anything else reacts to it; the
            # trial's logs are copied last, once the loggers have closed them.
            callbacks=[_ledger_callback(root / LEDGER, data.num_classes), CSVLoggerCallback(),
                       JsonLoggerCallback(), TBXLoggerCallback(), _trial_logs_callback()],
            failure_config=tune.FailureConfig(max_failures=1),
            verbose=1,
        ),
    )


def search_weights(
    data: ProtocolData, cfg: RunConfig, tune_root: str | Path, resume: bool = False
) -> SearchResult:
    """Run (or resume) the weight search; needs a connected Ray instance."""
    t0 = time.perf_counter()
    ledger = Path(tune_root).resolve() / LEDGER
    ledger.parent.mkdir(parents=True, exist_ok=True)
    if not resume:
        ledger.unlink(missing_ok=True)
    done = read_ledger(ledger)
    errors: list[str] = []
    if len(done) < cfg.tune.num_samples:
        if done:
            log.info("resuming the weight search: %d of %d trials done", len(done),
                     cfg.tune.num_samples)
        grid = build_tuner(data, cfg, tune_root, done).fit()
        errors = [str(r.error) for r in grid if r.error is not None]
    if restored := restore_trial_results(read_ledger(ledger)):
        log.info("restored result.json of %d trial(s) from the ledger", restored)
    wall = time.perf_counter() - t0
    rows = [
        {
            "weights": [float(w) for w in row["weights"]],
            METRIC: float(row[METRIC]),
            "val_std": float(row["val_std"]),
            "val_nll": float(row.get("val_nll", float("nan"))),
            "finished_at": float(row["finished_at"]),
            "trial_id": row["trial_id"],
        }
        for row in read_ledger(ledger)
    ]
    if not rows:
        raise RuntimeError(f"no trial of the weight search finished; first errors: {errors[:3]}")
    best = pick_best(rows)
    return SearchResult(
        best_weights=best["weights"],
        best_val_acc=best[METRIC],
        best_val_std=best["val_std"],
        trials=len(rows),
        concurrency=resolve_concurrency(cfg),
        wall_s=wall,
        history=rows,
    )
