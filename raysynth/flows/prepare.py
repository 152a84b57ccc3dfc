"""The preparation every flow shares (and that calls no flow): the real splits, the classifier
trained on the real split (embedder, feedback guide, real-only baseline), the generator and its
spec, the model checks, the synthesis stage with its caches, the accepted images as arrays.

Each step writes into the run directory and is skipped when its output is already there, so an
interrupted run resumes where it stopped; each first goes through ``RunDir.stage``, which sets
aside outputs computed under other values of the config sections the step depends on.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from raysynth import progress as steps
from raysynth import ray_data
from raysynth.config.schema import RunConfig
from raysynth.data import listing, load_dataset, make_splits
from raysynth.data.store import real_exists, real_path, write_real
from raysynth.data.streamed import stream_real
from raysynth.data.tables import ImageTable, describe_table
from raysynth.files import cached
from raysynth.filter.loop import accepted_images
from raysynth.filter.rounds import Synthesis, synthesize
from raysynth.flows.end_to_end import (
    Inputs,
    accepted_table,
    empty_like,
    real_table,
    streams,
    train_end_to_end,
)
from raysynth.flows.measurement import measurement
from raysynth.flows.real import RealData
from raysynth.generate.generators import GeneratorSpec
from raysynth.generate.table import parquet_files
from raysynth.report.samples import (
    RECOGNITION_COLUMNS,
    RecognitionCounts,
    rates,
    recognition_rate,
    write_sample_grid,
)
from raysynth.rundir import RunDir
from raysynth.rundir.names import ALLOCATION_JSONL, REAL_CLASSIFIER_RUN
from raysynth.storage import as_path, spec_path
from raysynth.train.arrays import LabeledArrays
from raysynth.train.checkpoint import has_checkpoint

log = logging.getLogger("raysynth.flows")


def prepare_real(run: RunDir, cfg: RunConfig) -> RealData:
    """Load the dataset and write ``real/`` (or find it there); returns what the driver needs
    of the splits (:class:`RealData`: their small columns, no image)."""
    run.stage("data")
    if not real_exists(run.root):  # the data stage writes real/ (read back below)
        if listing.streams(cfg.data):  # listed on the driver, read and written by Ray Data tasks
            skipped = stream_real(run, cfg.data, cfg.seed)[0].skipped
        else:
            images = load_dataset(cfg.data)
            write_real(run.root, images, make_splits(images, cfg.data, cfg.seed))
            skipped = images.skipped
        if skipped:
            log.warning("skipped %d unreadable images (listed in the report)", len(skipped))
    return RealData.read(run.root)  # labels, ids, groups; no image read


def train_real_classifier(run: RunDir, cfg: RunConfig, real: RealData) -> Path:
    """The end-to-end classifier trained on the real train split only (``train/real_classifier``).

    Its penultimate features embed images for the filter (digits), it guides feedback synthesis,
    and it is the real-only baseline of the classifier flow. Streamed (``train.stream``) from
    ``real/train.parquet`` into the Train workers like the classifier flow's runs, or trained on
    the split decoded here.
    """
    run.stage("real_classifier")
    folder = run.real_classifier
    if has_checkpoint(folder):  # recovers one whose replacement a kill interrupted
        return folder
    train: Inputs
    val: Inputs
    if streams(cfg, sum(real.train_counts()), mixes=False):  # Train workers read real/*.parquet
        shape = (real.num_classes, real.channels, real.image_size)
        train, val = (real_table(run.root, split, *shape) for split in ("train", "val"))
    else:
        train, val = real.arrays("train"), real.arrays("val")
    metrics = train_end_to_end(
        cfg, train, empty_like(train), val, real.splits.groups, real.num_classes, cfg.seed,
        folder, run.train / "real_classifier.ckpt", run.train, REAL_CLASSIFIER_RUN,
    )
    log.info("real-split classifier: validation accuracy %.3f", metrics.get("overall", float("nan")))
    return folder


def prepare_pixel_generator(run: RunDir, cfg: RunConfig, real: RealData) -> Path:
    """Train (or reuse) the class-conditional pixel diffusion model on the real train split."""
    from raysynth.generate.pixel import PixelDiffusionConfig
    from raysynth.generate.pixel_training import load_or_train

    g = cfg.synthesis.generator
    train = real.arrays("train")
    pcfg = PixelDiffusionConfig(
        image_size=int(train.x.shape[-1]),
        in_channels=real.channels,
        num_classes=real.num_classes,
        block_out_channels=tuple(g.pixel_channels),
        train_steps=g.pixel_train_steps,
        batch_size=g.pixel_batch_size,
        seed=cfg.seed,
    )
    bars: list[steps.Counter] = []  # opened at the first step: a cached model trains none

    def progress(step: int, loss: float) -> None:
        if not bars:
            bars.append(steps.Counter("pixel model", pcfg.train_steps, "steps", log_every=500))
        bars[0].update(1, loss=loss)

    try:
        return load_or_train(run.generator, train.x, train.y, pcfg, real.class_names, progress,
                             threads=cfg.train.driver_threads)
    finally:
        for bar in bars:
            bar.close()


def real_feature_gaussians(classifier_folder: Path, real: RealData) -> dict[str, np.ndarray]:
    """Per-class mean / regularised precision / log-det of the real features (hardness)."""
    import torch

    from raysynth.generate.criteria import class_gaussians
    from raysynth.train.checkpoint import load_model

    model = load_model(classifier_folder).eval()
    train = real.arrays("train")
    with torch.no_grad():
        feats = model.features(torch.from_numpy(train.x))
    g = class_gaussians(feats, torch.from_numpy(train.y), real.num_classes)
    return {"mean": g.mean.numpy(), "precision": g.precision.numpy(), "logdet": g.logdet.numpy()}


def needs_classifier(cfg: RunConfig, real: RealData) -> bool:
    """The real-split classifier is needed to embed (digits filter) or to guide synthesis."""
    from raysynth.filter.embedders import uses_classifier

    return cfg.synthesis.feedback.criterion != "none" or (
        cfg.filter.enabled and uses_classifier(cfg.filter, real.image_size)
    )


def generator_spec(
    run: RunDir, cfg: RunConfig, real: RealData, classifier: Path | None
) -> GeneratorSpec:
    """Everything a generator actor needs to build its generator (small, picklable)."""
    g = cfg.synthesis.generator
    pixel = spec_path(prepare_pixel_generator(run, cfg, real)) if g.kind == "pixel" else ""
    fb = cfg.synthesis.feedback
    guide = fb.classifier or (spec_path(classifier) if classifier else "")
    gaussians = real_feature_gaussians(as_path(guide), real) if fb.criterion == "hardness" else None
    return GeneratorSpec(
        generator=g,
        feedback=fb,
        class_names=real.class_names,
        pixel_folder=pixel,
        classifier_folder=guide,
        gaussians=gaussians,
        real_images=spec_path(real_path(run.root, "train")),  # read where it is, on any node
        channels=real.channels,
        image_size=real.image_size,
        model_ref=publish_model(run, g),
        gpus=cfg.synthesis.pool.gpus_per_actor,
        batch_size=cfg.synthesis.pool.batch_size,
    )


def publish_model(run: RunDir, g: Any) -> Any:
    """The model resolved once, copied to the model store (default ``run.models``); None: pixel."""
    from raysynth.generate.model_store import publish_model as publish
    return publish(g, str(run.models))


def encoder_weights_status(arch: str, name: str) -> str:
    """The dry run's line for the encoder's ImageNet weights (torch's hub cache; nothing fetched)."""
    import os

    import torch

    from raysynth.train.architectures import resolve_weights

    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(resolve_weights(arch, name).url)
    offline = any(os.environ.get(v, "") not in ("", "0") for v in ("HF_HUB_OFFLINE",
                                                                   "RAYSYNTH_OFFLINE"))
    state = "cached" if path.is_file() else "cannot be reached offline" if offline else (
        "will be downloaded")
    return f"encoder weights {arch}/{name}: {state}: {path}"


def check_models(cfg: RunConfig, dry_run: bool = False) -> list[str]:
    """Fail before any actor starts when a model, scheduler or adapter cannot be used; returns
    one line per model ("cached", "will be downloaded (size)", ...; ``dry_run``: not an error)."""
    from raysynth.generate.model_source import model_status

    g, lines = cfg.synthesis.generator, []
    if g.kind in ("text2image", "unclip"):
        from raysynth.generate import loading

        lines.append((status := model_status(g.model)).line("generator"))
        if status.usable or not dry_run:
            loading.check_model_available(g)
        loading.check_scheduler(g.scheduler)
        loading.check_adapters(g)
    elif g.kind == "pixel":
        from raysynth.generate.pixel_generator import check_pixel_adapters

        check_pixel_adapters(g)
    if cfg.encoder.pretrained and dry_run:  # said, not downloaded
        lines.append(encoder_weights_status(cfg.encoder.arch, cfg.encoder.pretrained))
    elif cfg.encoder.pretrained:
        from raysynth.train.architectures import check_pretrained

        check_pretrained(cfg.encoder.arch, cfg.encoder.pretrained)
    if cfg.filter.enabled and cfg.filter.embedder == "open_clip":
        from raysynth.filter.clip_weights import check_clip_available, clip_status

        lines.append((clip := clip_status(cfg.filter.clip_model, cfg.filter.clip_pretrained)).line("embedder"))
        if clip.usable or not dry_run:
            check_clip_available(cfg.filter.clip_model, cfg.filter.clip_pretrained)
    return lines


def synthesis_stage(
    run: RunDir, cfg: RunConfig, real: RealData, spec: GeneratorSpec, classifier: Path | None
) -> dict[str, Any]:
    """The synthesis stage (plan → generate → filter rounds) once per run
    (``synthesis.json``), with ``samples.png`` and the recognition rate of its images."""
    run.stage("synthesis")

    def compute() -> dict[str, Any]:
        job = Synthesis(
            cfg.synthesis, cfg.filter, cfg.seed, run.synthetic, run.real_embeddings,
            device=cfg.filter.device,
        )
        loop = None  # the per-round measurement (decoding the real splits): closed loop only
        if cfg.synthesis.closed_loop:
            loop = replace(measurement(cfg, real, classifier), log=run.root / ALLOCATION_JSONL)
        result = synthesize(job, real.real_train(real_path(run.root, "train")), spec, classifier,
                            loop)
        write_sample_grid(run.synthetic, run.samples_png, real.num_classes)
        result["recognised"] = recognition(run, cfg, real, classifier) if classifier else None
        return result

    return cached(run.synthesis_path, compute)


def recognition(run: RunDir, cfg: RunConfig, real: RealData, classifier: Path) -> dict[str, float]:
    """The recognition rate of the synthetic images (``report.samples``): counted on the driver
    one file at a time, or, when the classifiers stream a training set this size
    (``train.stream``), on an actor pool of ``filter.pool``'s size over Ray Data (only the counts
    come back: no synthetic image is decoded on the driver)."""
    files = [str(f) for f in parquet_files(run.synthetic)]
    table = describe_table(files, real.num_classes, real.channels, real.image_size,
                           what=f"the synthetic table {run.synthetic}")
    if not files or not streams(cfg, sum(real.train_counts()) + len(table), mixes=False):
        return recognition_rate(run.synthetic, classifier, real.channels)
    ds = ray_data.image_table(table.files, RECOGNITION_COLUMNS, drop=table.drop)
    ds = ray_data.map_pool(ds, RecognitionCounts, cfg.filter.pool,
                           {"folder": spec_path(classifier), "channels": real.channels})
    hits = sum(b["hits"].sum(0) for b in ray_data.iter_numpy(ds, ["hits"]))
    return rates(np.asarray(hits))


def accepted_arrays(root: Path, real: RealData, trust: list[float] | None = None) -> LabeledArrays:
    """The accepted synthetic images (``trust``: the share of each class it keeps) as arrays,
    decoded on the driver (few-shot scale) (:func:`raysynth.filter.loop.accepted_images`)."""
    return accepted_images(root, real.channels, real.image_size, trust=trust)


def synthetic_inputs(
    job: Any, decode: bool = True
) -> tuple[dict[str, Any], LabeledArrays | ImageTable]:
    """The ``generator`` and ``synthesis`` stages of the unicon and classifier flows: the
    real-split classifier when the filter or the guidance needs it, the generator, the synthesis
    stage; returns its summary (also put in ``job.report``) and the accepted images as arrays
    (``decode``) or as a streamable table."""
    run, cfg, real = job.run, job.cfg, job.real
    job.stage("generator")
    classifier = train_real_classifier(run, cfg, real) if needs_classifier(cfg, real) else None
    spec = generator_spec(run, cfg, real, classifier)
    job.stage("synthesis")
    synthesis = synthesis_stage(run, cfg, real, spec, classifier)
    job.report["synthesis"] = synthesis
    if not decode:
        return synthesis, accepted_table(run.synthetic, real.num_classes, real.channels,
                                         real.image_size)
    return synthesis, accepted_arrays(run.synthetic, real)
