"""``flow: unicon`` (paper 000): synthesize, search the per-class weights ``w`` on the validation
split, then SupCon-Real, SupCon-Mixed and UniCon (best ``w``) under the same protocol on the test
split. The search trains on arrays (few-shot scale: decoded once on the driver); the final stage
does too, or — when ``train.stream`` streams (``end_to_end.streams``) — reads the real splits
and the accepted synthetic rows as datasets in the Train workers, and the driver decodes no image
for it (nor at all when ``tune.weights`` fixes the weights: no search)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from raysynth.config.schema import RunConfig
from raysynth.data.tables import ImageTable
from raysynth.flows.end_to_end import real_table, streams, table_dataset
from raysynth.flows.job import Job
from raysynth.flows.prepare import accepted_arrays, synthetic_inputs
from raysynth.train.arrays import LabeledArrays, ProtocolData
from raysynth.train.final import final_accuracies
from raysynth.train.protocol import Data, StreamedData
from raysynth.train.streamed import StreamSpec
from raysynth.tune.weights import check_weights, search, tune_report

log = logging.getLogger("raysynth.flows")

STAGES = ("data", "generator", "synthesis", "search", "final", "report")


def check(cfg: RunConfig, num_classes: int) -> None:
    check_weights(cfg.tune.weights, num_classes)


def run(job: Job) -> dict[str, Any] | None:
    """The flow's stages after ``data``; returns the partial result when ``job.until`` stops it
    early, else ``None`` (``job.report`` is filled for the report)."""
    synthesis, table = synthetic_inputs(job, decode=False)
    if job.stops_after("synthesis"):
        return {"synthesis": synthesis}
    real, cfg, run_dir = job.real, job.cfg, job.run
    shape = (real.num_classes, real.channels, real.image_size)
    train = real_table(run_dir.root, "train", *shape)
    stream = streams(cfg, len(train) + len(table), mixes=False)
    job.stage("search")
    run_dir.stage("search")
    if stream and cfg.tune.weights:  # no search and a streamed final stage: nothing to decode
        common, val = {}, _no_images(real.num_classes, real.channels, real.image_size)
    else:  # the search (and the in-memory final stage) train on arrays
        common = {"train": real.arrays("train"), "pool": real.arrays("pool"),
                  "synthetic": accepted_arrays(run_dir.synthetic, real),
                  "num_classes": real.num_classes, "groups": real.splits.groups}
        val = ProtocolData(**common, eval=real.arrays("val"))
    summary = search(val, cfg, run_dir.tune, run_dir.tune_summary, job.resume)
    if job.stops_after("search"):
        return {"tune": summary}
    job.stage("final")
    run_dir.stage("final")
    weights = summary["best_weights"]
    test: Data
    if stream:
        log.info("final stage streams %d real and %d synthetic rows from Parquet",
                 len(train), len(table))
        test = _streamed(job, train, table)
    else:
        test = ProtocolData(**common, eval=real.arrays("test"))
    job.report["weights"] = dict(zip(real.class_names, map(float, weights)))
    job.report["accuracy"] = final_accuracies(test, weights, cfg, run_dir.train)
    job.report["tune"] = tune_report(summary)
    return None


def _no_images(num_classes: int, channels: int, size: int) -> ProtocolData:
    """The search's data when ``tune.weights`` fixes the weights: it reads only the number of
    classes (``tune.weights.search`` checks the weights against it and trains nothing)."""
    empty = LabeledArrays(np.zeros((0, channels, size, size), np.float32), np.zeros(0, np.int64))
    return ProtocolData(empty, empty, empty, empty, num_classes)


def _streamed(job: Job, train: ImageTable, synthetic: ImageTable) -> StreamedData:
    """The final stage's datasets: the real train, pool and test splits and the accepted
    synthetic rows of the run directory (only their small columns are read here)."""
    real = job.real
    shape = (real.num_classes, real.channels, real.image_size)
    pool, test = (real_table(job.run.root, split, *shape) for split in ("pool", "test"))
    spec = StreamSpec(train.counts, synthetic.counts, real.channels, real.image_size)
    return StreamedData(
        table_dataset(train, shuffle=False),
        table_dataset(synthetic, shuffle=False) if len(synthetic) else None,
        table_dataset(pool, shuffle=False), table_dataset(test, shuffle=False), spec,
        real.num_classes, real.splits.groups)
