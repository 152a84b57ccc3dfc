"""What the weight search reports: the trial with the highest validation accuracy, ties broken by
the lower validation cross-entropy (then the earlier trial); how many trials ran at once."""

import math

from raysynth.tune.search import observed_concurrency, pick_best


def _row(w, acc, nll=math.nan):
    return {"weights": [w, w], "val_acc": acc, "val_nll": nll}


def test_highest_accuracy_wins_whatever_the_cross_entropy():
    rows = [_row(0.0, 0.95, 0.01), _row(0.5, 0.97, 0.90), _row(1.0, 0.96, 0.02)]
    assert pick_best(rows)["weights"] == [0.5, 0.5]


def test_equal_accuracies_go_to_the_lower_cross_entropy():
    # a saturated task: 100% at every weight; w = 0 finished first but its classifiers are
    # less sure of the right class
    rows = [_row(0.0, 1.0, 0.30), _row(1.0, 1.0, 0.05), _row(0.4, 1.0, 0.12), _row(0.2, 0.99, 0.01)]
    assert pick_best(rows)["weights"] == [1.0, 1.0]
    # the same accuracies summed in another order differ in the last bit: still a tie
    a, b = (1.0 + 0.9 + 0.95) / 3, (0.95 + 0.9 + 1.0) / 3
    rows = [_row(0.0, b, 0.3), _row(1.0, a, 0.1)]  # b > a by one bit
    assert pick_best(rows)["weights"] == [1.0, 1.0]


def test_rows_without_cross_entropy_fall_back_to_the_earliest_tie():
    rows = [_row(0.3, 0.9), _row(0.0, 1.0), _row(1.0, 1.0), _row(0.7, 1.0, 0.2)]
    assert pick_best(rows)["weights"] == [0.7, 0.7]  # a known cross-entropy beats an unknown one
    assert pick_best(rows[:3])["weights"] == [0.0, 0.0]


def test_trial_results_missing_from_the_run_directory_are_restored_from_the_ledger(tmp_path):
    import json

    from raysynth.tune.ledger import restore_trial_results

    def row(name: str, acc: float) -> dict:
        return {"dir": str(tmp_path / name), "result": {"val_acc": acc, "config": {"w000": 0.5}}}

    (tmp_path / "copied").mkdir()
    (tmp_path / "copied" / "result.json").write_text('{"val_acc": 0.9}\n')
    (tmp_path / "torn").mkdir()
    (tmp_path / "torn" / "result.json").write_text('{"val_acc": 0.')  # killed mid-copy
    rows = [row("copied", 0.9), row("torn", 0.8), row("never-copied", 0.7), {"trial_id": "old"}]
    assert restore_trial_results(rows, tmp_path) == 2
    assert (tmp_path / "copied" / "result.json").read_text() == '{"val_acc": 0.9}\n'  # untouched
    for name, acc in (("torn", 0.8), ("never-copied", 0.7)):
        result = json.loads((tmp_path / name / "result.json").read_text())
        assert result == {"val_acc": acc, "config": {"w000": 0.5}}
    assert restore_trial_results(rows, tmp_path) == 0  # nothing left to restore


def test_observed_concurrency_is_the_most_trials_running_at_once():
    nan = float("nan")

    def rows(*spans):
        return [{"started_at": a, "finished_at": b} for a, b in spans]

    assert observed_concurrency(rows((0, 1), (1, 2), (2, 3))) == 1  # touching is not overlapping
    assert observed_concurrency(rows((0, 2), (1, 3), (2.5, 4))) == 2
    assert observed_concurrency(rows((0, 5), (1, 2), (1.5, 3), (4, 6))) == 3
    # a ledger from before trials recorded their start: unknown, the caller falls back
    assert observed_concurrency(rows((nan, 1), (nan, 2))) is None
    assert observed_concurrency([{"finished_at": 1.0}]) is None
    assert observed_concurrency(rows((nan, 1), (0.5, 2), (1, 3))) == 2
