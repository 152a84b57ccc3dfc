"""The loss bench at a small size: its keys, and the identities it checks hold to 1e-5."""

from __future__ import annotations

import json

import torch

from raysynth.bench.loss import run, supcon_straightforward
from raysynth.train.losses import contrastive_loss

KEYS = {"name", "ratio", "max_abs_diff", "unicon_ms", "supcon_ms", "batch", "dim"}


def test_bench_loss_small(tmp_path, capsys):
    out = tmp_path / "bench-loss.json"
    result = run(out=str(out), batch=64, dim=32, repeats=3)
    assert result.keys() >= KEYS
    assert result["name"] == "loss"
    assert (result["batch"], result["dim"]) == (64, 32)
    assert result["max_abs_diff"] <= 1e-5
    assert result["ratio"] > 0 and result["unicon_ms"] > 0 and result["supcon_ms"] > 0
    assert json.loads(out.read_text()) == result
    assert json.loads(capsys.readouterr().out) == result


def test_bench_out_folder_gets_default_name(tmp_path):
    run(out=str(tmp_path), batch=8, dim=4, repeats=1)
    assert (tmp_path / "bench-loss.json").exists()


def test_straightforward_supcon_matches_hand_computation():
    # Two images of one class, two views each: every row's positives are the 3 other rows.
    features = torch.nn.functional.normalize(
        torch.randn(2, 2, 5, generator=torch.Generator().manual_seed(0)), dim=-1
    )
    labels = torch.tensor([4, 4])
    rows = torch.cat(torch.unbind(features, dim=1), dim=0).double()
    # A(i) is every row but i: log_softmax over the other three rows, mean over them.
    expected = torch.stack(
        [-(rows[i] @ rows[torch.arange(4) != i].T / 0.07).log_softmax(0).mean() for i in range(4)]
    ).mean()
    for loss in (supcon_straightforward(features, labels), contrastive_loss(features, labels)):
        torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)
