"""A report that explains itself: the headline (gain or loss against the real-only baseline and
its standard error), why every weight is 0, per-class test accuracy, every trial's score."""

from __future__ import annotations

import copy
import html as html_lib
import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from raysynth.report import charts
from raysynth.report.explain import explain, headline, weights_note
from raysynth.report.html import build_html
from raysynth.report.markdown import build_markdown
from raysynth.report.text import md_text
from raysynth.train.classifier import group_accuracy
from raysynth.train.protocol import ProtocolResult, class_groups, fold_class_groups
from raysynth.tune.weights import tune_report

REPORT = {
    "preset": "digits",
    "flow": "unicon",
    "classes": ["0", "1"],
    "weights": {"0": 0.0, "1": 0.0},
    "accuracy": {
        "supcon_real": {"mean": 0.9, "std": 0.01, "runs": 9,
                        "per_class": [{"mean": 0.95, "std": 0.02}, {"mean": 0.85, "std": 0.0}]},
        "supcon_mixed": {"mean": 0.88, "std": 0.02, "runs": 9},
        "unicon": {"mean": 0.9312, "std": 0.0051, "runs": 9,
                   "per_class": [{"mean": 0.9624, "std": 0.01}, {"mean": 0.9, "std": 0.03}]},
    },
    "split": "test",
    "tune": {"trials": 4, "concurrency": 2, "best_val_acc": 0.93, "wall_s": 50.0,
             "best_so_far": [0.8, 0.85, 0.85, 0.93], "trial_scores": [0.8, 0.85, 0.7, 0.93]},
}


def test_headline_is_the_best_method_against_supcon_real_with_its_standard_error():
    h = headline(REPORT)
    # UniCon (best of Mixed 88.00, UniCon 93.12) − SupCon-Real 90.00 = +3.12 points; the
    # standard error of the difference from the runs' sample variances s² = std²·n/(n−1)
    se = 100 * math.sqrt(0.0051**2 * 9 / 8 / 9 + 0.01**2 * 9 / 8 / 9)
    assert h["method"] == "unicon" and h["baseline"] == "supcon_real"
    assert h["gain_points"] == pytest.approx(3.12) and h["se_points"] == pytest.approx(se)
    assert h["text"] == (f"UniCon: 93.12% against SupCon-Real 90.00% on the test split, a gain "
                         f"of +3.12 points ± {se:.2f} (standard error over 9 and 9 runs).")


def test_headline_of_the_classifier_flow_says_a_loss_within_noise():
    report = {"classifier": {
        "real_only": {"overall": {"mean": 0.8, "std": 0.02, "runs": 3}},
        "with_synthetic": {"overall": {"mean": 0.79, "std": 0.03, "runs": 3}}}}
    h = headline(report)
    se = 100 * math.sqrt((0.02**2 + 0.03**2) * 3 / 2 / 3)
    assert h["gain_points"] == pytest.approx(-1.0)
    assert h["text"] == (f"With synthetic images: 79.00% against real only 80.00% on the test "
                         f"split, a loss of -1.00 points ± {se:.2f} (standard error over 3 and 3 "
                         "runs); within the runs' noise (less than 2 standard errors).")
    one = {"classifier": {"real_only": {"overall": {"mean": 0.8, "std": 0.0, "runs": 1}},
                          "with_synthetic": {"overall": {"mean": 0.8, "std": 0.0, "runs": 1}}}}
    assert headline(one)["se_points"] is None and "no change of +0.00 points." in (
        headline(one)["text"])
    assert headline({"accuracy": {}}) is None


