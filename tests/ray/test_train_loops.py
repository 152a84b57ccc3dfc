"""Training through Ray Train: local mode, DDP with 2 gloo workers, resume, NaN handling."""

import numpy as np
import pytest
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


def test_ddp_two_gloo_workers(ray_local, digits3, tmp_path):
    cfg = _cfg(**{"encoder.epochs": 4})
    scaling = ScalingConfig(num_workers=2, cpus_per_worker=1)
    metrics = run_trainer(
        contrastive_run_loop, _loop_cfg(digits3, cfg, threads=1, save_dir=str(tmp_path / "m")),
        scaling, "ddp", tmp_path,
    )
    assert metrics["world_size"] == 2
    assert len(metrics["accs"]) == 2 and all(0.0 <= a <= 1.0 for a in metrics["accs"])
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
