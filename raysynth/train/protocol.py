"""UniCon's evaluation protocol (paper 000, Alg. 1): n_contr encoder runs × n_classif classifier
runs, each resampling its data; the mean of the n_contr·n_classif accuracies is the objective.

The test split is only ever passed here for the final report; the search uses validation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from raysynth import columns as col
from raysynth import ray_data
from raysynth.config.schema import RunConfig
from raysynth.files import cached
from raysynth.seeding import stable_seed
from raysynth.storage import path as storage_path
from raysynth.train.arrays import ProtocolData, sample_per_class
from raysynth.train.augment import resolve_kind
from raysynth.train.loops import contrastive_run_loop
from raysynth.train.models import encoder_config
from raysynth.train.session import run_trainer
from raysynth.train.streamed import StreamSpec


@dataclass
class ProtocolResult:
    """Accuracies (and eval cross-entropies) of every classifier run (``n_contr · n_classif``)."""

    accs: list[float]
    group_accs: list[dict[str, float]]
    nlls: list[float] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return float(np.mean(self.accs))

    @property
    def std(self) -> float:
        return float(np.std(self.accs))

    @property
    def nll(self) -> float:
        """Mean eval cross-entropy: breaks ties between equal accuracies (lower is better)."""
        return float(np.mean(self.nlls)) if self.nlls else float("nan")

    def summary(self) -> dict[str, Any]:
        """Mean, std and count of the accuracies, each group's mean and std, and with
        :func:`class_groups` evaluated, ``per_class``: one ``{mean, std}`` per class."""
        out: dict[str, Any] = {"mean": self.mean, "std": self.std, "runs": len(self.accs)}
        groups = [k for k in (self.group_accs[0] if self.group_accs else {}) if k != "overall"]
        for g in groups:
            vals = [ga.get(g, np.nan) for ga in self.group_accs]
            out[g] = {"mean": float(np.nanmean(vals)), "std": float(np.nanstd(vals))}
        return fold_class_groups(out)


CLASS_GROUP = "class:"  # the per-class "groups" (one class each) of :func:`class_groups`


def class_groups(num_classes: int) -> dict[str, list[int]]:
    """One group per class, so that the group accuracy of each is that class's accuracy."""
    return {f"{CLASS_GROUP}{c}": [c] for c in range(num_classes)}


def fold_class_groups(summary: dict[str, Any]) -> dict[str, Any]:
    """``summary`` with its :func:`class_groups` entries moved into ``per_class`` (a list in
    class order)."""
    keys = sorted((k for k in summary if k.startswith(CLASS_GROUP)),
                  key=lambda k: int(k[len(CLASS_GROUP):]))
    out = {k: v for k, v in summary.items() if not k.startswith(CLASS_GROUP)}
    if keys:
        out["per_class"] = [summary[k] for k in keys]
    return out


@dataclass(frozen=True)
class StreamedData:
    """The protocol's data as datasets (``ray_data.image_table``, nothing decoded here): the real
    train split ``real``, the accepted synthetic rows ``synthetic`` (None when there are none),
    the real ``pool`` and the ``eval`` split; ``spec`` their per-class counts and image shape.
    Each encoder run's training rows are :meth:`training`; the Train workers decode them."""

    real: Any
    synthetic: Any | None
    pool: Any
    eval: Any
    spec: StreamSpec
    num_classes: int
    groups: dict[str, list[int]] = field(default_factory=dict)

    @property
    def image_size(self) -> int:
        return self.spec.image_size

    @property
    def channels(self) -> int:
        return self.spec.channels

    def training(self, method: str) -> Any:
        """The rows ``method`` trains on, each flagged ``is_synthetic``, shuffled once and read in
        a new order each pass (``ray_data.shuffled``): the real rows, and the synthetic ones unless the method is ``supcon_real``
        (as ``contrastive._training_rows``)."""
        syn = None if method == "supcon_real" else self.synthetic
        return ray_data.shuffled(ray_data.flagged_union(self.real, syn, col.IS_SYNTHETIC))

    def datasets(self, method: str) -> dict[str, Any]:
        return {"train": self.training(method), "pool": self.pool, "eval": self.eval}


Data = ProtocolData | StreamedData


def model_config(cfg: RunConfig, data: Data) -> dict[str, Any]:
    enc = encoder_config(
        cfg.encoder.arch, data.channels, data.image_size, cfg.encoder.width, cfg.encoder.feat_dim,
        cfg.encoder.pretrained,
    )
    return {"kind": "contrastive", "encoder": enc, "proj_dim": cfg.encoder.proj_dim}


