"""Generated long-tailed stress data (``data.source: generated``, ``data/generated.py``)."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from raysynth import columns as col
from raysynth.config import build_config
from raysynth.data import load_dataset, make_splits
from raysynth.data.generated import long_tail_counts, write_table
from raysynth.data.images import to_tensor_array


def test_long_tail_counts_sum_and_ratio():
    c = long_tail_counts(20_000, 100, 100.0)
    assert sum(c) == 20_000 and c == sorted(c, reverse=True)
    assert 90 <= c[0] / c[-1] <= 110


def test_generated_source_gives_a_long_tailed_split_of_distinct_classes():
    cfg = build_config(preset="stress-lt", overrides={
        "data.generated_classes": 4, "data.k": 40, "data.imbalance_factor": 10.0,
        "data.image_size": 8, "data.val_per_class": 2, "data.test_per_class": 2})
    data = load_dataset(cfg.data)
    assert len(data) == 4 * 44 and data.channels == 3
    again = load_dataset(cfg.data)
    assert again.images == data.images  # the same images every time
    counts = make_splits(data, cfg.data, 0).counts(data.labels, 4)["train"]
    assert counts[0] == 40 and counts[-1] == 4
    x = to_tensor_array(data.images, 3)
    means = np.stack([x[data.labels == c].mean(0) for c in range(4)])  # class patterns differ
    assert min(np.abs(means[a] - means[b]).mean() for a in range(4) for b in range(a)) > 0.02


def test_write_table_holds_the_counts(tmp_path):
    files = write_table(tmp_path, [5, 3], 8, 1, 0, prefix="syn", accepted=True)
    t = pq.read_table(files)
    assert t[col.LABEL].to_pylist() == [0] * 5 + [1] * 3
    assert all(t[col.ACCEPTED].to_pylist()) and t[col.SAMPLE_ID][0].as_py() == "syn-00000000"


def test_stress_preset_is_20k_long_tailed_images_streamed():
    from raysynth.data.splits import train_counts

    cfg = build_config(preset="stress-lt")
    counts = train_counts(cfg.data.generated_classes, cfg.data)
    assert 19_000 <= sum(counts) <= 21_000 and counts[0] / counts[-1] >= 90
    assert cfg.train.stream == "always" and cfg.flow == "classifier"
    assert cfg.end_to_end.synthetic_share == 0.5 and cfg.end_to_end.balanced_softmax
    assert (cfg.synthesis.quota, cfg.synthesis.top_up_to) == ("top_up", cfg.data.k)
