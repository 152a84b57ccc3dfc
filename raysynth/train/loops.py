"""Ray Train ``train_loop_per_worker`` functions. Each takes one config dict (see the keys below)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from raysynth.seeding import stable_seed
from raysynth.train.arrays import LabeledArrays, ProtocolData, sample_per_class
from raysynth.train.checkpoint import write_checkpoint
from raysynth.train.classifier import (
    accuracy,
    context_group_accuracy,
    end_to_end_optimizer,
    fit_end_to_end,
    fit_mlp,
    group_accuracy,
)
from raysynth.train.contrastive import embed_shard, fit_encoder, fit_encoder_streamed
from raysynth.train.session import TrainSession
from raysynth.train.streamed import StreamSpec, evaluate_streamed, fit_streamed
from raysynth.train.streams import FlaggedDecode, KeyedDecode


def _threads(config: dict[str, Any]) -> None:
    if config.get("threads"):
        torch.set_num_threads(int(config["threads"]))


def contrastive_run_loop(config: dict[str, Any]) -> None:
    """One encoder run of UniCon's Alg. 1, then ``n_classif`` classifier runs on its embeddings.

    Keys: ``data`` (:class:`ProtocolData`, synthetic already drawn for this run) or ``stream``
    (:class:`StreamSpec`: the trainer's datasets ``train`` — this method's rows, flagged and
    split across the workers —, ``pool`` and ``eval``, with ``num_classes`` and ``groups``),
    ``method``, ``weights`` (per class, or None), ``encoder`` (EncoderConfig), ``classifier``
    (ClassifierConfig), ``model_cfg``, ``aug_kind``, ``seed``, ``n_classif``, optional
    ``checkpoint_dir`` / ``checkpoint_every`` (resume), ``save_dir`` (final model), ``threads``.
    Reports ``accs`` (one eval accuracy per classifier run), ``nlls`` (their mean eval
    cross-entropy) and ``group_accs``.
    """
    _threads(config)
    data: ProtocolData | None = config.get("data")
    spec: StreamSpec | None = config.get("stream")
    session = TrainSession(config.get("checkpoint_dir"), config.get("checkpoint_every", 0))
    dev = session.device

    def on_epoch(epoch: int, loss: float, model: torch.nn.Module, opt: torch.optim.Optimizer):
        session.end_epoch(
            epoch, config["encoder"].epochs, loss, model, config["model_cfg"], opt,
            f"{config['method']} encoder",
        )

    weights = config.get("weights")
    num_classes = data.num_classes if data is not None else config["num_classes"]
    args = (config["method"], None if weights is None else np.asarray(weights, np.float32),
            num_classes, config["encoder"], config["model_cfg"], config["aug_kind"],
            config["seed"], dev)
    hooks = {"prepare": session.prepare, "restore": session.restore, "on_epoch": on_epoch}
    if spec is not None:  # streamed: this worker's equal shard of the method's rows
        decode = FlaggedDecode(spec.channels, spec.image_size, "the training rows")
        model = fit_encoder_streamed(session.dataset("train"), decode, *args, **hooks)
    else:
        model = fit_encoder(data.train, data.synthetic, *args, rank=session.rank,
                            world_size=session.world_size, **hooks)
    metrics: dict[str, Any] = {
        "accs": [], "nlls": [], "group_accs": [], "world_size": session.world_size
    }
    if session.rank == 0:
        if config.get("save_dir"):
            write_checkpoint(config["save_dir"], model, config["model_cfg"])
        feats = _features(model, config, session, dev)
        groups = data.groups if data is not None else config["groups"]
        metrics.update(classify_runs(*feats, groups, num_classes, config["classifier"],
                                     config["seed"], config["n_classif"]))
    session.report(metrics)


def _features(
    model: torch.nn.Module, config: dict[str, Any], session: TrainSession, dev: torch.device
) -> tuple[torch.Tensor, ...]:
    """Frozen features and labels of the pool and of the eval split: from the arrays, or
    (streamed) from the ``pool`` and ``eval`` datasets read here (only features are kept)."""
    space = config["classifier"].features
    spec: StreamSpec | None = config.get("stream")
    if spec is None:
        data: ProtocolData = config["data"]
        return tuple(t for s in (data.pool, data.eval) for t in (
            model.embed(torch.from_numpy(s.x).to(dev), space), torch.from_numpy(s.y).to(dev)))
    out: tuple[torch.Tensor, ...] = ()
    for name, what in (("pool", "the real pool split"), ("eval", "the evaluation split")):
        decode = KeyedDecode(spec.channels, spec.image_size, what)
        out += embed_shard(model, session.dataset(name), decode, space, dev)
    return out


def classify_runs(
    pool_f: torch.Tensor,
    pool_y: torch.Tensor,
    eval_f: torch.Tensor,
    eval_y: torch.Tensor,
    groups: dict[str, list[int]],
    num_classes: int,
    cfg: Any,
    seed: int,
    n_classif: int,
) -> dict[str, list]:
    """``n_classif`` MLPs on frozen features, each on its own draw from the pool: accuracy,
    mean cross-entropy and per-group accuracy of each on the eval features."""
    pool_labels = pool_y.cpu().numpy()
    accs, nlls, group_accs = [], [], []
    for j in range(n_classif):
        s = stable_seed(seed, "classifier", j)
        idx = sample_per_class(pool_labels, cfg.per_class, np.random.default_rng(s), num_classes)
        idx_t = torch.from_numpy(idx).to(pool_f.device)
        mlp = fit_mlp(pool_f[idx_t], pool_y[idx_t], num_classes, cfg, s)
        with torch.no_grad():
            logits = mlp(eval_f)
        accs.append(accuracy(logits, eval_y))
        nlls.append(float(torch.nn.functional.cross_entropy(logits, eval_y)))
        group_accs.append(group_accuracy(logits, eval_y, groups))
    return {"accs": accs, "nlls": nlls, "group_accs": group_accs}


def end_to_end_loop(config: dict[str, Any]) -> None:
    """End-to-end classifier on real ∪ synthetic; reports per-group accuracy on ``eval``.

    Keys: ``real``, ``synthetic``, ``eval`` (:class:`LabeledArrays`) or ``stream`` (:class:`
    StreamSpec`: the trainer's datasets of those names), ``groups``, ``num_classes``,
    ``encoder_cfg`` (model JSON of the encoder), ``cfg`` (EndToEndConfig), ``aug_kind``,
    ``seed``, optional ``checkpoint_dir`` / ``checkpoint_every``, ``save_dir``, ``threads``,
    ``eval_contexts`` (each eval row's group) with ``class_names``.
    """
    _threads(config)
    session = TrainSession(config.get("checkpoint_dir"), config.get("checkpoint_every", 0))
    dev = session.device
    from raysynth.train.models import ImageClassifier, build_encoder

    model_cfg = {"kind": "classifier", "encoder": config["encoder_cfg"], "num_classes": config["num_classes"]}
    torch.manual_seed(config["seed"])
    model = session.prepare(ImageClassifier(build_encoder(config["encoder_cfg"]), config["num_classes"]))
    cfg = config["cfg"]
    opt = end_to_end_optimizer(model, cfg)
    start = session.restore(model, opt)

    ends: list[float] = []  # when each epoch ended (raysynth bench learn: per-epoch rates)

    def on_epoch(epoch: int, loss: float, m: torch.nn.Module, o: torch.optim.Optimizer) -> None:
        ends.append(time.perf_counter())
        session.end_epoch(epoch, cfg.epochs, loss, m, model_cfg, o, "end-to-end classifier")

    spec: StreamSpec | None = config.get("stream")
    started = time.perf_counter()
    if spec is not None:  # streamed: the tables come as dataset shards (TorchTrainer datasets=)
        shards = {n: session.dataset(n) for n in ("real", "synthetic")}
        model = fit_streamed(
            model, opt, shards, spec, cfg, config["aug_kind"], config["seed"], dev,
            range(start, cfg.epochs), on_epoch, config.get("mix_fraction", 0.0), session.rank,
        )
    else:
        real: LabeledArrays = config["real"]
        if session.world_size > 1:
            usable = len(real) - len(real) % session.world_size  # equal shards keep DDP in step
            real = real.take(np.arange(session.rank, usable, session.world_size))
        model = fit_end_to_end(
            real, config["synthetic"], config["num_classes"], config["encoder_cfg"], cfg,
            config["aug_kind"], config["seed"], dev, on_epoch=on_epoch, start_epoch=start,
            model=model, optimizer=opt, mix_fraction=config.get("mix_fraction", 0.0),
        )
    train_s = time.perf_counter() - started
    metrics: dict[str, Any] = {}
    if session.rank == 0:
        net = model.module if hasattr(model, "module") else model
        if config.get("save_dir"):
            write_checkpoint(config["save_dir"], net, model_cfg)  # a local or remote folder
        metrics = _evaluate(net, config, session, dev)
        if config.get("timing"):  # raysynth bench learn: rank 0's training time, per epoch
            metrics["train_s"] = train_s
            metrics["epoch_s"] = list(np.diff([started, *ends]))
    session.report(metrics)


def _evaluate(
    net: torch.nn.Module, config: dict[str, Any], session: TrainSession, dev: torch.device
) -> dict[str, float]:
    """Per-group accuracy on ``eval`` (arrays) or on the ``eval`` dataset (streamed)."""
    groups = config.get("groups", {})
    spec: StreamSpec | None = config.get("stream")
    if spec is not None:
        return evaluate_streamed(net, session.dataset("eval"), spec, groups, dev)
    ev: LabeledArrays = config["eval"]
    with torch.no_grad():
        logits = net.eval()(torch.from_numpy(ev.x).to(dev))
    metrics = group_accuracy(logits, torch.from_numpy(ev.y).to(dev), groups)
    if config.get("eval_contexts"):  # NICO++: worst-group and per-group accuracy
        metrics.update(context_group_accuracy(
            logits.argmax(1).cpu().numpy(), ev.y, config["eval_contexts"], config["class_names"],
        ))
    return metrics
