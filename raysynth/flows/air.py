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

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from raysynth import columns as col
from raysynth.config import replace
from raysynth.config.schema import RunConfig
from raysynth.data.sources import UnlabeledSet, load_unlabeled
from raysynth.errors import ConfigError, DataError
from raysynth.filter.select import fuse, most_representative, prototype_probs
from raysynth.flows.prepare import RealData
from raysynth.generate.table import read_table
from raysynth.pseudolabel.top_k import top_k_per_class
from raysynth.pseudolabel.zero_shot import (
    EmbedPool,
    PseudoLabels,
    ZeroShotSpec,
    clip_embedder_spec,
    label_accuracy,
    pseudo_label,
)
from raysynth.rundir import RunDir, atomic_write_text

log = logging.getLogger("raysynth.flows")

STAGES = ["data", "pseudo-labels", "lora", "synthesis", "prompt", "report"]
ADAPTER = "lora"


def check_air(cfg: RunConfig) -> None:
    """What AiR needs before anything starts: a text-to-image model to adapt and a CLIP model."""
    from raysynth.filter.embedders import check_clip_available

    g = cfg.synthesis.generator
    if g.kind != "text2image":
        raise ConfigError(
            f"flow=air adapts a pretrained text-to-image model with LoRA; synthesis.generator.kind="
            f"{g.kind} is not one (the pixel model is trained on labelled images, which AiR does "
            "not have): set synthesis.generator.kind=text2image and synthesis.generator.model"
        )
    check_clip_available(cfg.air.clip_model, cfg.air.clip_pretrained)
    path = cfg.air.unlabeled_path
    if path and "://" not in path and not Path(path).expanduser().exists():
        raise ConfigError(
            f"air.unlabeled_path={path!r} does not exist; give a folder of images or a Parquet "
            "table, or leave it empty to use the train split with its labels hidden"
        )


# 1. embedding and zero-shot pseudo-labels ------------------------------------------------------


def zero_shot_spec(cfg: RunConfig, class_names: list[str]) -> ZeroShotSpec:
    a = cfg.air
    emb = clip_embedder_spec(a.clip_model, a.clip_pretrained, "auto", cfg.filter.batch_size)
    return ZeroShotSpec(emb, tuple(class_names), a.templates, a.temperature)


def embed_pool(cfg: RunConfig) -> EmbedPool:
    """The CLIP pool: ``filter.*`` resources (the embedder pool of every flow)."""
    f = cfg.filter
    return EmbedPool(
        1, max(1, cfg.synthesis.max_actors), f.cpus_per_actor, f.gpus_per_actor, f.batch_size
    )


def split_set(real: RealData, split: str) -> UnlabeledSet:
    """A real split as an unlabeled set whose true labels are kept for measuring."""
    idx = getattr(real.splits, split)
    return UnlabeledSet(
        images=[real.images.images[i] for i in idx],
        sources=[real.images.sample_ids[i] for i in idx],
        channels=real.channels,
        sample_ids=[real.images.sample_ids[i] for i in idx],
        true_labels=real.images.labels[idx],
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


def embedded(run: RunDir, name: str, data: UnlabeledSet, spec: ZeroShotSpec, pool: EmbedPool):
    """``air/{name}.npz`` (ids, CLIP embeddings, ``p``, true labels), computed once per run."""
    if len(data) == 0:  # e.g. data.val_per_class=0: nothing to embed
        c = len(spec.class_names)
        return PseudoLabels([], np.zeros((0, 0), np.float32), np.zeros((0, c)),
                            list(spec.class_names), np.zeros(0, np.int64))
    path = run.sub("air") / f"{name}.npz"
    if path.is_file():
        z = np.load(path, allow_pickle=False)
        truth = z["true_labels"] if z["has_truth"] else None
        return PseudoLabels(
            [str(s) for s in z["ids"]], z["emb"], z["probs"], list(spec.class_names), truth
        )
    pl = pseudo_label(data, spec, pool)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(
        tmp,
        ids=np.array(pl.sample_ids, dtype=str),
        emb=pl.embeddings,
        probs=pl.probs,
        true_labels=pl.true_labels if pl.true_labels is not None else np.zeros(0, np.int64),
        has_truth=pl.true_labels is not None,
    )
    tmp.replace(path)
    return pl


# 2. the adapter ---------------------------------------------------------------------------------


def train_adapter(
    run: RunDir, cfg: RunConfig, data: UnlabeledSet, pl: PseudoLabels
) -> tuple[Path, dict[str, Any]]:
    """LoRA on the top-K pseudo-labelled images per class (skipped when already trained)."""
    from raysynth.generate.lora.spec import RESULT_FILE, LoraTrainSpec
    from raysynth.generate.lora.train import train_sd_lora

    folder = run.sub("air") / ADAPTER
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
            checkpoint_dir=run.sub("air") / f"{ADAPTER}-checkpoint",
            storage_path=run.sub("train"),
        )
    losses = json.loads((folder / RESULT_FILE).read_text()).get("losses", [])
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
    table = read_table(run.root / "synthetic", [col.SAMPLE_ID, col.LABEL, col.IMAGE])
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


