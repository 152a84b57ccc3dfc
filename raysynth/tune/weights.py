"""The tune stage's entry: the per-class weights ``w`` — fixed (``tune.weights``), searched
sequentially (``tune.searcher=gp``) or by Ray Tune + HyperOpt — cached in ``tune/summary.json``
so a finished search is never rerun."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from raysynth.config.schema import RunConfig
from raysynth.errors import ConfigError
from raysynth.files import cached
from raysynth.train.arrays import ProtocolData
from raysynth.tune.search import SearchResult
from raysynth.tune.tuner import METRIC

REPORT_KEYS = ("trials", "concurrency", "best_val_acc", "wall_s", "best_so_far")


def check_weights(weights: tuple[float, ...], num_classes: int) -> None:
    """Fixed per-class weights (``tune.weights``) must give one weight per class of the data
    (their range, [0, 1], is checked with the config)."""
    if weights and len(weights) != num_classes:
        raise ConfigError(
            f"tune.weights has {len(weights)} value(s) but the data has {num_classes} classes; "
            "give one weight in [0, 1] per class, in the order of data.classes"
        )


def search(
    val: ProtocolData, cfg: RunConfig, folder: Path, summary: Path, resume: bool
) -> dict[str, Any]:
    """The weights and the search's summary (``best_weights``, ``history``, trials, timings);
    ``folder`` holds the trials, ``summary`` caches the result."""

    def compute() -> dict[str, Any]:
        result = _search(val, cfg, folder, resume)
        return {**result.summary(), "best_weights": result.best_weights, "history": result.history}

    return cached(summary, compute)


def tune_report(summary: dict[str, Any]) -> dict[str, Any]:
    """The report's ``tune`` section of a search summary: counts, timings, the best-so-far curve
    and every trial's validation accuracy (``trial_scores``, in completion order)."""
    out = {k: summary[k] for k in REPORT_KEYS}
    out["trial_scores"] = [float(h[METRIC]) for h in summary.get("history") or []]
    return out


def _search(val: ProtocolData, cfg: RunConfig, folder: Path, resume: bool) -> SearchResult:
    if cfg.tune.weights:
        check_weights(cfg.tune.weights, val.num_classes)
        return SearchResult(list(cfg.tune.weights), float("nan"), float("nan"), 0, 0, 0.0)
    if cfg.tune.searcher == "gp":
        from raysynth.tune.gp import search_weights_gp

        return search_weights_gp(val, cfg, folder / "gp")
    from raysynth.tune.search import search_weights

    return search_weights(val, cfg, folder, resume=resume)
