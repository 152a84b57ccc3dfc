"""The weight search: Ray Tune + HyperOpt in parallel, warm start, logs; and the gp baseline."""


import numpy as np

from raysynth.config import build_config
from raysynth.flows.controlled import StudySpec, build_study_data, study_config
from raysynth.tune.gp import gp_search
from raysynth.tune.search import search_weights

TINY = {
    "encoder.epochs": 2, "encoder.width": 4, "encoder.feat_dim": 16, "classifier.epochs": 5,
    "protocol.n_contr": 1, "protocol.n_classif": 1, "tune.num_samples": 4,
    "tune.n_initial_points": 2, "tune.max_concurrent": 2,
}


def test_parallel_search_runs_every_trial_with_warm_start(ray_local, tmp_path):
    spec = StudySpec(("0", "9"), "swapped", 4)
    # encoders long enough (~seconds) for two trials' spans to overlap measurably
    cfg = study_config(spec, build_config(overrides={**TINY, "encoder.epochs": 40}))
    val, _ = build_study_data(spec, cfg)
    result = search_weights(val, cfg, tmp_path / "tune")
    assert result.trials == 4 and result.concurrency == 2
    # Parallelism observed, not configured: each trial's wall-clock span (started_at and
    # finished_at, taken with time.time() inside the trial); serial trials never overlap.
    spans = [(h["started_at"], h["finished_at"]) for h in result.history]
    assert len(spans) == 4 and all(b > a for a, b in spans), spans
    overlaps = [min(a[1], b[1]) - max(a[0], b[0]) for i, a in enumerate(spans) for b in spans[i + 1:]]
    assert max(overlaps) > 0.25, spans
    weights = [tuple(h["weights"]) for h in result.history]
    assert (0.0, 0.0) in weights and (1.0, 1.0) in weights
    assert all(0.0 <= w <= 1.0 for ws in weights for w in ws)
    accs = [h["val_acc"] for h in result.history]
    assert result.best_val_acc == max(accs)
    assert result.summary()["best_so_far"] == list(np.maximum.accumulate(accs))
    events = list((tmp_path / "tune").rglob("events.out.tfevents*"))
    assert len(events) >= 4  # TensorBoard-readable logs, one per trial


def test_gp_minimize_baseline_finds_the_optimum_of_a_known_objective():
    def objective(w):
        return -((w[0] - 0.3) ** 2) - (w[1] - 0.8) ** 2

    res = gp_search(objective, 2, num_samples=15, n_initial_points=5, seed=0)
    assert res.trials == 15 and res.concurrency == 1
    assert res.history[0]["weights"] == [0.0, 0.0] and res.history[1]["weights"] == [1.0, 1.0]
    np.testing.assert_allclose(res.best_weights, [0.3, 0.8], atol=0.12)
