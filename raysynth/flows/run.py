"""``raysynth run``: real data → generator → synthesis + filter → learning → report (DESIGN §3–4).

Every stage writes into the run directory and is skipped when its output is already there, so
``--resume`` continues an interrupted run at the stage it stopped in. Needs a connected Ray.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from raysynth.config.schema import RunConfig
from raysynth.errors import ConfigError
from raysynth.flows.prepare import (
    RealData,
    prepare_pixel_generator,
    prepare_real,
    real_feature_gaussians,
    train_real_classifier,
)
from raysynth.generate.generators import GeneratorSpec
from raysynth.rundir import RunDir
from raysynth.train.arrays import ProtocolData

log = logging.getLogger("raysynth.flows")


class Progress:
    """Stage-by-stage progress lines with the overall elapsed time, and per-stage timings."""

    def __init__(self, stages: list[str]) -> None:
        self.stages = stages
        self.t0 = time.perf_counter()
        self.timings: dict[str, float] = {}
        self._current: tuple[str, float] | None = None

    def start(self, name: str) -> None:
        self.finish()
        i = self.stages.index(name) + 1
        log.info("[%d/%d] %s (%.0f s elapsed)", i, len(self.stages), name, self.elapsed)
        self._current = (name, time.perf_counter())

    def finish(self) -> None:
        if self._current is not None:
            name, t = self._current
            self.timings[name] = time.perf_counter() - t
            log.info("      %s done in %.1f s", name, self.timings[name])
            self._current = None

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


def needs_classifier(cfg: RunConfig, real: RealData) -> bool:
    """The real-split classifier is needed to embed (digits filter) or to guide synthesis."""
    from raysynth.filter.embedders import uses_classifier

    return cfg.synthesis.feedback.criterion != "none" or (
        cfg.filter.enabled and uses_classifier(cfg.filter, real.image_size)
    )


def generator_spec(
    run: RunDir, cfg: RunConfig, real: RealData, classifier: Path | None
) -> GeneratorSpec:
    g = cfg.synthesis.generator
    pixel = str(prepare_pixel_generator(run, cfg, real)) if g.kind == "pixel" else ""
    fb = cfg.synthesis.feedback
    guide = fb.classifier or (str(classifier) if classifier else "")
    gaussians = None
    if fb.criterion == "hardness":
        gaussians = real_feature_gaussians(Path(guide), real)
    from raysynth.data.store import real_path

    return GeneratorSpec(
        generator=g,
        feedback=fb,
        class_names=real.class_names,
        pixel_folder=pixel,
        classifier_folder=guide,
        gaussians=gaussians,
        real_images=str(real_path(run.root, "train")),
        channels=real.channels,
        image_size=real.image_size,
    )


def check_models(cfg: RunConfig) -> None:
    """Fail before any actor starts when a model, scheduler or adapter cannot be used."""
    g = cfg.synthesis.generator
    if g.kind in ("text2image", "unclip"):
        from raysynth.generate import loading

        loading.check_model_available(g)
        loading.check_scheduler(g.scheduler)
        loading.check_adapters(g)
    elif g.kind == "pixel":
        from raysynth.generate.pixel_generator import check_pixel_adapters

        check_pixel_adapters(g)
    if cfg.flow == "air":
        from raysynth.flows.air import check_air

        check_air(cfg)
    if cfg.filter.enabled and cfg.filter.embedder == "open_clip":
        from raysynth.filter.embedders import check_clip_available

        check_clip_available(cfg.filter.clip_model, cfg.filter.clip_pretrained)


def check_weights(cfg: RunConfig, num_classes: int) -> None:
    """Fixed per-class weights (``tune.weights``) must give one weight per class of the data
    (their range, [0, 1], is checked with the config)."""
    n = len(cfg.tune.weights)
    if n and n != num_classes:
        raise ConfigError(
            f"tune.weights has {n} value(s) but the data has {num_classes} classes; give one "
            "weight in [0, 1] per class, in the order of data.classes"
        )


def run_pipeline(
    cfg: RunConfig, out: str | Path, resume: bool = False, stop_after: str | None = None
) -> dict[str, Any]:
    """The whole job; returns report.json's content (also written, with report.md/html).

    ``stop_after="synthesis"`` or ``"search"`` ends the job after that stage
    (``raysynth synthesize`` / ``raysynth tune``); the report is then not written.
    """
    from raysynth.filter.rounds import accepted_arrays, synthesize
    from raysynth.flows.learn import classifier_flow, final_accuracies, search

    if stop_after == "search" and cfg.flow != "unicon":
        raise ConfigError(
            f"flow={cfg.flow} has no weight search (only flow=unicon does); run the whole job "
            "with `raysynth run`"
        )
    check_models(cfg)  # before the run directory is created or touched
    run = RunDir(out)
    run.init(cfg, resume=resume)
    handler = run.attach_log()
    if cfg.flow == "air":
        from raysynth.flows import air

        stages = list(air.STAGES)
    else:
        stages = ["data", "generator", "synthesis", "search", "final", "report"]
    if cfg.flow == "classifier":
        stages.remove("search")
    progress = Progress(stages)
    try:
        progress.start("data")
        real = prepare_real(run, cfg)
        check_weights(cfg, real.num_classes)  # before any model is trained
        report: dict[str, Any] = {
            "preset": cfg.preset,
            "flow": cfg.flow,
            "classes": real.class_names,
            "split": "test",
            "data": {
                "skipped": [list(s) for s in real.images.skipped],
                "counts": real.splits.counts(real.images.labels, real.num_classes),
                "groups": real.splits.groups,
            },
        }
        if cfg.flow == "air":
            result = air.run_air(run, cfg, real, progress, resume, stop_after)
            if stop_after == "synthesis":
                progress.finish()
                return result
            report.update(result)
            return _finish(run, report, progress)
        progress.start("generator")
        classifier = train_real_classifier(run, cfg, real) if needs_classifier(cfg, real) else None
        spec = generator_spec(run, cfg, real, classifier)
        progress.start("synthesis")
        synthesis = run.read_json("synthesis.json")
        if synthesis is None:
            synthesis = synthesize(run, cfg, real, spec, classifier)
            run.write_json("synthesis.json", synthesis)
        if stop_after == "synthesis":
            progress.finish()
            return {"synthesis": synthesis}
        synthetic = accepted_arrays(run.root / "synthetic", real)
        report["synthesis"] = synthesis
        if cfg.flow == "unicon":
            common = {
                "train": real.arrays("train"),
                "synthetic": synthetic,
                "pool": real.arrays("pool"),
                "num_classes": real.num_classes,
                "groups": real.splits.groups,
            }
            progress.start("search")
            summary = search(ProtocolData(**common, eval=real.arrays("val")), cfg, run, resume)
            weights = summary["best_weights"]
            if stop_after == "search":
                progress.finish()
                return {"tune": summary}
            progress.start("final")
            test = ProtocolData(**common, eval=real.arrays("test"))
            report["weights"] = dict(zip(real.class_names, map(float, weights)))
            report["accuracy"] = final_accuracies(test, weights, cfg, run.sub("train"))
            report["tune"] = {
                k: summary[k]
                for k in ("trials", "concurrency", "best_val_acc", "wall_s", "best_so_far")
            }
        else:
            progress.start("final")
            report["classifier"] = classifier_flow(
                real.arrays("train"), synthetic, real.arrays("test"), real.splits.groups,
                real.num_classes, cfg, run,
            )
        return _finish(run, report, progress)
    finally:
        logging.getLogger("raysynth").removeHandler(handler)


def _finish(run: RunDir, report: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Write report.json, render report.md / report.html, then record the report stage's time."""
    from raysynth.report import render_report

    progress.start("report")
    report["timings"] = {"total_s": progress.elapsed, "stages": dict(progress.timings)}
    run.write_json("report.json", report)
    render_report(run.root)
    progress.finish()
    report["timings"] = {"total_s": progress.elapsed, "stages": dict(progress.timings)}
    run.write_json("report.json", report)
    return report
