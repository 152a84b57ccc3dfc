"""Groups (NICO++ contexts): quotas per class × group with one prompt per group, worst-group
accuracy by hand, and the report's worst-group table."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from raysynth import columns as col
from raysynth.config.schema import SynthesisConfig
from raysynth.data import ImageSet, Splits, encode_png
from raysynth.errors import ConfigError, DataError
from raysynth.flows.real import RealData
from raysynth.plan.quotas import group_quotas, plan_round
from raysynth.report.groups import worst_group_table
from raysynth.report.markdown import build_markdown
from raysynth.train.classifier import context_group_accuracy


def _real() -> RealData:
    """Train: cat 3×autumn 1×rock; dog 2×rock (no autumn image). Test: one water image."""
    groups = ["autumn"] * 3 + ["rock"] + ["rock"] * 2 + ["water"]
    labels = [0, 0, 0, 0, 1, 1, 0]
    png = encode_png(np.zeros((2, 2), np.uint8))
    data = ImageSet(images=[png] * 7, labels=labels, class_names=["cat", "dog"],
                    sources=[f"s{i}" for i in range(7)], channels=1, group=groups)
    return RealData.from_images(data, Splits(train=np.arange(6), pool=[], val=[], test=[6]))


def test_top_up_per_class_and_group_with_a_prompt_per_group():
    real = _real()
    train = real.real_train("unused.parquet")
    assert train.group_counts == {0: {"autumn": 3, "rock": 1}, 1: {"rock": 2}}
    assert train.group_names == ("autumn", "rock", "water")
    cfg = SynthesisConfig(quota="top_up", top_up_to=4, per_group=True,
                          prompt="{class} in {context}")
    layout = group_quotas(cfg, train.group_counts, train.group_names, 2)
    assert layout == {0: [("autumn", 1), ("rock", 3), ("water", 4)],
                      1: [("autumn", 4), ("rock", 2), ("water", 4)]}
    counts = {c: sum(n for _, n in g) for c, g in layout.items()}
    rows = plan_round(cfg, ["cat", "dog"], train.ids_by_class, counts, 0, 0, layout=layout)
    got = Counter(r[col.PROMPT] for r in rows)
    assert got == {"cat in autumn": 1, "cat in rock": 3, "cat in water": 4,
                   "dog in autumn": 4, "dog in rock": 2, "dog in water": 4}
    # every (class, group) real + synthetic count reaches the target
    for c, name in enumerate(["cat", "dog"]):
        for g in train.group_names:
            assert train.group_counts.get(c, {}).get(g, 0) + got[f"{name} in {g}"] == 4
    assert len({r[col.SAMPLE_ID] for r in rows}) == len(rows)


def test_per_group_needs_groups_and_a_context_placeholder():
    with pytest.raises(ConfigError, match=r"put \{context\} in synthesis.prompt"):
        SynthesisConfig(per_group=True)
    cfg = SynthesisConfig(quota="top_up", top_up_to=4, per_group=True, prompt="{class} {context}")
    with pytest.raises(DataError, match="data.group=folder"):
        group_quotas(cfg, {}, (), 2)


def test_worst_group_accuracy_equals_a_hand_computation():
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 0])
    ctx = ["a", "a", "b", "a", "b", "b", "b", ""]
    pred = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    # cat in a: 1/2; cat in b: 1/1; dog in a: 1/1; dog in b: 1/3; the "" row is left out
    got = context_group_accuracy(pred, labels, ctx, ["cat", "dog"])
    assert got == pytest.approx({"group:cat in a": 0.5, "group:cat in b": 1.0,
                                 "group:dog in a": 1.0, "group:dog in b": 1 / 3,
                                 "worst_group": 1 / 3, "mean_group": (0.5 + 1 + 1 + 1 / 3) / 4})
    assert context_group_accuracy(pred, labels, [""] * 8, ["cat", "dog"]) == {}


def test_report_shows_the_worst_group_table():
    def runs(worst, mean, groups):
        out = {"overall": {"mean": 0.7, "std": 0.0, "runs": 1},
               "worst_group": {"mean": worst, "std": 0.01, "runs": 2},
               "mean_group": {"mean": mean, "std": 0.0, "runs": 2}}
        out.update({f"group:{k}": {"mean": v, "std": 0.0, "runs": 2} for k, v in groups.items()})
        return out

    report = {"classifier": {
        "real_only": runs(0.25, 0.6, {"cat in a": 0.25, "dog in b": 0.9}),
        "with_synthetic": runs(0.5, 0.7, {"cat in a": 0.8, "dog in b": 0.5}),
    }}
    t = worst_group_table(report)
    assert t.header == ["group (class in context)", "real only (%)", "with synthetic (%)"]
    assert t.rows == [["worst group", "25.00 ± 1.00", "50.00 ± 1.00"],
                      ["mean over groups", "60.00 ± 0.00", "70.00 ± 0.00"],
                      ["dog in b", "90.00 ± 0.00", "50.00 ± 0.00"],
                      ["cat in a", "25.00 ± 0.00", "80.00 ± 0.00"]]
    assert "## Worst-group accuracy" in build_markdown(report)
    assert worst_group_table({"classifier": {"real_only": {"overall": 0.5}}}) is None


def test_end_to_end_loop_reports_worst_group_of_its_own_predictions(tmp_path):
    """The classifier loop (in-process, SGD + cosine + label smoothing) scores the eval rows per
    (class, context): its worst_group equals the hand computation on the saved model's
    predictions."""
    import torch

    from raysynth.config.schema import EndToEndConfig, ScalingConfig
    from raysynth.train.arrays import LabeledArrays
    from raysynth.train.checkpoint import load_model
    from raysynth.train.loops import end_to_end_loop
    from raysynth.train.models import encoder_config
    from raysynth.train.session import run_trainer

    rng = np.random.default_rng(0)
    real = LabeledArrays(rng.random((24, 1, 8, 8)), np.repeat([0, 1], 12))
    ev = LabeledArrays(rng.random((12, 1, 8, 8)), np.repeat([0, 1], 6))
    contexts = ["a", "b", "b"] * 4
    cfg = EndToEndConfig(epochs=2, batch_size=8, optimizer="sgd", lr=0.05, schedule="cosine",
                         warmup_epochs=1, label_smoothing=0.1)
    loop_cfg = {"real": real, "synthetic": LabeledArrays.empty_like(real), "eval": ev,
                "groups": {}, "num_classes": 2, "cfg": cfg, "aug_kind": "none", "seed": 0,
                "encoder_cfg": encoder_config("small_cnn", 1, 8, 4, 8),
                "save_dir": str(tmp_path / "m"), "eval_contexts": contexts,
                "class_names": ["cat", "dog"]}
    metrics = run_trainer(end_to_end_loop, loop_cfg, ScalingConfig(), "e2e", tmp_path)
    with torch.no_grad():
        pred = load_model(tmp_path / "m").eval()(torch.from_numpy(ev.x)).argmax(1).numpy()
    hand = {}
    for c, name in enumerate(["cat", "dog"]):
        for g in ("a", "b"):
            m = (ev.y == c) & (np.array(contexts) == g)
            hand[f"group:{name} in {g}"] = float((pred[m] == c).mean())
    assert {k: metrics[k] for k in hand} == pytest.approx(hand)
    assert metrics["worst_group"] == pytest.approx(min(hand.values()))
