"""The classifier flow records test accuracy per class (``per_class``) beside the groups, each
equal to the saved classifier's accuracy on that class's test images counted by hand. Ray Train's
local mode (``train.num_workers=0``): no Ray instance is started."""

import numpy as np
import pytest
import torch
from tiny_models import one_thread  # noqa: F401

from raysynth.config import build_config
from raysynth.flows.classifier import compare
from raysynth.train.arrays import LabeledArrays
from raysynth.train.checkpoint import load_model

pytestmark = pytest.mark.usefixtures("one_thread")


def test_classifier_flow_records_per_class_accuracy(tmp_path):
    rng = np.random.default_rng(0)
    y = np.arange(24) % 3
    x = (rng.random((24, 1, 8, 8)) * 0.3 + y[:, None, None, None] / 3).astype(np.float32)
    real, test = LabeledArrays(x[:12], y[:12]), LabeledArrays(x[12:], y[12:])
    syn = LabeledArrays(x[:6] + 0.05, y[:6])
    cfg = build_config(overrides={
        "end_to_end.epochs": 3, "end_to_end.batch_size": 8, "encoder.augment": "none",
        "encoder.width": 4, "protocol.n_contr": 2, "train.num_workers": 0})
    out = compare(real, syn, test, {"few": [2]}, 3, cfg, tmp_path)
    for name, res in out.items():
        assert not any(k.startswith("class:") for k in res)
        assert len(res["per_class"]) == 3 and res["few"] == res["per_class"][2]
        by_hand = []
        for r in range(2):
            net = load_model(tmp_path / f"{name}-r{r}" / "model").eval()
            with torch.no_grad():
                pred = net(torch.from_numpy(test.x)).argmax(1).numpy()
            by_hand.append([float(np.mean(pred[test.y == c] == c)) for c in range(3)])
        for c in range(3):
            vals = [run[c] for run in by_hand]
            assert res["per_class"][c] == {"mean": pytest.approx(np.mean(vals)),
                                           "std": pytest.approx(np.std(vals)), "runs": 2}
        # 4 test images per class: the overall accuracy is the mean of the per-class ones
        assert res["overall"]["mean"] == pytest.approx(np.mean([p["mean"] for p in
                                                                res["per_class"]]))
