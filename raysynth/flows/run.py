"""``raysynth run``: the shared preparation, then the flow ``cfg.flow`` names, then the report
(DESIGN §3–4).

Every stage writes into the run directory and is skipped when its output is already there, so
``--resume`` continues an interrupted run at the stage it stopped in; with a changed config, the
stages whose config sections changed (``raysynth.config.stages``) are set aside and redone
(``RunDir.stage``). Needs a connected Ray.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from raysynth.config.schema import RunConfig
from raysynth.errors import ConfigError
from raysynth.files import atomic_write_json
from raysynth.flows import flow
from raysynth.flows.job import Job, Progress
from raysynth.flows.prepare import check_models, prepare_real
from raysynth.flows.real import RealData
from raysynth.rundir import RunDir
from raysynth.text import printable


def check(cfg: RunConfig, until: str | None = None, dry_run: bool = False) -> list[str]:
    """Fail before the run directory is touched: a stage the flow lacks, a model that cannot be
    used, what the flow needs. Returns one line per model saying where it comes from;
    ``dry_run``: a model that cannot be reached is one of those lines, not an error."""
    stages = flow(cfg.flow).STAGES
    if until is not None and until not in stages:
        raise ConfigError(
            f"flow={cfg.flow} has no {until} stage (its stages: {', '.join(stages)}); run the "
            "whole job with `raysynth run`"
        )
    lines = check_models(cfg, dry_run)
    checker = getattr(flow(cfg.flow), "check_config", None)
    if checker is not None:
        lines += checker(cfg, dry_run) or []
    return lines


def run_flow(
    cfg: RunConfig, out: str | Path, resume: bool = False, until: str | None = None
) -> dict[str, Any]:
    """The whole job; returns report.json's content (also written, with report.md/html).

    ``until="synthesis"`` or ``"search"`` ends the job after that stage (``raysynth synthesize``
    / ``raysynth tune``) and returns that stage's result; the report is then not written.
    """
    check(cfg, until)  # before the run directory is created or touched
    run = RunDir(out)
    run.init(cfg, resume=resume)
    handler = run.attach_log()
    module = flow(cfg.flow)
    progress = Progress(list(module.STAGES))
    try:
        progress.start("data")
        real = prepare_real(run, cfg)
        module.check(cfg, real.num_classes)  # before any model is trained
        job = Job(run, cfg, real, progress, resume, until, report=_header(cfg, real))
        partial = module.run(job)
        if partial is not None:
            return partial
        return _finish(run, job.report, progress)
    finally:
        logging.getLogger("raysynth").removeHandler(handler)


def describe_data(cfg: RunConfig) -> list[str]:
    """``--dry-run``'s lines on the data: counts per split and class, skipped images, groups.
    An ImageFolder or Parquet source is listed as the data stage lists it (labels and paths,
    no image opened); the bundled, generated and published-list sources are loaded."""
    from raysynth.data import load_dataset, make_splits
    from raysynth.data.listing import listed, streams

    streamed = streams(cfg.data)
    data = listed(cfg.data) if streamed else load_dataset(cfg.data)
    splits = make_splits(data, cfg.data, cfg.seed)
    flow(cfg.flow).check(cfg, data.num_classes)
    counts = splits.counts(data.labels, data.num_classes)
    channels = (f"{data.channels} channel(s)" if not streamed or cfg.data.channels
                or cfg.data.source == "imagefolder" else "channels found by the data stage")
    lines = [f"data: {len(data)} images, {data.num_classes} classes, {channels}"]
    if streamed:
        lines.append("  (listed, not opened: the data stage skips unreadable images, which may "
                     "lower these counts)")
    if data.skipped:
        lines.append(f"skipped {len(data.skipped)} unreadable image(s):")
        lines += [f"  {printable(src)}: {printable(why)}" for src, why in data.skipped]
    lines += [f"  {name}: {sum(counts[name])} images, per class {counts[name]}"
              for name in ("train", "pool", "val", "test")]
    if splits.groups:
        lines.append(f"  long-tail groups: {splits.groups}")
    names = sorted({g for g in data.group if g})
    if names:
        lines.append(f"  groups (contexts): {', '.join(map(printable, names))}")
    return lines


def _header(cfg: RunConfig, real: RealData) -> dict[str, Any]:
    return {
        "preset": cfg.preset,
        "flow": cfg.flow,
        "classes": real.class_names,
        "split": "test",
        "data": {
            "skipped": [list(s) for s in real.skipped],
            "counts": real.counts(),
            "groups": real.splits.groups,
        },
    }


def _finish(run: RunDir, report: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Write report.json, render report.md / report.html, then record the report stage's time."""
    from raysynth.report import render_report
    from raysynth.report.explain import explain

    progress.start("report")
    run.stage("report")
    report.update(explain(report))  # the headline and why the weights are what they are
    report["timings"] = {"total_s": progress.elapsed, "stages": dict(progress.timings)}
    atomic_write_json(run.report_path, report)
    render_report(run.root)
    progress.finish()
    report["timings"] = {"total_s": progress.elapsed, "stages": dict(progress.timings)}
    atomic_write_json(run.report_path, report)
    return report