def test_all_zero_weights_are_explained_and_drawn():
    note = weights_note(REPORT)
    assert note.startswith("Every weight is 0: of the search's 4 trials, the best (best "
                           "validation accuracy 93.00%) trusted no class's synthetic images")
    fixed = {**REPORT, "tune": {"trials": 0}}
    assert weights_note(fixed).startswith("Every weight is 0 because tune.weights set them so")
    assert weights_note({**REPORT, "weights": {"0": 0.0, "1": 0.2}}) is None
    assert explain(REPORT) == {"headline": headline(REPORT), "weights_note": note}
    md, html = build_markdown(REPORT), build_html(REPORT)
    assert md_text(note) in md and html_lib.escape(note) in html
    assert f"**{md_text(headline(REPORT)['text'])}**" in md
    assert f'<p class="headline">{html_lib.escape(headline(REPORT)["text"])}</p>' in html
    # a weight of 0 is drawn (a black marker and its value on the axis), a missing one is not:
    # the zero chart has more dark pixels (the old bars-only chart had fewer: 2076 vs 2111)
    def dark(png: bytes) -> int:
        return int((np.asarray(Image.open(io.BytesIO(png)).convert("L")) < 60).sum())

    zero = dark(charts.weights_chart({"0": 0.0, "1": 0.0}))
    assert zero - dark(charts.weights_chart({"0": float("nan"), "1": float("nan")})) > 100


def test_recorded_sentences_win_over_recomputed_ones():
    report = {**REPORT, "headline": {"text": "recorded headline"}, "weights_note": "recorded why"}
    md = build_markdown(report)
    assert "recorded headline" in md and "recorded why" in md and "a gain of" not in md


def test_per_class_accuracy_table_in_markdown_and_html():
    md = build_markdown(REPORT)
    assert "## Accuracy per class" in md
    header = "| class | SupCon-Real, test accuracy (%) | UniCon, test accuracy (%) |"
    assert header in md
    assert "| 0 | 95.00 ± 2.00 | 96.24 ± 1.00 |" in md
    assert "| 1 | 85.00 ± 0.00 | 90.00 ± 3.00 |" in md
    html = build_html(REPORT)
    assert "<h2>Accuracy per class</h2>" in html and "<td>96.24 ± 1.00</td>" in html
    assert 'alt="accuracy per class"' in html


def test_every_trial_score_is_shown_beside_the_best_so_far():
    md = build_markdown(REPORT)
    assert "Validation accuracy (%) of each trial, in completion order: 80.00, 85.00, 70.00, " \
           "93.00." in md
    no_scores = copy.deepcopy(REPORT)
    del no_scores["tune"]["trial_scores"]
    assert "each trial" not in build_markdown(no_scores)
    curve = REPORT["tune"]["best_so_far"]
    assert charts.best_so_far_chart(curve, REPORT["tune"]["trial_scores"]) != (
        charts.best_so_far_chart(curve))
    assert 'alt="each trial&#x27;s validation accuracy and the best so far"' in build_html(REPORT)


def test_tune_report_lists_every_trial_in_completion_order():
    history = [{"val_acc": v, "weights": [0.0]} for v in (0.5, 0.75, 0.25, 0.8)]
    summary = {"trials": 4, "concurrency": 2, "best_val_acc": 0.8, "wall_s": 1.0,
               "best_so_far": [0.5, 0.75, 0.75, 0.8], "history": history, "best_weights": [0.0]}
    t = tune_report(summary)
    assert t["trial_scores"] == [0.5, 0.75, 0.25, 0.8]
    assert t["best_so_far"] == list(np.maximum.accumulate(t["trial_scores"]))
    assert "history" not in t and "best_weights" not in t


def test_per_class_accuracy_by_hand():
    # 6 test images of 3 classes; predictions right for 2/2 of class 0, 1/3 of class 1, 0/1 of 2
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    pred = torch.tensor([0, 0, 1, 0, 2, 1])
    logits = torch.nn.functional.one_hot(pred, 3).float()
    got = group_accuracy(logits, labels, class_groups(3))
    assert got == pytest.approx({"overall": 3 / 6, "class:0": 1.0, "class:1": 1 / 3,
                                 "class:2": 0.0})
    second = {"overall": 0.5, "class:0": 0.5, "class:1": 1.0, "class:2": 0.0}
    s = ProtocolResult([0.5, 0.5], [got, second]).summary()
    assert s["per_class"] == [
        {"mean": pytest.approx(0.75), "std": pytest.approx(0.25)},
        {"mean": pytest.approx(2 / 3), "std": pytest.approx(1 / 3)},
        {"mean": 0.0, "std": 0.0},
    ]
    assert not any(k.startswith("class:") for k in s)
    folded = fold_class_groups({"overall": {"mean": 0.5}, "class:10": 1, "class:2": 2})
    assert folded == {"overall": {"mean": 0.5}, "per_class": [2, 1]}  # in class order