def prototypes(syn: PseudoLabels) -> tuple[np.ndarray, dict[str, str]]:
    """``[C, D]`` embeddings of the most representative generated image per class (a zero row for
    a class with none: cosine 0 to everything) and ``{class: sample_id}``."""
    assert syn.true_labels is not None
    best = most_representative(syn.probs, syn.true_labels)
    c, d = syn.probs.shape[1], syn.embeddings.shape[1]
    proto = np.zeros((c, d), np.float32)
    ids: dict[str, str] = {}
    for k, row in best.items():
        proto[k] = syn.embeddings[row]
        ids[syn.class_names[k]] = syn.sample_ids[row]
    missing = [syn.class_names[k] for k in range(c) if k not in best]
    if missing:
        log.warning("no generated image for classes %s: their prototype is empty", missing)
    return proto, ids


def _acc(probs: np.ndarray, truth: np.ndarray | None) -> float:
    return label_accuracy(np.argmax(probs, axis=1), truth)


def learn_prompt(
    run: RunDir, cfg: RunConfig, unl: PseudoLabels, val: PseudoLabels, test: PseudoLabels,
    syn: PseudoLabels, proto: np.ndarray, resume: bool,
) -> dict[str, Any]:
    """λ, β (searched on val when ``air.search``), the learned context, and every accuracy."""
    import torch

    from raysynth.filter.embedders import ClipEmbedder
    from raysynth.pseudolabel.prompt import PromptConfig, PromptData
    from raysynth.pseudolabel.prompt_encoder import PromptTextEncoder
    from raysynth.pseudolabel.prompt_train import PromptTrialSpec, train_prompt
    from raysynth.pseudolabel.search import search_prompt_params

    a = cfg.air
    base = PromptConfig(
        n_ctx=a.n_ctx, seed=cfg.seed, iterations=a.iterations, steps=a.steps_per_iteration,
        lr=a.learning_rate, temperature=a.temperature, proto_temperature=a.temperature,
        lam=a.lam, beta=a.beta, top_k=a.top_k,
    )
    data = PromptData(
        real_emb=unl.embeddings, zero_shot=unl.probs, prototypes=proto,
        syn_emb=syn.embeddings, syn_labels=syn.true_labels, true_labels=unl.true_labels,
        val_emb=val.embeddings if len(val.sample_ids) else None,
        val_labels=val.true_labels if len(val.sample_ids) else None,
    )
    device = "cuda" if cfg.train.use_gpu and torch.cuda.is_available() else "cpu"
    search = None
    if a.search:
        if data.val_emb is None:
            raise ConfigError("air.search=true needs a validation split: set data.val_per_class")
        search = run.read_json("air/search.json")
        if search is None:  # a finished search is not run again on --resume
            spec = PromptTrialSpec(
                a.clip_model, a.clip_pretrained, tuple(unl.class_names), base, device
            )
            search = search_prompt_params(data, spec, cfg, run.sub("tune"), resume=resume)
            run.write_json("air/search.json", search)
        base = PromptConfig(**{**asdict(base), "lam": search["lam"], "beta": search["beta"]})
    clip = ClipEmbedder(a.clip_model, a.clip_pretrained, device=device)
    encoder = PromptTextEncoder(
        clip.model, clip.tokenizer, unl.class_names, base.n_ctx, base.init_std, base.seed
    )
    result = train_prompt(encoder, data, base)
    result.save(run.sub("air") / "prompt", a.clip_model)
    lam, tau = base.lam, a.temperature
    hat_unl = prototype_probs(unl.embeddings, proto, tau)
    hat_test = prototype_probs(test.embeddings, proto, tau) if len(test.sample_ids) else None
    learned_test = encoder.probs(test.embeddings, tau) if len(test.sample_ids) else None
    pseudo = {
        "text": unl.accuracy(),
        "fused": _acc(fuse(unl.probs, hat_unl, lam), unl.true_labels),
        "prompt": label_accuracy(result.pseudo_labels, unl.true_labels),
    }
    tests: dict[str, float] = {}
    if hat_test is not None:
        tests = {
            "zero_shot": test.accuracy(),
            "fused": _acc(fuse(test.probs, hat_test, lam), test.true_labels),
            "prompt": _acc(learned_test, test.true_labels),
            "prompt_fused": _acc(fuse(learned_test, hat_test, lam), test.true_labels),
        }
    return {
        "lam": lam,
        "beta": base.beta,
        "search": search,
        "pseudo_label_accuracy": pseudo,
        "test_accuracy": tests,
        "history": result.history,
    }


