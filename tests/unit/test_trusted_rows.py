"""The closed loop's learned trust applied to training (flow classifier,
``synthesis.loop.train_by_trust``): which synthetic rows a per-class trust keeps, the same rows
on the streamed table and the in-memory arrays, the scaled batch share and the report's table."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa

from raysynth import columns as col
from raysynth.config import build_config
from raysynth.data import encode_png
from raysynth.data.tables import describe_table, keep_trusted, trusted_rows
from raysynth.filter.loop import accepted_images
from raysynth.flows.classifier import learned_trust, trusted
from raysynth.generate.schema import SYNTHETIC_SCHEMA
from raysynth.generate.table import PartWriter, parquet_files
from raysynth.report.markdown import build_markdown


def _lowest(ids: list[str], n: int) -> set[str]:
    return set(sorted(ids, key=lambda s: hashlib.blake2b(s.encode(), digest_size=8).digest())[:n])


def test_trusted_rows_keep_round_trust_times_n_lowest_hashes_whatever_the_order():
    ids = [f"c{c}-{i}" for c in range(3) for i in range(8)]
    labels = [c for c in range(3) for _ in range(8)]
    keep = trusted_rows(ids, labels, [0.25, 0.0, 1.0])
    kept = {i for i, k in zip(ids, keep) if k}
    assert kept == _lowest(ids[:8], 2) | set(ids[16:])  # 2 of class 0, none of 1, all of 2
    perm = np.random.default_rng(0).permutation(len(ids))
    again = trusted_rows([ids[p] for p in perm], [labels[p] for p in perm], [0.25, 0.0, 1.0])
    assert {ids[p] for p, k in zip(perm, again) if k} == kept  # the order does not matter
    half = {i for i, k in zip(ids, trusted_rows(ids, labels, [0.5, 0.0, 1.0])) if k}
    assert kept <= half and len(half & set(ids[:8])) == 4  # more trust keeps a superset


def _rows(ids: list[str], labels: list[int], accepted: list[bool], start: int) -> pa.Table:
    cols = {f.name: pa.nulls(len(ids), f.type) for f in SYNTHETIC_SCHEMA}
    cols[col.SAMPLE_ID] = pa.array(ids)
    cols[col.LABEL] = pa.array(labels, pa.int64())
    cols[col.IMAGE] = pa.array([encode_png(np.full((8, 8, 1), 10 * n, np.uint8))
                                for n in range(start, start + len(ids))], pa.binary())
    cols[col.ACCEPTED] = pa.array(accepted)
    cols[col.ROUND] = pa.array([0] * len(ids), pa.int64())
    return pa.table(cols)


def _table(tmp_path):
    ids = [f"syn-{c}-{i}" for c in range(2) for i in range(6)]
    labels = [c for c in range(2) for _ in range(6)]
    accepted = [i != "syn-0-5" for i in ids]  # class 0: 5 accepted, class 1: 6
    writer = PartWriter(str(tmp_path / "round-000"))
    writer(_rows(ids[:7], labels[:7], accepted[:7], 0))
    writer(_rows(ids[7:], labels[7:], accepted[7:], 7))
    files = [str(f) for f in parquet_files(tmp_path)]
    return describe_table(files, 2, 1, 8, accepted_only=True), ids, accepted


def test_the_streamed_table_and_the_arrays_keep_the_same_rows(tmp_path):
    table, ids, accepted = _table(tmp_path)
    assert table.counts == (5, 6)
    kept = keep_trusted(table, [0.5, 0.25])
    assert kept.counts == (2, 2)  # round(2.5) = 2 (half to even), round(1.5) = 2
    dropped = {sid for _, sid in kept.drop}
    ok = [i for i, a in zip(ids, accepted) if a]
    want = _lowest(ok[:5], 2) | _lowest(ok[5:], 2)
    assert set(ok) - dropped == want
    arrays = accepted_images(tmp_path, 1, 8, trust=[0.5, 0.25])
    levels = np.round(arrays.x[:, 0, 0, 0] * 25.5).astype(int).tolist()  # grey = 10 × index
    assert sorted(ids[n] for n in levels) == sorted(want)
    assert arrays.y.tolist() == [int(ids[n][4]) for n in levels]


def test_the_classifier_flow_scales_the_share_and_reports_the_trust(tmp_path):
    table, _, _ = _table(tmp_path)
    cfg = build_config(preset="digits-lt", overrides={"synthesis.allocation": "closed_loop",
                                                      "synthesis.loop.train_by_trust": True})
    synthesis = {"allocation": {"final_trust": [0.5, 0.25]}}
    trust = learned_trust(cfg, synthesis)
    assert trust == [0.5, 0.25]
    assert learned_trust(cfg, {"allocation": {"final_trust": [1.0, 1.0]}}) is None
    assert learned_trust(cfg, {}) is None  # a run without the loop (or an older summary)
    off = build_config(preset="digits-lt", overrides={"synthesis.allocation": "closed_loop"})
    assert learned_trust(off, synthesis) is None  # off by default: the trust steers allocation
    report: dict = {"classes": ["zero", "one"]}
    kept, scaled = trusted(table, trust, cfg, report, ["zero", "one"])
    assert kept.counts == (2, 2)
    assert scaled.end_to_end.synthetic_share == cfg.end_to_end.synthetic_share * 4 / 11
    assert report["trust"] == {"trust": [0.5, 0.25], "accepted": [5, 6], "kept": [2, 2],
                               "synthetic_share": scaled.end_to_end.synthetic_share}
    md = build_markdown(report)
    assert "## Trust per class (closed loop)" in md
    assert "| zero | 0.500 | 5 | 2 |" in md and "| one | 0.250 | 6 | 2 |" in md