def draw_synthetic(data: ProtocolData, seed: int) -> ProtocolData:
    """This run's synthetic set: ``synthetic_per_class`` rows per class (all when 0)."""
    if not data.synthetic_per_class or len(data.synthetic) == 0:
        return data
    rng = np.random.default_rng(seed)
    idx = sample_per_class(data.synthetic.y, data.synthetic_per_class, rng, data.num_classes)
    return replace(data, synthetic=data.synthetic.take(idx))


def evaluate(
    data: Data,
    method: str,
    weights: np.ndarray | list[float] | None,
    cfg: RunConfig,
    seed: int,
    storage: str | Path,
    name: str,
    *,
    save_models: bool = False,
    resumable: bool = False,
    threads: int = 0,
    on_run: Callable[[], None] | None = None,
) -> ProtocolResult:
    """Run the protocol for one method (and one weight vector for UniCon).

    Each encoder run is one Ray Train run named ``{name}-r{r}`` under ``storage``, on arrays
    in its loop config or (:class:`StreamedData`) on datasets given to the trainer, the
    training rows split equally across its workers (DDP stays in step). With
    ``resumable`` the runs checkpoint to ``storage/{name}-r{r}/ckpt`` and resume from there;
    with ``save_models`` the final encoder is written to ``storage/{name}-r{r}/model``.
    ``on_run()`` is called after each encoder run (progress).
    """
    accs: list[float] = []
    nlls: list[float] = []
    groups: list[dict[str, float]] = []
    mcfg = model_config(cfg, data)
    aug = resolve_kind(cfg.encoder.augment, data.image_size)
    for r in range(cfg.protocol.n_contr):
        run_seed = stable_seed(seed, method, r)
        run_dir = storage_path(storage) / f"{name}-r{r}"
        loop_cfg = _loop_config(data, method, weights, cfg, run_seed, mcfg, aug, threads)
        if resumable:
            loop_cfg["checkpoint_dir"] = run_dir / "ckpt"  # a Path, or a RemotePath with its fs
            loop_cfg["checkpoint_every"] = cfg.train.checkpoint_every
        if save_models:
            loop_cfg["save_dir"] = run_dir / "model"
        done = run_dir / "result.json" if resumable else None
        datasets = data.datasets(method) if isinstance(data, StreamedData) else None
        metrics = _encoder_run(loop_cfg, cfg, f"{name}-r{r}", storage, done, datasets)
        accs.extend(metrics["accs"])
        nlls.extend(metrics.get("nlls", []))  # absent from results written by older versions
        groups.extend(metrics["group_accs"])
        if on_run is not None:
            on_run()
    return ProtocolResult(accs, groups, nlls)


def _loop_config(
    data: Data,
    method: str,
    weights: np.ndarray | list[float] | None,
    cfg: RunConfig,
    run_seed: int,
    mcfg: dict[str, Any],
    aug: str,
    threads: int,
) -> dict[str, Any]:
    """The config of one encoder run's ``contrastive_run_loop`` (its synthetic rows drawn, or
    the description of the streamed datasets)."""
    inputs: dict[str, Any] = {"data": draw_synthetic(data, run_seed)} if isinstance(
        data, ProtocolData) else {"stream": data.spec, "num_classes": data.num_classes,
                                  "groups": data.groups}
    return {
        **inputs,
        "method": method,
        "weights": None if weights is None else [float(w) for w in weights],
        "encoder": cfg.encoder,
        "classifier": cfg.classifier,
        "model_cfg": mcfg,
        "aug_kind": aug,
        "seed": run_seed,
        "n_classif": cfg.protocol.n_classif,
        # Torch threads per worker: the CPUs it was given (oversubscribing tiny models on a
        # busy machine costs more than it gains).
        "threads": threads or max(1, int(cfg.train.cpus_per_worker)),
    }


def _encoder_run(
    loop_cfg: dict[str, Any], cfg: RunConfig, run_name: str, storage: str | Path,
    done: Path | None, datasets: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One encoder run's metrics; with ``done`` (resumable runs) they are written there, and a
    run that finished before an interruption is read back from there instead of redone."""
    def train() -> dict[str, Any]:
        return run_trainer(contrastive_run_loop, loop_cfg, cfg.train, run_name, storage,
                           datasets, ("train",))

    return train() if done is None else cached(done, train)
