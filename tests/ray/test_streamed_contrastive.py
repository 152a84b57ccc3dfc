"""The contrastive encoder (UniCon flow's final stage) trained from streamed tables (issue 15):
what each method's streamed batches hold, and the flow's final stage streamed end to end — no
image decoded on the driver, every method scored per class, a re-run reusing finished runs."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import image_table

from raysynth.config import build_config
from raysynth.data.tables import describe_table
from raysynth.flows.end_to_end import table_dataset
from raysynth.train import contrastive
from raysynth.train.models import encoder_config
from raysynth.train.protocol import StreamedData
from raysynth.train.streamed import StreamSpec
from raysynth.train.streams import FlaggedDecode

SIZE = 4


def _table(path: Path, labels, values, ids, accepted=None) -> str:
    """Row i's image is filled with ``values[i]`` (its identity once decoded)."""
    return image_table(path, labels, values, ids, accepted, SIZE)


@pytest.fixture(scope="module")
def streamed(tmp_path_factory):
    """Real rows 1..14 (9 of class 0 then 5 of class 1), accepted synthetic rows 101..106 of both
    classes; rejected rows (200+) and a repeated accepted id (150) that must never be read."""
    d = tmp_path_factory.mktemp("contrastive")
    real = _table(d / "real.parquet", [0] * 9 + [1] * 5, range(1, 15), [f"r{i}" for i in range(14)])
    syn = [
        _table(d / "syn" / "a.parquet", [0, 0, 1, 1, 1, 1, 0, 1], [101, 102, 103, 104, 105, 106,
               201, 202], [f"s{i}" for i in range(8)], [True] * 6 + [False] * 2),
        _table(d / "syn" / "b.parquet", [1, 0], [150, 203], ["s0", "x"], [True, False]),
    ]
    real_t = describe_table([real], 2, 1, SIZE)
    syn_t = describe_table(syn, 2, 1, SIZE, accepted_only=True)
    spec = StreamSpec(real_t.counts, syn_t.counts, 1, SIZE)
    return StreamedData(table_dataset(real_t, shuffle=False), table_dataset(syn_t, shuffle=False),
                        None, None, spec, 2)


