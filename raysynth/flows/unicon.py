"""``flow: unicon`` (paper 000): synthesize, search the per-class weights ``w`` on the validation
split, then SupCon-Real, SupCon-Mixed and UniCon (best ``w``) under the same protocol on the test
split."""

from __future__ import annotations

from typing import Any

from raysynth.config.schema import RunConfig
from raysynth.flows.job import Job
from raysynth.flows.prepare import synthetic_inputs
from raysynth.train.arrays import ProtocolData
from raysynth.train.final import final_accuracies
from raysynth.tune.weights import check_weights, search, tune_report

STAGES = ("data", "generator", "synthesis", "search", "final", "report")


def check(cfg: RunConfig, num_classes: int) -> None:
    check_weights(cfg.tune.weights, num_classes)


def run(job: Job) -> dict[str, Any] | None:
    """The flow's stages after ``data``; returns the partial result when ``job.until`` stops it
    early, else ``None`` (``job.report`` is filled for the report)."""
    synthesis, synthetic = synthetic_inputs(job)
    if job.stops_after("synthesis"):
        return {"synthesis": synthesis}
    real, cfg, run_dir = job.real, job.cfg, job.run
    common = {
        "train": real.arrays("train"),
        "synthetic": synthetic,
        "pool": real.arrays("pool"),
        "num_classes": real.num_classes,
        "groups": real.splits.groups,
    }
    job.stage("search")
    run_dir.stage("search")
    val = ProtocolData(**common, eval=real.arrays("val"))
    summary = search(val, cfg, run_dir.tune, run_dir.tune_summary, job.resume)
    if job.stops_after("search"):
        return {"tune": summary}
    job.stage("final")
    run_dir.stage("final")
    weights = summary["best_weights"]
    test = ProtocolData(**common, eval=real.arrays("test"))
    job.report["weights"] = dict(zip(real.class_names, map(float, weights)))
    job.report["accuracy"] = final_accuracies(test, weights, cfg, run_dir.train)
    job.report["tune"] = tune_report(summary)
    return None
