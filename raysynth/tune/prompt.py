"""The (λ, β) search of AiR's prompt learning on Ray Tune: :func:`prompt_learning_trainable` runs
one (λ, β) as a Ray Tune function trainable that builds the model in the trial
(:func:`~raysynth.pseudolabel.prompt_train.run_prompt_trial`) and reports the validation accuracy
per iteration; :func:`search_prompt_params` searches (λ, β) with the one Tune builder
(:func:`raysynth.tune.tuner.build_search_tuner`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from raysynth.config.schema import RunConfig
from raysynth.pseudolabel.prompt import PromptData
from raysynth.pseudolabel.prompt_train import PromptTrialSpec, run_prompt_trial
from raysynth.tune.tuner import build_search_tuner

METRIC = "val_acc"  # what the (λ, β) search maximises
EXPERIMENT = "prompt"  # its folder under tune_root


def prompt_learning_trainable(
    config: dict[str, Any], data: PromptData, spec: PromptTrialSpec
) -> None:
    """Ray Tune function trainable: :func:`run_prompt_trial` reporting ``val_acc`` (and the rest
    of each iteration's record) with ``ray.tune.report``. Use it as
    ``tune.with_parameters(prompt_learning_trainable, data=…, spec=…)``."""
    import ray.tune

    torch.set_num_threads(spec.threads)
    run_prompt_trial(config, data, spec, report=ray.tune.report)


def search_prompt_params(
    data: PromptData,
    spec: PromptTrialSpec,
    cfg: RunConfig,
    tune_root: str | Path,
    lam_range: tuple[float, float] = (0.0, 2.0),
    beta_range: tuple[float, float] = (0.0, 2.0),
    resume: bool = False,
) -> dict[str, Any]:
    """Search (λ, β) with Ray Tune + HyperOpt under ``cfg.tune`` (samples, random points,
    concurrency, resources per trial) in ``tune_root/prompt``; with ``tune.warm_start`` the
    text-only point (0, 0) and the paper's (1, 1) go first. Returns ``{"lam", "beta", "val_acc",
    "trials"}`` of the best trial (its last report); needs a connected Ray."""
    from ray import tune


    points = [{"lam": 0.0, "beta": 0.0}, {"lam": 1.0, "beta": 1.0}]
    points = [
        p
        for p in points
        if lam_range[0] <= p["lam"] <= lam_range[1] and beta_range[0] <= p["beta"] <= beta_range[1]
    ]
    spec = dataclasses.replace(spec, threads=max(int(cfg.tune.cpus_per_trial), 1))
    tuner = build_search_tuner(
        tune.with_parameters(prompt_learning_trainable, data=data, spec=spec),
        {"lam": tune.uniform(*lam_range), "beta": tune.uniform(*beta_range)},
        cfg,
        tune_root,
        points=points if cfg.tune.warm_start else None,
        metric=METRIC,
        name=EXPERIMENT,
        resume=resume,
    )
    grid = tuner.fit()
    done = [r for r in grid if r.error is None and r.metrics and METRIC in r.metrics]
    if not done:
        errors = [str(r.error) for r in grid if r.error is not None][:3]
        raise RuntimeError(f"no trial of the prompt search finished; first errors: {errors}")
    best = max(done, key=lambda r: r.metrics[METRIC])
    return {
        "lam": float(best.config["lam"]),
        "beta": float(best.config["beta"]),
        "val_acc": float(best.metrics[METRIC]),
        "trials": len(done),
    }


__all__ = ["EXPERIMENT", "METRIC", "prompt_learning_trainable", "search_prompt_params"]