def _fit_two_shards(data: StreamedData, method: str, monkeypatch) -> dict[int, list[dict]]:
    """``fit_encoder_streamed`` on each of the 2 equal shards Ray Train's ``DataConfig`` makes
    of ``data.training(method)`` (``streaming_split(2, equal=True)``), side by side as two ranks
    are; records, per rank and epoch, every loss call: row identities, labels, flags, settings."""
    seen: dict[int, list[dict]] = {0: [], 1: []}
    rank_of: dict[int, int] = {}
    loss = contrastive.contrastive_loss
    views = contrastive.two_views
    rows: dict[int, torch.Tensor] = {}

    def rec_views(x, kind, gen):
        rows[threading.get_ident()] = torch.round(x.flatten(1).mean(1) * 255).long()
        return views(x, kind, gen)

    def rec_loss(feats, labels, synthetic, class_weights, mode, temperature):
        me = threading.get_ident()
        seen[rank_of[me]][-1]["batches"].append({
            "ids": rows[me].tolist(), "labels": labels.tolist(), "flags": synthetic.tolist(),
            "weights": None if class_weights is None else class_weights.tolist(), "mode": mode})
        return loss(feats, labels, synthetic, class_weights, mode, temperature)

    monkeypatch.setattr(contrastive, "two_views", rec_views)
    monkeypatch.setattr(contrastive, "contrastive_loss", rec_loss)
    cfg = build_config(overrides={"encoder.epochs": 2, "encoder.batch_size": 4})
    mcfg = {"kind": "contrastive", "encoder": encoder_config("small_cnn", 1, SIZE, 4, 8),
            "proj_dim": 4}
    shards = data.training(method).streaming_split(2, equal=True)
    weights = np.array([0.3, 0.9], np.float32)
    errors = []

    def rank(r: int) -> None:
        rank_of[threading.get_ident()] = r
        try:
            contrastive.fit_encoder_streamed(
                shards[r], FlaggedDecode(1, SIZE, "rows"), method, weights, 2, cfg.encoder, mcfg,
                "none", 7, torch.device("cpu"),
                on_epoch=lambda *a: seen[r].append({"batches": []}))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    for r in (0, 1):
        seen[r].append({"batches": []})
    threads = [threading.Thread(target=rank, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    return {r: epochs[:-1] for r, epochs in seen.items()}  # the hook opens the next epoch


REAL = set(range(1, 15))
SYNTHETIC = {101: 0, 102: 0, 103: 1, 104: 1, 105: 1, 106: 1}


@pytest.mark.parametrize("method", ["supcon_real", "supcon_mixed", "unicon"])
def test_each_rank_reads_its_equal_share_of_the_methods_rows_each_epoch(
        ray_local, streamed, monkeypatch, method):
    """Per epoch, the 2 ranks' batches together hold every real row once (and, for SupCon-Mixed
    and UniCon, every accepted synthetic row once), never a rejected or repeated row; each
    row's flag says synthetic exactly for synthetic rows; the ranks take the same number of
    steps (DDP lockstep); UniCon gets its weights, SupCon none."""
    seen = _fit_two_shards(streamed, method, monkeypatch)
    want = REAL | (set() if method == "supcon_real" else set(SYNTHETIC))
    for epoch in (0, 1):
        got = [b for r in (0, 1) for b in seen[r][epoch]["batches"]]
        ids = [i for b in got for i in b["ids"]]
        assert sorted(ids) == sorted(want)  # each once: no rejected (200+), no repeat (150)
        per_rank = [sum(len(b["ids"]) for b in seen[r][epoch]["batches"]) for r in (0, 1)]
        assert per_rank == [len(want) // 2] * 2
        assert len(seen[0][epoch]["batches"]) == len(seen[1][epoch]["batches"]) > 0
        for b in got:
            assert b["flags"] == [i in SYNTHETIC for i in b["ids"]]
            assert b["labels"] == [SYNTHETIC[i] if i in SYNTHETIC else int(i > 9) for i in b["ids"]]
            assert b["mode"] == ("unicon" if method == "unicon" else "supcon")
            assert b["weights"] == (pytest.approx([0.3, 0.9]) if method == "unicon" else None)
    orders = [[i for b in seen[0][e]["batches"] + seen[1][e]["batches"] for i in b["ids"]]
              for e in (0, 1)]
    assert orders[0] != orders[1]  # shuffled anew each pass


def test_unicon_final_stage_streams_decodes_no_image_on_the_driver_and_resumes(
        ray_local, tmp_path, monkeypatch):
    """Flow ``unicon`` with ``train.stream: always``, fixed weights (no search) and 1 Train
    worker: after the synthesis stage the driver opens no image at all (the encoder runs read
    the real and accepted synthetic rows, the pool and the test split in the worker); all three
    methods are scored per class; a run interrupted after its last checkpoint (no result.json)
    resumes from it — the same accuracies, no epoch retrained — and finished runs are reused."""
    from PIL import Image

    from raysynth.flows import unicon
    from raysynth.flows.run import run_flow

    cfg = build_config("digits", overrides={
        "budget": "smoke", "data.classes": ["0", "1", "7"], "data.k": 6, "seed": 3,
        "synthesis.quota": "fixed", "synthesis.per_class": 2, "filter.enabled": False,
        "synthesis.generator.pixel_train_steps": 10, "synthesis.generator.pixel_channels": [8, 16],
        "synthesis.generator.num_steps": 2, "encoder.width": 4, "encoder.feat_dim": 8,
        "encoder.epochs": 1, "encoder.batch_size": 16, "classifier.epochs": 5,
        "protocol.n_contr": 1, "protocol.n_classif": 1, "tune.weights": [0.25, 0.5, 1.0],
        "train.stream": "always", "train.num_workers": 1, "train.checkpoint_every": 1})
    opened: list = []
    real_open, inputs = Image.open, unicon.synthetic_inputs

    def count_opens_after_synthesis(*args, **kwargs):
        out = inputs(*args, **kwargs)
        monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(a) or real_open(*a, **k))
        return out

    monkeypatch.setattr(unicon, "synthetic_inputs", count_opens_after_synthesis)
    out = tmp_path / "run"
    report = run_flow(cfg, out)
    monkeypatch.setattr(Image, "open", real_open)
    assert opened == []
    acc = report["accuracy"]
    assert set(acc) == {"supcon_real", "supcon_mixed", "unicon"}
    for summary in acc.values():
        assert summary["runs"] == 1 and 0 <= summary["mean"] <= 1
        assert len(summary["per_class"]) == 3

    runs = out / "train"
    assert all((runs / f"{m}-r0" / "model").is_dir() for m in acc)  # save_models
    (runs / "unicon-r0" / "result.json").unlink()  # killed after its last checkpoint
    ckpt = {p: p.stat().st_mtime_ns for p in (runs / "unicon-r0" / "ckpt").iterdir()}
    done = {p: p.stat().st_mtime_ns for p in runs.glob("supcon_*-r0/result.json")}
    assert ckpt and len(done) == 2
    again = run_flow(cfg, out, resume=True)
    assert again["accuracy"] == acc
    assert (runs / "unicon-r0" / "result.json").is_file()
    assert {p: p.stat().st_mtime_ns for p in ckpt} == ckpt  # resumed after the last epoch
    assert {p: p.stat().st_mtime_ns for p in done} == done  # finished runs not redone
