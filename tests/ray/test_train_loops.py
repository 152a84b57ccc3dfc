"""Training through Ray Train: local mode, DDP with 2 gloo workers, resume, NaN handling."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import ray.cloudpickle
import torch
from tiny_models import digits3_protocol

from raysynth.config import build_config
from raysynth.config.schema import ScalingConfig
from raysynth.errors import TrainingError
from raysynth.train.arrays import LabeledArrays, ProtocolData
from raysynth.train.checkpoint import load_model
from raysynth.train.loops import contrastive_run_loop, end_to_end_loop
from raysynth.train.models import encoder_config
from raysynth.train.protocol import evaluate, model_config
from raysynth.train.session import run_trainer

# The workers unpickle recording_loop below; this test module is not importable there.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def digits3():
    return digits3_protocol()


def _cfg(**over):
    base = {"encoder.epochs": 6, "encoder.width": 8, "encoder.feat_dim": 32, "classifier.epochs": 30,
            "protocol.n_contr": 1, "protocol.n_classif": 2}
    return build_config(overrides={**base, **over})


def _loop_cfg(data, cfg, **extra):
    return {
        "data": data, "method": "unicon", "weights": [0.5, 0.5, 0.5], "encoder": cfg.encoder,
        "classifier": cfg.classifier, "model_cfg": model_config(cfg, data), "aug_kind": "small",
        "seed": 3, "n_classif": 2, **extra,
    }


def test_protocol_local_mode_learns(digits3, tmp_path):
    cfg = _cfg(**{"encoder.epochs": 15})
    res = evaluate(digits3, "unicon", [0.5] * 3, cfg, 0, tmp_path, "u")
    assert len(res.accs) == 2 and res.summary()["runs"] == 2
    assert res.mean > 0.85  # 0 vs 1 vs 7 on 8x8 digits is easy after a few epochs
    # the eval cross-entropy of each classifier run (the search's tie-break), from its own model
    assert len(res.nlls) == 2 and all(0 < v < np.log(3) for v in res.nlls)
    assert res.nll == pytest.approx(np.mean(res.nlls))


def test_resume_matches_uninterrupted_training(digits3, tmp_path):
    """4 epochs with checkpoints, then 8 from the same folder == 8 epochs straight."""
    cfg8 = _cfg(**{"encoder.epochs": 8})
    cfg4 = _cfg(**{"encoder.epochs": 4})
    straight = _loop_cfg(digits3, cfg8, save_dir=str(tmp_path / "straight"))
    run_trainer(contrastive_run_loop, straight, ScalingConfig(), "s", tmp_path)
    ck = str(tmp_path / "ckpt")
    first = _loop_cfg(digits3, cfg4, checkpoint_dir=ck, checkpoint_every=2)
    run_trainer(contrastive_run_loop, first, ScalingConfig(), "a", tmp_path)
    assert (tmp_path / "ckpt" / "optimizer.safetensors").is_file()
    resumed = _loop_cfg(digits3, cfg8, checkpoint_dir=ck, checkpoint_every=2,
                        save_dir=str(tmp_path / "resumed"))
    run_trainer(contrastive_run_loop, resumed, ScalingConfig(), "b", tmp_path)
    a, b = load_model(tmp_path / "straight"), load_model(tmp_path / "resumed")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(p, q, msg=name)


def test_nan_loss_stops_with_epoch_and_cause(digits3, tmp_path):
    bad = LabeledArrays(np.full_like(digits3.train.x, np.nan), digits3.train.y)
    data = ProtocolData(bad, digits3.synthetic, digits3.pool, digits3.eval, 3)
    with pytest.raises(TrainingError, match=r"loss became nan at epoch 1 of 6"):
        run_trainer(contrastive_run_loop, _loop_cfg(data, _cfg()), ScalingConfig(), "n", tmp_path)


def recording_loop(config: dict) -> None:
    """``contrastive_run_loop``, recording on each rank what its one step trained on (the two
    views, labels, synthetic flags and loss settings) and its parameters after that step."""
    from raysynth.train import contrastive as c
    from raysynth.train import session as s
    from raysynth.train.loops import contrastive_run_loop

    out, seen = Path(config["record"]), {}
    views, loss, end_epoch = c.two_views, c.contrastive_loss, s.TrainSession.end_epoch

    def rec_views(x, kind, gen):
        v = views(x, kind, gen)
        seen.setdefault("rows", []).append(x.numpy().copy())
        seen.setdefault("views", []).append(v.numpy().copy())
        return v

    def rec_loss(feats, labels, synthetic, class_weights, mode, temperature):
        seen.setdefault("labels", []).append(labels.numpy().copy())
        seen.setdefault("synthetic", []).append(synthetic.numpy().copy())
        seen["settings"] = {"weights": class_weights.tolist(), "mode": mode, "t": temperature}
        return loss(feats, labels, synthetic, class_weights, mode, temperature)

    def rec_end_epoch(self, epoch, epochs, value, model, *args, **kwargs):
        net = model.module if hasattr(model, "module") else model
        np.savez(out / f"rank{self.rank}.npz", **{k: np.concatenate(v) for k, v in seen.items()
                                                   if k != "settings"},
                 **{f"p:{k}": v.detach().numpy() for k, v in net.named_parameters()})
        (out / f"rank{self.rank}.json").write_text(json.dumps(seen["settings"]))
        return end_epoch(self, epoch, epochs, value, model, *args, **kwargs)

    c.two_views, c.contrastive_loss, s.TrainSession.end_epoch = rec_views, rec_loss, rec_end_epoch
    try:
        contrastive_run_loop(config)
    finally:
        c.two_views, c.contrastive_loss, s.TrainSession.end_epoch = views, loss, end_epoch


def test_ddp_two_gloo_workers(ray_local, digits3, tmp_path):
    """One step on 2 gloo workers: the ranks train on disjoint halves of the rows and end with
    equal weights, equal to one Adam step, taken here in-process, on the mean of the two ranks'
    gradients (each rank's loss on its own batch, as DDP averages them)."""
    from raysynth.train.contrastive import new_contrastive_model
    from raysynth.train.losses import contrastive_loss

    cfg = _cfg(**{"encoder.epochs": 1, "encoder.batch_size": 32})  # 36 rows: 18 per rank, 1 step
    scaling = ScalingConfig(num_workers=2, cpus_per_worker=1)
    loop_cfg = _loop_cfg(digits3, cfg, threads=1, save_dir=str(tmp_path / "m"),
                         record=str(tmp_path))
    metrics = run_trainer(recording_loop, loop_cfg, scaling, "ddp", tmp_path)
    assert metrics["world_size"] == 2 and len(metrics["accs"]) == 2
    ranks = [dict(np.load(tmp_path / f"rank{r}.npz")) for r in (0, 1)]

    # disjoint shards that cover every training row (24 real + 12 synthetic, all distinct)
    rows = np.concatenate([digits3.train.x, digits3.synthetic.x])
    index = {r.tobytes(): i for i, r in enumerate(rows)}
    assert len(index) == len(rows) == 36
    shards = [[index[r.tobytes()] for r in rk["rows"]] for rk in ranks]
    assert [len(sh) for sh in shards] == [18, 18]
    assert not set(shards[0]) & set(shards[1]) and set(shards[0]) | set(shards[1]) == set(range(36))
    y = np.concatenate([digits3.train.y, digits3.synthetic.y])
    for rk, sh in zip(ranks, shards):
        np.testing.assert_array_equal(rk["labels"], y[sh])
        np.testing.assert_array_equal(rk["synthetic"], np.array(sh) >= 24)

    # the step by hand: mean of the per-rank gradients, one Adam step from the same init
    settings = json.loads((tmp_path / "rank0.json").read_text())
    torch.manual_seed(loop_cfg["seed"])
    model = new_contrastive_model(loop_cfg["model_cfg"]).train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.encoder.lr,
                           weight_decay=cfg.encoder.weight_decay)
    params = list(model.parameters())
    grads = []
    for rk in ranks:
        v = torch.from_numpy(rk["views"])
        feats = model(v.flatten(0, 1)).view(len(v), 2, -1)
        loss = contrastive_loss(feats, torch.from_numpy(rk["labels"]),
                                synthetic=torch.from_numpy(rk["synthetic"]),
                                class_weights=torch.tensor(settings["weights"]),
                                mode=settings["mode"], temperature=settings["t"])
        grads.append(torch.autograd.grad(loss, params))
    init = [p.detach().clone() for p in params]
    for p, g0, g1 in zip(params, *grads):
        p.grad = (g0 + g1) / 2
    opt.step()
    for name, p in model.named_parameters():
        for r, rk in enumerate(ranks):
            np.testing.assert_allclose(rk[f"p:{name}"], p.detach().numpy(), rtol=1e-5, atol=1e-6,
                                       err_msg=f"rank {r}: {name}")
    assert any(not torch.equal(a, p) for a, p in zip(init, params))  # the step moved them
    assert load_model(tmp_path / "m") is not None


