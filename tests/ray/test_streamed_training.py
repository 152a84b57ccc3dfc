"""The end-to-end classifier streamed from Parquet into Ray Train (issue 15): the batches keep
their real/synthetic share, balanced softmax its prior, rejected and repeated synthetic rows
stay out; bad tables give clear errors."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tiny_models import image_table

from raysynth import columns as col
from raysynth.config import build_config
from raysynth.data.tables import describe_table
from raysynth.errors import DataError
from raysynth.flows.classifier import check_classes
from raysynth.flows.end_to_end import train_end_to_end
from raysynth.train import classifier, streamed

SIZE = 8


def _table(path: Path, labels, value: int, ids, accepted=None) -> str:
    return image_table(path, labels, [value] * len(ids), ids, accepted, SIZE)


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    """Real rows are black (18 of class 0, then 6 of class 1: stored class by class), accepted
    synthetic rows white (all class 1), rejected ones grey; one accepted id repeats in a second
    part (only its first occurrence counts)."""
    d = tmp_path_factory.mktemp("stream")
    real = _table(d / "real.parquet", [0] * 18 + [1] * 6, 0, [f"r{i}" for i in range(24)])
    syn = [
        _table(d / "syn" / "a.parquet", [1] * 12, 255, [f"s{i}" for i in range(12)],
               [True] * 10 + [False] * 2),
        _table(d / "syn" / "b.parquet", [1, 1, 0], 128, ["s0", "x1", "x2"], [True, False, False]),
    ]
    return {
        "real": describe_table([real], 2, 1, SIZE, what="real"),
        "syn": describe_table(syn, 2, 1, SIZE, accepted_only=True, what="synthetic"),
        "dir": d,
    }


def test_describe_counts_only_accepted_first_occurrences(tables):
    assert tables["real"].counts == (18, 6)
    assert tables["syn"].counts == (0, 10)  # 2 rejected, the repeated s0 and 2 rejected in b
    assert tables["syn"].drop == frozenset({(tables["syn"].files[1], "s0")})


def test_streamed_batches_hold_the_share_and_the_loss_the_prior(
        ray_local, tables, tmp_path, monkeypatch, share=0.25):
    """Ray Train local mode (the loop runs here): each batch is ``B − round(B·share)`` real rows
    then ``round(B·share)`` accepted synthetic rows, every real row once per epoch, no rejected
    or repeated row; the prior is ``(1−s)·p_real + s·p_syn`` from the tables' counts. (One
    epoch, no synthetic cycle: each pass is a Ray Data execution; the cycling of the synthetic
    stream is tested in tests/unit/test_streams.py.)"""
    seen, priors = [], []
    augment = classifier.augment
    monkeypatch.setattr(classifier, "augment",
                        lambda x, kind, gen: seen.append(x.clone()) or augment(x, kind, gen))
    prior_of = streamed.counts_prior
    monkeypatch.setattr(streamed, "counts_prior",
                        lambda *a: priors.append(prior_of(*a)) or priors[-1])
    cfg = build_config(overrides={
        "end_to_end.epochs": 1, "end_to_end.batch_size": 8, "end_to_end.synthetic_share": share,
        "encoder.arch": "small_cnn", "encoder.width": 4, "encoder.feat_dim": 8,
        "encoder.augment": "none", "train.num_workers": 0})
    metrics = train_end_to_end(
        cfg, tables["real"], tables["syn"], tables["real"], {"few": [1]}, 2, 0,
        tmp_path / "model", tmp_path / "ckpt", tmp_path, f"stream-{share}")
    assert set(metrics) == {"overall", "few"} and 0 <= metrics["overall"] <= 1

    n_syn = round(8 * share)
    per_epoch = -(-24 // (8 - n_syn))
    assert len(seen) == per_epoch
    for x in seen:
        px = x.flatten(1).amax(1)
        assert not ((px > 0.4) & (px < 0.6)).any()  # no rejected (grey) row
        is_syn = px > 0.9
        assert int(is_syn.sum()) == n_syn and not is_syn[: len(x) - n_syn].any()
    assert sum(len(x) - n_syn for x in seen) == 24  # every real row once
    want = np.array([0.75 * (1 - share), 0.25 * (1 - share) + share])
    np.testing.assert_allclose(priors[0], want, atol=1e-12)


def test_two_workers_holding_every_cpu_finish(ray_local, tables, tmp_path):
    """2 Train workers × 1 CPU on the 2-CPU local Ray: no CPU is left for Ray Data tasks while
    they train. The streamed run once hung there (its Parquet reads waited for a CPU forever);
    the tables are now read before the run. A hang fails the test after 240 s."""
    assert ray_local.cluster_resources()["CPU"] == 2
    cfg = build_config(overrides={"end_to_end.epochs": 1, "end_to_end.batch_size": 8,
                                  "encoder.arch": "small_cnn", "encoder.width": 4,
                                  "encoder.feat_dim": 8, "train.num_workers": 2,
                                  "train.cpus_per_worker": 1})
    done: list = []

    def train() -> None:
        try:
            done.append(train_end_to_end(cfg, tables["real"], tables["syn"], tables["real"], {},
                                         2, 0, tmp_path / "m", tmp_path / "c", tmp_path, "cpus"))
        except BaseException as e:  # noqa: BLE001 - raised again below, in the test's thread
            done.append(e)

    run = threading.Thread(target=train, daemon=True)  # daemon: a hung run cannot keep pytest
    run.start()
    run.join(timeout=240)
    assert done, "the run hung: 2 workers × 1 CPU on a 2-CPU Ray, not finished after 240 s"
    if isinstance(done[0], BaseException):
        raise done[0]
    assert 0 <= done[0]["overall"] <= 1


def test_corrupt_synthetic_png_names_the_row(ray_local, tables, tmp_path):
    bad = _table(tmp_path / "bad" / "p.parquet", [1, 1], 255, ["ok", "broken"], [True, True])
    t = pq.read_table(bad)
    images = t[col.IMAGE].to_pylist()
    images[1] = images[1][:20]  # truncated PNG
    pq.write_table(t.set_column(t.schema.get_field_index(col.IMAGE), col.IMAGE,
                                pa.array(images, pa.binary())), bad)
    syn = describe_table([bad], 2, 1, SIZE, accepted_only=True)
    cfg = build_config(overrides={"end_to_end.epochs": 1, "end_to_end.batch_size": 8,
                                  "encoder.arch": "small_cnn", "encoder.width": 4,
                                  "encoder.feat_dim": 8, "train.num_workers": 0})
    earlier = {tmp_path / "m" / "earlier.pt": b"model", tmp_path / "c" / "earlier": b"ckpt"}
    for path, content in earlier.items():  # what an earlier run left in the model's folders
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    with pytest.raises(DataError, match=r"'broken'.*cannot be decoded.*remove the row or "
                                        r"regenerate it, then resume"):
        train_end_to_end(cfg, tables["real"], syn, tables["real"], {}, 2, 0, tmp_path / "m",
                         tmp_path / "c", tmp_path, "corrupt")
    assert pq.read_table(bad).num_rows == 2  # nothing written is touched
    assert all(path.read_bytes() == content for path, content in earlier.items())


def test_parquet_without_label_column_is_refused(tmp_path):
    path = tmp_path / "nolabel.parquet"
    pq.write_table(pa.table({col.SAMPLE_ID: ["a"], col.IMAGE: [b"x"]}), path)
    with pytest.raises(DataError, match=r"nolabel.parquet has no label column.*rewrite it"):
        describe_table([str(path)], 2, 1, SIZE, what="synthetic")
    assert path.is_file()


def test_a_class_with_no_row_left_after_filtering_is_named(tables):
    with pytest.raises(DataError, match=r"'cat'.*no real training image and no accepted "
                                        r"synthetic image; lower the filter threshold or add"):
        check_classes(tables["syn"], tables["syn"], ["cat", "dog"])  # class 0: 0 + 0 rows
    check_classes(tables["real"], tables["syn"], ["cat", "dog"])
