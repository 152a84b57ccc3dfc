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

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from raysynth.config.schema import RunConfig
from raysynth.seeding import stable_seed
from raysynth.storage import RemotePath, local_or_remote
from raysynth.train.arrays import ProtocolData
from raysynth.train.protocol import evaluate
from raysynth.tune.ledger import (
    LEDGER,
    ledger_callback,
    read_ledger,
    restore_trial_results,
    trial_logs_callback,
    weight_keys,
    weights_from,
)
from raysynth.tune.tuner import METRIC, make_tuner, resolve_concurrency

log = logging.getLogger("raysynth.tune")

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

    @classmethod
    def from_rows(cls, rows: list[dict[str, Any]], concurrency: int, wall_s: float) -> SearchResult:
        """The result of the finished trials ``rows`` (the best by :func:`pick_best`)."""
        best = pick_best(rows)
        return cls(best["weights"], best[METRIC], best["val_std"], len(rows), concurrency, wall_s,
                   rows)

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


def observed_concurrency(rows: list[dict[str, Any]]) -> int | None:
    """The most trials that ran at the same moment, from each trial's wall-clock span
    (``started_at``, ``finished_at``); None when no row has a span (a ledger written before
    trials recorded their start)."""
    spans = [(r["started_at"], r["finished_at"]) for r in rows
             if np.isfinite(r.get("started_at", float("nan")))]
    if not spans:
        return None
    # at equal times an end sorts before a start: trials that merely touch do not overlap
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    return int(max(np.cumsum([d for _, d in events])))


def best_so_far(values: list[float]) -> list[float]:
    return [float(v) for v in np.maximum.accumulate(values)] if values else []


def warm_start_points(num_classes: int) -> list[dict[str, float]]:
    keys = weight_keys(num_classes)
    return [dict.fromkeys(keys, 0.0), dict.fromkeys(keys, 1.0)]


def _trial(
    config: dict[str, Any], data: ProtocolData, cfg: RunConfig, root: Any = None
) -> None:
    """One trial: the UniCon protocol on the validation split at the trial's weights. Its
    nested Train runs (``train.num_workers`` >= 1) write under the trial's folder, which on a
    remote run directory (``root``, the search's folder on s3://…) is ``root/runs/<trial id>``:
    the trial's own folder is local to the node it runs on, which other nodes cannot reach."""
    import ray.tune

    weights = weights_from(config, data.num_classes)
    ctx = ray.tune.get_context()
    trial_dir = (root / "runs" / ctx.get_trial_id() if isinstance(root, RemotePath)
                 else Path(ctx.get_trial_dir()))
    threads = max(int(cfg.tune.cpus_per_trial), 1)
    started = time.time()
    res = evaluate(
        data, "unicon", weights, cfg, stable_seed(cfg.seed, "search"), trial_dir, "unicon",
        threads=threads,
    )
    ray.tune.report(
        {METRIC: res.mean, "val_std": res.std, "val_nll": res.nll, "accs": res.accs, "done": True,
         # wall-clock span of the trial's work (Tune's own timestamp is whole seconds)
         "started_at": started, "ended_at": time.time()}
    )


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

    done = done or []
    root = local_or_remote(tune_root)
    return make_tuner(
        tune.with_parameters(_trial, data=data, cfg=cfg, root=root),
        cfg,
        root,
        EXPERIMENT,
        build_searcher(cfg, data.num_classes, done),
        cfg.tune.num_samples - len(done),
        # The ledger first: a result is on disk before anything else reacts to it; the
        # trial's logs are copied last, once the loggers have closed them.
        first=[ledger_callback(root / LEDGER, data.num_classes)],
        last=[trial_logs_callback()],
    )


def search_weights(
    data: ProtocolData, cfg: RunConfig, tune_root: str | Path, resume: bool = False
) -> SearchResult:
    """Run (or resume) the weight search; needs a connected Ray instance."""
    t0 = time.perf_counter()
    ledger = local_or_remote(tune_root) / LEDGER
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
    if restored := restore_trial_results(read_ledger(ledger), ledger.parent):
        log.info("restored result.json of %d trial(s) from the ledger", restored)
    wall = time.perf_counter() - t0
    rows = [
        {
            "weights": [float(w) for w in row["weights"]],
            METRIC: float(row[METRIC]),
            "val_std": float(row["val_std"]),
            "val_nll": float(row.get("val_nll", float("nan"))),
            "started_at": float(row.get("started_at", float("nan"))),
            "finished_at": float(row["finished_at"]),
            "trial_id": row["trial_id"],
        }
        for row in read_ledger(ledger)
    ]
    if not rows:
        raise RuntimeError(f"no trial of the weight search finished; first errors: {errors[:3]}")
    # what ran, not a second look at the free resources (trial actors may still hold CPUs now)
    concurrency = observed_concurrency(rows) or resolve_concurrency(cfg)
    return SearchResult.from_rows(rows, concurrency, wall)