def test_end_to_end_classifier_with_synthetic_share(digits3, tmp_path):
    cfg = build_config(overrides={"end_to_end.epochs": 15, "end_to_end.batch_size": 16})
    loop_cfg = {
        "real": digits3.train, "synthetic": digits3.synthetic, "eval": digits3.eval,
        "groups": {"many": [0], "few": [1, 2]}, "num_classes": 3,
        "encoder_cfg": encoder_config("small_cnn", 1, 8, 8, 32), "cfg": cfg.end_to_end,
        "aug_kind": "small", "seed": 0, "save_dir": str(tmp_path / "clf"),
    }
    metrics = run_trainer(end_to_end_loop, loop_cfg, ScalingConfig(), "e2e", tmp_path)
    assert set(metrics) >= {"overall", "many", "few"}
    assert metrics["overall"] > 0.7
    net = load_model(tmp_path / "clf")
    assert net(torch.from_numpy(digits3.eval.x[:2])).shape == (2, 3)


@pytest.mark.parametrize("mix", [False, True])
def test_diffcore_mix_of_the_classifier_flow_reaches_the_loss(tmp_path, monkeypatch, mix):
    """`mix.enabled` on the classifier flow: the batches the with-synthetic classifier trains on
    are DiffCoRe-Mix's (real rows mixed with synthetic ones of their class), exactly as a replay
    of the epoch's seeded draws gives them; without it they are the real rows. Real images are
    all 0 and synthetic ones all 1, so a mixed row is visible in every pixel."""
    from raysynth.flows.classifier import compare
    from raysynth.mix.mixing import mix_batch
    from raysynth.seeding import stable_seed
    from raysynth.train import classifier

    seen = []
    augment = classifier.augment
    monkeypatch.setattr(classifier, "augment",
                        lambda x, kind, gen: seen.append(x.clone()) or augment(x, kind, gen))
    real = LabeledArrays(np.zeros((8, 1, 8, 8), np.float32), np.arange(8) % 2)
    syn = LabeledArrays(np.ones((4, 1, 8, 8), np.float32), np.arange(4) % 2)
    cfg = build_config(overrides={
        "mix.enabled": mix, "mix.fraction": 1.0, "end_to_end.epochs": 1,
        "end_to_end.batch_size": 8, "end_to_end.synthetic_share": 0.0,
        "end_to_end.balanced_softmax": False, "encoder.augment": "none", "encoder.width": 4,
        "protocol.n_contr": 1, "train.num_workers": 0})
    compare(real, syn, real, {}, 2, cfg, tmp_path)
    assert len(seen) == 2  # one batch of 8 for the real-only classifier, one with synthetic
    assert torch.equal(seen[0], torch.zeros(8, 1, 8, 8))  # real only: never mixed
    batch = seen[1]
    if not mix:
        assert torch.equal(batch, torch.zeros(8, 1, 8, 8))
        return
    assert (batch.flatten(1).max(1).values > 0).all()  # every row got synthetic pixels
    seed = stable_seed(cfg.seed, "with_synthetic", 0)
    gen = torch.Generator().manual_seed(seed * 100_003 + 0)  # epoch 0
    perm = torch.randperm(8, generator=gen)
    want, info = mix_batch(torch.from_numpy(real.x)[perm], torch.from_numpy(real.y)[perm],
                           torch.from_numpy(syn.x), torch.from_numpy(syn.y), 1.0, gen)
    assert info.mixed.all()
    torch.testing.assert_close(batch, want, rtol=0, atol=0)
    np.testing.assert_allclose(1 - batch.mean(dim=(1, 2, 3)).numpy(), info.real_share.numpy(),
                               atol=1e-6)