def _finite(v: Any) -> Any:
    """NaN → None so report.json stays strict JSON."""
    if isinstance(v, float) and not np.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_finite(x) for x in v]
    return v


# the flow --------------------------------------------------------------------------------------


def run_air(
    run: RunDir, cfg: RunConfig, real: RealData, progress: Any, resume: bool,
    stop_after: str | None = None,
) -> dict[str, Any]:
    """Steps 1–4 (the ``data`` stage is done); returns report.json's ``air`` and ``synthesis``."""
    from raysynth.filter.rounds import synthesize
    from raysynth.flows.run import generator_spec

    names = real.class_names
    spec, pool = zero_shot_spec(cfg, names), embed_pool(cfg)
    progress.start("pseudo-labels")
    data = unlabeled_set(cfg, real)
    unl = embedded(run, "unlabeled", data, spec, pool)
    val = embedded(run, "val", split_set(real, "val"), spec, pool)
    test = embedded(run, "test", split_set(real, "test"), spec, pool)
    log.info(
        "zero-shot pseudo-labels of %d unlabeled images: accuracy %s", len(unl.sample_ids),
        f"{unl.accuracy():.4f}" if unl.true_labels is not None else "unknown (no labels)",
    )
    progress.start("lora")
    adapter, lora = train_adapter(run, cfg, data, unl)
    progress.start("synthesis")
    acfg = adapted_config(cfg, adapter)
    synthesis = run.read_json("synthesis.json")
    if synthesis is None:
        synthesis = synthesize(run, acfg, real, generator_spec(run, acfg, real, None), None)
        run.write_json("synthesis.json", synthesis)
    if stop_after == "synthesis":
        return {"synthesis": synthesis}
    progress.start("prompt")
    syn = embedded(run, "synthetic", synthetic_set(run, names), spec, pool)
    proto, proto_ids = prototypes(syn)
    air = learn_prompt(run, cfg, unl, val, test, syn, proto, resume)
    air.update(
        unlabeled=len(unl.sample_ids),
        labels_known=unl.true_labels is not None,
        synthetic=len(syn.sample_ids),
        lora=lora,
        prototypes=proto_ids,
        skipped=[list(s) for s in data.skipped],
    )
    atomic_write_text(run.sub("air") / "summary.json", json.dumps(_finite(air), indent=2))
    return {"synthesis": synthesis, "air": _finite(air)}
