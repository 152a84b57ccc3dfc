"""``flow: air`` of ``raysynth run`` — AiR (paper 001, METHODS §4) on the run's data.

1. pseudo-labels: CLIP zero-shot ``p`` of the unlabeled images (the train split with its labels
   hidden, or ``air.unlabeled_path``) on a Ray Data actor pool; the val and test splits are
   embedded by the same pool (their labels measure accuracy, never train);
2. lora: a LoRA adapter of the text-to-image model, trained (Ray Train) on the ``air.top_k`` most
   confident images per class with the prompt ``"{synthesis.context} {class}"``;
3. synthesis: the adapted model makes ``synthesis.*`` images per class (the synthesis stage of
   every flow, with the adapter appended to ``synthesis.generator.lora``, no filter);
4. prompt: the generated images are embedded; per class the one with the highest own-class ``p``
   is the prototype ``x̂*_c``; ``p̂`` from cosine to the prototypes is fused, ``p* = p + λ p̂``; CoOp
   context tokens are learned on the fused pseudo-labels and the labelled synthetic images,
   refreshing the pseudo-labels after each iteration (λ, β optionally searched with Ray Tune).

Each step leaves its output in ``<run>/air/`` (or ``synthetic/``) and is skipped when that output
is there, so ``--resume`` continues where the run stopped.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from raysynth import columns as col
from raysynth.config import replace
from raysynth.config.schema import Resources, RunConfig
from raysynth.data.unlabeled import UnlabeledSet, load_unlabeled
from raysynth.errors import ConfigError, DataError
from raysynth.files import atomic_save_npz, atomic_write_json, cached, finite, read_json
from raysynth.flows.job import Job
from raysynth.flows.prepare import generator_spec, publish_model, synthesis_stage
from raysynth.flows.real import RealData
from raysynth.generate.table import read_table
from raysynth.pseudolabel.prototypes import accuracies, prototypes
from raysynth.pseudolabel.top_k import top_k_per_class
from raysynth.pseudolabel.zero_shot import (
    PseudoLabels,
    ZeroShotSpec,
    clip_embedder_spec,
    label_accuracy,
    pseudo_label,
)
from raysynth.rundir import RunDir
from raysynth.storage import AnyPath

log = logging.getLogger("raysynth.flows")

STAGES = ("data", "pseudo-labels", "lora", "synthesis", "prompt", "report")
ADAPTER = "lora"


def check(cfg: RunConfig, num_classes: int) -> None:
    """Nothing beyond :func:`check_config` (run before Ray starts)."""


def check_config(cfg: RunConfig, dry_run: bool = False) -> list[str]:
    """What AiR needs before anything starts: a text-to-image model to adapt and a CLIP model
    (``dry_run``: CLIP weights that cannot be reached are reported, not an error)."""
    from raysynth.filter.clip_weights import check_clip_available, clip_status

    g = cfg.synthesis.generator
    if g.kind != "text2image":
        raise ConfigError(
            f"flow=air adapts a pretrained text-to-image model with LoRA; synthesis.generator.kind="
            f"{g.kind} is not one (the pixel model is trained on labelled images, which AiR does "
            "not have): set synthesis.generator.kind=text2image and synthesis.generator.model"
        )
    clip = clip_status(cfg.air.clip_model, cfg.air.clip_pretrained)
    if clip.usable or not dry_run:
        check_clip_available(cfg.air.clip_model, cfg.air.clip_pretrained)
    path = cfg.air.unlabeled_path
    if path and "://" not in path and not Path(path).expanduser().exists():
        raise ConfigError(
            f"air.unlabeled_path={path!r} does not exist; give a folder of images or a Parquet "
            "table, or leave it empty to use the train split with its labels hidden"
        )
    return [clip.line("AiR CLIP")]


# 1. embedding and zero-shot pseudo-labels ------------------------------------------------------


def zero_shot_spec(cfg: RunConfig, class_names: list[str]) -> ZeroShotSpec:
    a = cfg.air
    emb = clip_embedder_spec(a.clip_model, a.clip_pretrained, cfg.filter.device,
                             cfg.filter.pool.batch_size, pool=embed_pool(cfg))
    return ZeroShotSpec(emb, tuple(class_names), a.templates, a.temperature)


def embed_pool(cfg: RunConfig) -> Resources:
    """The CLIP pool: ``filter.pool`` (the embedder pool of every flow)."""
    return cfg.filter.pool


def split_set(real: RealData, split: str) -> UnlabeledSet:
    """A real split as an unlabeled set whose true labels are kept for measuring."""
    idx = real.rows(split)
    return UnlabeledSet(
        images=real.split_images(split),
        sources=[real.sample_ids[i] for i in idx],
        channels=real.channels,
        sample_ids=[real.sample_ids[i] for i in idx],
        true_labels=real.labels[idx],
    )


def unlabeled_set(cfg: RunConfig, real: RealData) -> UnlabeledSet:
    if not cfg.air.unlabeled_path:
        return split_set(real, "train")
    try:
        data = load_unlabeled(cfg.air.unlabeled_path, 3, cfg.data.image_size)
    except DataError as e:
        raise DataError(
            f"air.unlabeled_path={cfg.air.unlabeled_path!r}: {e} (a folder of images, any depth, "
            "or a Parquet table with an 'image' column)"
        ) from e
    if len(data) == 0:
        raise DataError(f"air.unlabeled_path={cfg.air.unlabeled_path!r} holds no readable image")
    return data


def embedded(run: RunDir, name: str, data: UnlabeledSet, spec: ZeroShotSpec, pool: Resources):
    """``air/{name}.npz`` (ids, CLIP embeddings, ``p``, true labels), computed once per run."""
    if len(data) == 0:  # e.g. data.val_per_class=0: nothing to embed
        c = len(spec.class_names)
        return PseudoLabels([], np.zeros((0, 0), np.float32), np.zeros((0, c)),
                            list(spec.class_names), np.zeros(0, np.int64))

    def compute() -> dict[str, Any]:
        pl = pseudo_label(data, spec, pool)
        return {
            "ids": np.array(pl.sample_ids, dtype=str),
            "emb": pl.embeddings,
            "probs": pl.probs,
            "true_labels": pl.true_labels if pl.true_labels is not None else np.zeros(0, np.int64),
            "has_truth": pl.true_labels is not None,
        }

    def read(path: AnyPath) -> dict[str, Any]:
        with path.open("rb") as f, np.load(f, allow_pickle=False) as z:
            return dict(z)

    z = cached(run.air / f"{name}.npz", compute, read, lambda p, v: atomic_save_npz(p, **v))
    truth = z["true_labels"] if z["has_truth"] else None
    return PseudoLabels(
        [str(s) for s in z["ids"]], z["emb"], z["probs"], list(spec.class_names), truth
    )


# 2. the adapter ---------------------------------------------------------------------------------


def train_adapter(
    run: RunDir, cfg: RunConfig, data: UnlabeledSet, pl: PseudoLabels
) -> tuple[Path, dict[str, Any]]:
    """LoRA on the top-K pseudo-labelled images per class (skipped when already trained)."""
    from raysynth.generate.lora.spec import RESULT_FILE, LoraTrainSpec
    from raysynth.generate.lora.train import train_sd_lora

    folder = run.air / ADAPTER
    top = top_k_per_class(pl.probs, cfg.air.top_k)
    summary: dict[str, Any] = {
        "top_k": cfg.air.top_k,
        "images": int(len(top.indices)),
        "short": {pl.class_names[c]: n for c, n in top.short.items()},
        "top_k_accuracy": label_accuracy(top.labels, _rows(pl.true_labels, top.indices)),
    }
    if not (folder / RESULT_FILE).is_file():
        spec = LoraTrainSpec(
            **asdict(cfg.air.lora),
            seed=cfg.seed,
            checkpoint_every=cfg.train.checkpoint_every,
            dtype="float16" if cfg.train.use_gpu and cfg.synthesis.generator.dtype == "float16"
            else "float32",
        )
        train_sd_lora(
            cfg.synthesis.generator.model,
            [data.images[i] for i in top.indices],
            top.labels,
            pl.class_names,
            cfg.synthesis.context,
            folder,
            spec,
            scaling=cfg.train,
            checkpoint_dir=run.air / f"{ADAPTER}-checkpoint",
            storage_path=run.train,
            model_ref=publish_model(run, cfg.synthesis.generator),
        )
    losses = read_json(folder / RESULT_FILE).get("losses", [])
    summary.update(steps=len(losses))
    if losses:
        n = max(1, len(losses) // 10)
        summary.update(loss_first=float(np.mean(losses[:n])), loss_last=float(np.mean(losses[-n:])))
    return folder, summary


def _rows(truth: np.ndarray | None, rows: np.ndarray) -> np.ndarray | None:
    return None if truth is None else np.asarray(truth)[rows]


def adapted_config(cfg: RunConfig, adapter: Path) -> RunConfig:
    """The synthesis config of step 3: the adapter after any configured ones, no filter."""
    g = cfg.synthesis.generator
    weights = [*g.lora_weights, 1.0] if g.lora_weights else []
    return replace(
        cfg,
        **{
            "synthesis.generator.lora": [*g.lora, str(adapter)],
            "synthesis.generator.lora_weights": weights,
            "filter.enabled": False,
        },
    )


# 3–4. prototypes, fusion, prompt learning -----------------------------------------------------


def synthetic_set(run: RunDir, class_names: list[str]) -> UnlabeledSet:
    """Every generated image with its class (the label it was generated for)."""
    table = read_table(run.synthetic, [col.SAMPLE_ID, col.LABEL, col.IMAGE])
    if table is None or table.num_rows == 0:
        raise DataError("the synthesis stage wrote no image; AiR needs generated images per class")
    images = table[col.IMAGE].to_pylist()
    keep = [i for i, b in enumerate(images) if b]
    ids = table[col.SAMPLE_ID].to_pylist()
    labels = np.asarray(table[col.LABEL].to_pylist(), np.int64)[keep]
    return UnlabeledSet(
        images=[images[i] for i in keep],
        sources=[ids[i] for i in keep],
        sample_ids=[ids[i] for i in keep],
        true_labels=labels,
    )


def prompt_config(cfg: RunConfig) -> Any:
    from raysynth.pseudolabel.prompt import PromptConfig

    a = cfg.air
    return PromptConfig(
        n_ctx=a.n_ctx, seed=cfg.seed, iterations=a.iterations, steps=a.steps_per_iteration,
        lr=a.learning_rate, temperature=a.temperature, proto_temperature=a.temperature,
        lam=a.lam, beta=a.beta, top_k=a.top_k, schedule=a.schedule, warmup_steps=a.warmup_steps,
    )


def prompt_data(unl: PseudoLabels, val: PseudoLabels, syn: PseudoLabels, proto: np.ndarray) -> Any:
    from raysynth.pseudolabel.prompt import PromptData

    return PromptData(
        real_emb=unl.embeddings, zero_shot=unl.probs, prototypes=proto,
        syn_emb=syn.embeddings, syn_labels=syn.true_labels, true_labels=unl.true_labels,
        val_emb=val.embeddings if len(val.sample_ids) else None,
        val_labels=val.true_labels if len(val.sample_ids) else None,
    )


def searched(job: Job, data: Any, base: Any, class_names: list[str], device: str) -> Any:
    """λ and β from the Tune search on val (``air/search.json``, never rerun), or ``None``."""
    from raysynth.pseudolabel.prompt_train import PromptTrialSpec
    from raysynth.tune.prompt import search_prompt_params

    a = job.cfg.air
    if not a.search:
        return None
    if data.val_emb is None:
        raise ConfigError("air.search=true needs a validation split: set data.val_per_class")

    def compute() -> dict[str, Any]:
        spec = PromptTrialSpec(a.clip_model, a.clip_pretrained, tuple(class_names), base, device)
        return search_prompt_params(data, spec, job.cfg, job.run.tune, resume=job.resume)

    return cached(job.run.air / "search.json", compute)


def learn_prompt(
    job: Job, unl: PseudoLabels, val: PseudoLabels, test: PseudoLabels, syn: PseudoLabels,
    proto: np.ndarray,
) -> dict[str, Any]:
    """λ, β (searched on val when ``air.search``), the learned context, and every accuracy."""
    from raysynth.devices import resolve_device
    from raysynth.filter.clip import ClipEmbedder
    from raysynth.pseudolabel.prompt import PromptConfig
    from raysynth.pseudolabel.prompt_encoder import PromptTextEncoder
    from raysynth.pseudolabel.prompt_train import train_prompt

    cfg, a = job.cfg, job.cfg.air
    base, data = prompt_config(cfg), prompt_data(unl, val, syn, proto)
    search = searched(job, data, base, unl.class_names, "auto" if cfg.train.use_gpu else "cpu")
    device = str(resolve_device("auto")) if cfg.train.use_gpu else "cpu"  # this process's
    if search is not None:
        base = PromptConfig(**{**asdict(base), "lam": search["lam"], "beta": search["beta"]})
    clip = ClipEmbedder(a.clip_model, a.clip_pretrained, device=device)
    encoder = PromptTextEncoder(
        clip.model, clip.tokenizer, unl.class_names, base.n_ctx, base.init_std, base.seed
    )
    result = train_prompt(encoder, data, base)
    result.save(job.run.air / "prompt", a.clip_model)
    pseudo, tests = accuracies(
        unl, test, proto, base.lam, a.temperature, result.pseudo_labels, encoder.probs
    )
    return {
        "lam": base.lam,
        "beta": base.beta,
        "search": search,
        "pseudo_label_accuracy": pseudo,
        "test_accuracy": tests,
        "history": result.history,
    }


# the flow --------------------------------------------------------------------------------------


def run(job: Job) -> dict[str, Any] | None:
    """Steps 1–4 (the ``data`` stage is done); fills report.json's ``air`` and ``synthesis``."""
    cfg, real, run_dir = job.cfg, job.real, job.run
    names = real.class_names
    spec, pool = zero_shot_spec(cfg, names), embed_pool(cfg)
    job.stage("pseudo-labels")
    run_dir.stage("pseudo_labels")
    data = unlabeled_set(cfg, real)
    unl = embedded(run_dir, "unlabeled", data, spec, pool)
    val = embedded(run_dir, "val", split_set(real, "val"), spec, pool)
    test = embedded(run_dir, "test", split_set(real, "test"), spec, pool)
    log.info(
        "zero-shot pseudo-labels of %d unlabeled images: accuracy %s", len(unl.sample_ids),
        f"{unl.accuracy():.4f}" if unl.true_labels is not None else "unknown (no labels)",
    )
    job.stage("lora")
    run_dir.stage("lora")
    adapter, lora = train_adapter(run_dir, cfg, data, unl)
    job.stage("synthesis")
    acfg = adapted_config(cfg, adapter)
    synthesis = synthesis_stage(run_dir, acfg, real, generator_spec(run_dir, acfg, real, None), None)
    job.report["synthesis"] = synthesis
    if job.stops_after("synthesis"):
        return {"synthesis": synthesis}
    job.stage("prompt")
    run_dir.stage("prompt")
    syn = embedded(run_dir, "synthetic", synthetic_set(run_dir, names), spec, pool)
    proto, proto_ids = prototypes(syn)
    air = learn_prompt(job, unl, val, test, syn, proto)
    air.update(
        unlabeled=len(unl.sample_ids),
        labels_known=unl.true_labels is not None,
        synthetic=len(syn.sample_ids),
        lora=lora,
        prototypes=proto_ids,
        skipped=[list(s) for s in data.skipped],
    )
    atomic_write_json(run_dir.air / "summary.json", finite(air))
    job.report["air"] = finite(air)
    return None
