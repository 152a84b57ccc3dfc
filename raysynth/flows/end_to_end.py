"""The end-to-end classifier of every flow (real-split classifier, the classifier flow's runs):
one Ray Train run on arrays (few-shot scale) or on tables streamed into the workers
(``train.stream``), and the streamable descriptions of the real splits and the accepted
synthetic rows."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from raysynth import ray_data
from raysynth.config.schema import RunConfig
from raysynth.data.store import real_path
from raysynth.data.tables import ImageTable, describe_table, own_partners
from raysynth.generate.table import parquet_files
from raysynth.storage import spec_path
from raysynth.train.arrays import LabeledArrays
from raysynth.train.augment import resolve_kind
from raysynth.train.loops import end_to_end_loop
from raysynth.train.models import encoder_config
from raysynth.train.session import run_trainer
from raysynth.train.streamed import StreamSpec
from raysynth.train.streams import COLUMNS as STREAM_COLUMNS


def train_end_to_end(
    cfg: RunConfig, real: Inputs, synthetic: Inputs, evaluate: Inputs,
    groups: dict[str, list[int]], num_classes: int, seed: int, save_dir: Path,
    checkpoint_dir: Path, storage: Path, name: str, mix_fraction: float = 0.0,
    contexts: tuple[list[str], list[str]] | None = None, timing: bool = False,
) -> dict[str, float]:
    """One end-to-end classifier (Ray Train, ``train.*`` workers) on real ∪ synthetic, scored on
    ``evaluate`` per class group (and per class × context: ``contexts`` = (each eval row's group,
    class names); arrays only); the model is written to ``save_dir``. Arrays go to the workers
    in the loop's config; :class:`ImageTable` s are streamed (``TorchTrainer(datasets=...)``,
    the real rows split across the workers, decoded there)."""
    channels, size = _shape(real)
    enc = encoder_config(cfg.encoder.arch, channels, size, cfg.encoder.width, cfg.encoder.feat_dim,
                         cfg.encoder.pretrained)
    loop_cfg = {
        "groups": groups, "num_classes": num_classes, "encoder_cfg": enc, "cfg": cfg.end_to_end,
        "aug_kind": resolve_kind(cfg.encoder.augment, size), "seed": seed,
        "save_dir": spec_path(save_dir), "checkpoint_dir": spec_path(checkpoint_dir),
        "checkpoint_every": cfg.train.checkpoint_every,
        "threads": max(1, int(cfg.train.cpus_per_worker)), "mix_fraction": mix_fraction,
        "timing": timing,
        "eval_contexts": (contexts or ([], []))[0], "class_names": (contexts or ([], []))[1],
    }
    if isinstance(real, LabeledArrays):
        loop_cfg.update(real=real, synthetic=synthetic, eval=evaluate)
        return run_trainer(end_to_end_loop, loop_cfg, cfg.train, name, storage)
    assert isinstance(synthetic, ImageTable) and isinstance(evaluate, ImageTable)
    own = mix_fraction > 0 and cfg.mix.pairing == "own" and len(synthetic) > 0
    loop_cfg["stream"] = StreamSpec(real.counts, synthetic.counts, channels, size,
                                    own_partners(synthetic) if own else None)
    datasets = {"real": table_dataset(real, seed=seed),
                "eval": table_dataset(evaluate, shuffle=False)}
    if len(synthetic):
        datasets["synthetic"] = table_dataset(synthetic, seed=seed + 1)
    return run_trainer(end_to_end_loop, loop_cfg, cfg.train, name, storage, datasets, ("real",))


Inputs = LabeledArrays | ImageTable


def empty_like(x: Inputs) -> Inputs:
    """No synthetic rows, in the form of ``x``."""
    if isinstance(x, LabeledArrays):
        return LabeledArrays.empty_like(x)
    return replace(x, files=(), counts=(0,) * len(x.counts), drop=frozenset())


def _shape(x: Inputs) -> tuple[int, int]:
    if isinstance(x, LabeledArrays):
        return int(x.x.shape[1]), int(x.x.shape[-1])
    return x.channels, x.image_size


def table_dataset(table: ImageTable, shuffle: bool = True, seed: int | None = None) -> Any:
    """The Ray Dataset of ``table``'s rows, read into the object store now (before the Train run
    that reads it: ``ray_data.cached``); ``shuffle``: shuffled once with ``seed`` and read in a
    new block order each pass (``ray_data.shuffled``; real splits and synthetic parts are stored
    class by class, so a local shuffle buffer alone would leave batches of a few classes)."""
    ds = ray_data.image_table(table.files, STREAM_COLUMNS, table.accepted_only, table.drop)
    return ray_data.shuffled(ds, seed) if shuffle else ray_data.cached(ds)


def streams(cfg: RunConfig, rows: int, mixes: bool = True) -> bool:
    """Whether the end-to-end classifier streams a training set of ``rows`` rows (always when
    DiffCoRe-Mix pairs each real image with its own counterpart: the streamed batches carry
    their sample ids; ``mixes=False``: a run without synthetic rows, which mixes nothing)."""
    own = mixes and cfg.mix.enabled and cfg.mix.pairing == "own"
    return cfg.train.stream == "always" or (
        cfg.train.stream == "auto" and (own or rows > cfg.train.stream_above)
    )


def real_table(root: Path, split: str, num_classes: int, channels: int, size: int) -> ImageTable:
    """One real split of the run directory ``root`` as a streamable table (only its ids and
    labels are read here)."""
    return describe_table([str(real_path(root, split))], num_classes, channels, size,
                          what=f"the real {split} split")


def accepted_table(root: Path, num_classes: int, channels: int, size: int) -> ImageTable:
    """The accepted synthetic rows under ``root`` as a streamable table (only ids, labels and
    the accepted flag are read here)."""
    files = [str(f) for f in parquet_files(root)]
    return describe_table(files, num_classes, channels, size, accepted_only=True,
                          what=f"the synthetic table {root}")
