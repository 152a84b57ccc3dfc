"""Learning from real ∪ synthetic: the weight search and the final runs of both flows.

- ``unicon`` flow (paper 000): search ``w`` on the validation split, then SupCon-Real,
  SupCon-Mixed and UniCon (best ``w``) under the same protocol on the test split.
- ``classifier`` flow (papers 002/003): the end-to-end classifier on real ∪ synthetic (batch
  share, balanced softmax, optional mixing) against the same classifier on real images only,
  per class group (many/medium/few) on the test split.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from raysynth.config.schema import RunConfig
from raysynth.errors import ConfigError
from raysynth.rundir import RunDir, atomic_write_text
from raysynth.seeding import stable_seed
from raysynth.train.arrays import LabeledArrays, ProtocolData
from raysynth.train.augment import resolve_kind
from raysynth.train.loops import end_to_end_loop
from raysynth.train.models import encoder_config
from raysynth.train.protocol import evaluate
from raysynth.train.session import run_trainer
from raysynth.tune.search import SearchResult

log = logging.getLogger("raysynth.flows")

METHODS = ("supcon_real", "supcon_mixed", "unicon")


def search(val: ProtocolData, cfg: RunConfig, run: RunDir, resume: bool) -> dict[str, Any]:
    """The weight search (or the fixed ``tune.weights``); cached in ``tune/summary.json``."""
    done = run.read_json("tune/summary.json")
    if done is not None:
        return done
    if cfg.tune.weights:
        if len(cfg.tune.weights) != val.num_classes:
            raise ConfigError(
                f"tune.weights has {len(cfg.tune.weights)} values; give one per class "
                f"({val.num_classes})"
            )
        result = SearchResult(list(cfg.tune.weights), float("nan"), float("nan"), 0, 0, 0.0)
    elif cfg.tune.searcher == "gp":
        from raysynth.tune.gp import search_weights_gp

        result = search_weights_gp(val, cfg, run.sub("tune") / "gp")
    else:
        from raysynth.tune.search import search_weights

        result = search_weights(val, cfg, run.sub("tune"), resume=resume)
    summary = {**result.summary(), "best_weights": result.best_weights, "history": result.history}
    run.write_json("tune/summary.json", summary)
    return summary


def final_accuracies(
    test: ProtocolData, weights: list[float], cfg: RunConfig, storage: Path
) -> dict[str, dict[str, Any]]:
    """SupCon-Real, SupCon-Mixed and UniCon at ``weights``, same protocol, test split.

    Each encoder run is resumable: a finished run is never redone, an interrupted one continues
    from its last checkpoint.
    """
    seed = stable_seed(cfg.seed, "final")
    out = {}
    for method in METHODS:
        w = weights if method == "unicon" else None
        res = evaluate(test, method, w, cfg, seed, storage, method, save_models=True, resumable=True)
        out[method] = res.summary()
        log.info("final %s: %.4f ± %.4f (test)", method, res.mean, res.std)
    return out


def classifier_runs(
    real: LabeledArrays,
    synthetic: LabeledArrays,
    test: LabeledArrays,
    groups: dict[str, list[int]],
    num_classes: int,
    cfg: RunConfig,
    storage: Path,
    name: str,
    mix_fraction: float = 0.0,
) -> dict[str, Any]:
    """``protocol.n_contr`` end-to-end classifiers (different seeds); per-group mean and std."""
    size = int(real.x.shape[-1])
    enc = encoder_config(cfg.encoder.arch, int(real.x.shape[1]), size, cfg.encoder.width,
                         cfg.encoder.feat_dim)
    runs = []
    for r in range(cfg.protocol.n_contr):
        run_dir = storage / f"{name}-r{r}"
        done = run_dir / "result.json"
        if done.is_file():
            runs.append(json.loads(done.read_text()))
            continue
        loop_cfg = {
            "real": real, "synthetic": synthetic, "eval": test, "groups": groups,
            "num_classes": num_classes, "encoder_cfg": enc, "cfg": cfg.end_to_end,
            "aug_kind": resolve_kind(cfg.encoder.augment, size),
            "seed": stable_seed(cfg.seed, name, r), "save_dir": str(run_dir / "model"),
            "checkpoint_dir": str(run_dir / "ckpt"), "checkpoint_every": cfg.train.checkpoint_every,
            "threads": max(1, int(cfg.train.cpus_per_worker)), "mix_fraction": mix_fraction,
        }
        metrics = run_trainer(end_to_end_loop, loop_cfg, cfg.train, f"{name}-r{r}", storage)
        atomic_write_text(done, json.dumps(metrics))
        runs.append(metrics)
    keys = runs[0].keys()
    return {
        k: {"mean": float(np.nanmean([m[k] for m in runs])),
            "std": float(np.nanstd([m[k] for m in runs])), "runs": len(runs)}
        for k in keys
    }


def classifier_flow(
    real_train: LabeledArrays,
    synthetic: LabeledArrays,
    test: LabeledArrays,
    groups: dict[str, list[int]],
    num_classes: int,
    cfg: RunConfig,
    run: RunDir,
) -> dict[str, Any]:
    """Real-only against real ∪ synthetic, the same classifier and protocol."""
    storage = run.sub("train")
    empty = LabeledArrays.empty_like(real_train)
    real_only = classifier_runs(real_train, empty, test, groups, num_classes, cfg, storage, "real_only")
    mix = cfg.mix.fraction if cfg.mix.enabled else 0.0
    with_syn = classifier_runs(real_train, synthetic, test, groups, num_classes, cfg, storage,
                               "with_synthetic", mix_fraction=mix)
    for name, res in (("real only", real_only), ("with synthetic", with_syn)):
        log.info("final classifier, %s: %s", name,
                 ", ".join(f"{k} {v['mean']:.3f}" for k, v in res.items()))
    return {"real_only": real_only, "with_synthetic": with_syn}
