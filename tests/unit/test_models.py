import numpy as np
import pytest
import torch

from raysynth.errors import RunDirError
from raysynth.train.augment import augment, two_views
from raysynth.train.checkpoint import load_model, restore_training, write_checkpoint
from raysynth.train.classifier import effective_prior, group_accuracy
from raysynth.train.models import build_model, encoder_config, resolve_arch


def _cfg(kind="contrastive"):
    enc = encoder_config("auto", 1, 8, width=4, feat_dim=16)
    if kind == "contrastive":
        return {"kind": "contrastive", "encoder": enc, "proj_dim": 8}
    return {"kind": "classifier", "encoder": enc, "num_classes": 3}


def test_arch_auto_picks_by_size():
    assert resolve_arch("auto", 8) == "small_cnn"
    assert resolve_arch("auto", 64) == "resnet18"
    net = build_model({"kind": "classifier", "encoder": encoder_config("auto", 3, 32, 4, 8), "num_classes": 5})
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 5)
    res = build_model({"kind": "classifier", "encoder": encoder_config("resnet18", 3, 16, 4, 8), "num_classes": 5})
    assert res(torch.rand(2, 3, 16, 16)).shape == (2, 5)


@pytest.mark.parametrize("kind", ["contrastive", "classifier"])
def test_checkpoint_round_trip_gives_identical_outputs(tmp_path, kind):
    torch.manual_seed(0)
    model = build_model(_cfg(kind)).eval()
    x = torch.rand(4, 1, 8, 8)
    write_checkpoint(tmp_path / "ck", model, _cfg(kind))
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["model.json", "model.safetensors"]
    again = load_model(tmp_path / "ck").eval()
    torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)


def test_optimizer_state_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build_model(_cfg())
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.rand(4, 1, 8, 8)).sum().backward()
    opt.step()
    write_checkpoint(tmp_path / "ck", model, _cfg(), opt, {"epoch": 3})
    model2 = build_model(_cfg())
    opt2 = torch.optim.Adam(model2.parameters(), lr=1e-3)
    state = restore_training(tmp_path / "ck", model2, opt2)
    assert state["epoch"] == 3
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert s1.keys() == s2.keys()
    for k in s1:
        torch.testing.assert_close(s1[k]["exp_avg_sq"], s2[k]["exp_avg_sq"], rtol=0, atol=0)


def test_load_model_missing_folder_is_clear(tmp_path):
    with pytest.raises(RunDirError, match="not a raysynth checkpoint"):
        load_model(tmp_path / "nothing")


def test_augment_is_seeded_and_in_range():
    x = torch.rand(6, 1, 8, 8)
    a = two_views(x, "small", torch.Generator().manual_seed(1))
    b = two_views(x, "small", torch.Generator().manual_seed(1))
    assert a.shape == (6, 2, 1, 8, 8) and torch.equal(a, b)
    assert not torch.equal(a[:, 0], a[:, 1])  # two independent views
    assert a.min() >= 0 and a.max() <= 1
    p = augment(torch.rand(3, 3, 32, 32), "photo", torch.Generator().manual_seed(0))
    assert p.shape == (3, 3, 32, 32) and p.min() >= 0 and p.max() <= 1
    assert torch.equal(augment(x, "none"), x)


def test_balanced_softmax_prior_and_group_accuracy():
    y_real = np.array([0, 0, 0, 1])
    y_syn = np.array([1, 1])
    np.testing.assert_allclose(effective_prior(y_real, y_syn, 2, 0.5), [0.375, 0.625])
    np.testing.assert_allclose(effective_prior(y_real, y_syn, 2, 0.0), [0.75, 0.25])
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1, 1, 1])
    acc = group_accuracy(logits, labels, {"many": [0], "few": [1]})
    assert acc == {"overall": 0.75, "many": 1.0, "few": pytest.approx(2 / 3)}
