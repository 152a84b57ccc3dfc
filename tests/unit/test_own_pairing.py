"""DiffCoRe-Mix's own pairing (``mix.pairing: own``, paper 003 eq. 6–8): each real image I_i is
mixed with the image G_i generated from it (the synthetic row whose ``cond_id`` is its
``sample_id``), read beside it in the worker — checked on exact pairs, without Ray."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from test_streams import TableShard

from raysynth import columns as col
from raysynth.config import build_config
from raysynth.data.images import encode_png
from raysynth.data.tables import describe_table, own_partners
from raysynth.errors import ConfigError, DataError
from raysynth.mix.mixing import mix_pairs
from raysynth.train.streamed import StreamSpec, fit_streamed
from raysynth.train.streams import PairedDecode, batches


def _png(v: int) -> bytes:
    return encode_png(np.full((4, 4), v, np.uint8))


@pytest.fixture
def tables(tmp_path):
    """Real r0..r5 (value 10·i); synthetic parts: r0's counterpart rejected then accepted, r1's
    accepted twice (the first counts), r2's in the second part, a repeated id dropped, nothing
    for r3..r5. Synthetic values: 200 + 10·i for the counterpart of r_i."""
    real = pa.table({col.SAMPLE_ID: [f"r{i}" for i in range(6)],
                     col.LABEL: pa.array([i % 2 for i in range(6)], pa.int64()),
                     col.IMAGE: [_png(10 * i) for i in range(6)]})
    a = pa.table({col.SAMPLE_ID: ["s0", "s1", "s2", "s3"],
                  col.LABEL: pa.array([0, 0, 1, 1], pa.int64()),
                  col.IMAGE: [_png(99), _png(200), _png(210), _png(98)],
                  col.COND_ID: ["r0", "r0", "r1", "r1"],
                  col.ACCEPTED: [False, True, True, True]})
    b = pa.table({col.SAMPLE_ID: ["s2", "s5"], col.LABEL: pa.array([1, 0], pa.int64()),
                  col.IMAGE: [_png(97), _png(220)], col.COND_ID: ["r2", "r2"],
                  col.ACCEPTED: [True, True]})
    (tmp_path / "syn").mkdir()
    pq.write_table(a, tmp_path / "syn" / "a.parquet")
    pq.write_table(b, tmp_path / "syn" / "b.parquet")
    files = [str(tmp_path / "syn" / n) for n in ("a.parquet", "b.parquet")]
    return real, describe_table(files, 2, 1, 4, accepted_only=True, what="synthetic"), files


def test_each_real_id_maps_to_the_first_accepted_row_generated_from_it(tables):
    _, syn, files = tables
    # r0: s0 rejected → s1 (row 1); r1: s2 (row 2, not s3); r2: s2 again in b is a dropped
    # repeat → s5 (b row 1)
    assert own_partners(syn) == {"r0": (files[0], 1), "r1": (files[0], 2), "r2": (files[1], 1)}


def test_a_table_without_cond_id_is_a_clear_error(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({col.SAMPLE_ID: ["s"], col.LABEL: pa.array([0], pa.int64()),
                             col.IMAGE: [_png(0)]}), path)
    with pytest.raises(DataError, match=r"mix.pairing=own .* has no such column .* use "
                                        r"mix.pairing=random"):
        own_partners(describe_table([str(path)], 1, 1, 4))


def test_real_batches_carry_their_own_counterparts(tables):
    real, syn, _ = tables
    decode = PairedDecode(1, 0, "real", own_partners(syn))
    got = {}
    for x, _y, g, has in batches(TableShard(real), 4, decode, 3, torch.device("cpu")):
        for xi, gi, hi in zip(x, g, has):
            got[round(float(xi.max()) * 255) // 10] = (round(float(gi.max()) * 255), bool(hi))
    assert got == {0: (200, True), 1: (210, True), 2: (220, True), 3: (0, False),
                   4: (0, False), 5: (0, False)}


def test_mix_pairs_mixes_each_row_with_its_own_partner_only():
    """Row i is a constant a_i, its partner a constant b_i: every mixed row's mean is
    share·a_i + (1 − share)·b_i (eq. 6 pixel: share = λ; eq. 7 patch: the mask's mean), its
    pixels lie between a_i and b_i, and a row without a partner stays a_i."""
    a = torch.linspace(0.0, 0.5, 8)
    b = torch.linspace(1.0, 0.6, 8)
    real = a[:, None, None, None].expand(8, 1, 6, 6).clone()
    partner = b[:, None, None, None].expand(8, 1, 6, 6).clone()
    has = torch.tensor([True] * 6 + [False] * 2)
    out, info = mix_pairs(real, partner, has, 1.0, torch.Generator().manual_seed(1))
    assert info.mixed.tolist() == has.tolist() and 0 < int(info.pixel.sum()) < 6
    want = info.real_share * a + (1 - info.real_share) * b
    torch.testing.assert_close(out.mean(dim=(1, 2, 3))[:6], want[:6])
    assert ((out >= a[:, None, None, None] - 1e-6) & (out <= b[:, None, None, None] + 1e-6)).all()
    assert torch.equal(out[6:], real[6:])


def test_fit_streamed_with_own_pairing_trains_on_the_paired_batches(tables):
    from raysynth.train.models import ImageClassifier, build_encoder, encoder_config

    real, syn, _ = tables
    cfg = build_config(overrides={"end_to_end.epochs": 1, "end_to_end.batch_size": 4,
                                  "end_to_end.synthetic_share": 0.5})
    spec = StreamSpec((3, 3), syn.counts, 1, 4, own_partners(syn))
    syn_table = pa.concat_tables([pq.read_table(f, columns=[col.SAMPLE_ID, col.LABEL, col.IMAGE])
                                  for f in syn.files])
    torch.manual_seed(0)
    model = ImageClassifier(build_encoder(encoder_config("small_cnn", 1, 4, 4, 8)), 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    fit_streamed(model, opt, {"real": TableShard(real), "synthetic": TableShard(syn_table)},
                 spec, cfg.end_to_end, "none", 0, torch.device("cpu"), range(1),
                 mix_fraction=1.0)
    assert any(not torch.equal(p, q) for p, q in zip(before, model.parameters()))


def test_own_pairing_needs_the_streamed_path():
    with pytest.raises(ConfigError, match=r"mix.pairing.*train.stream to auto or always"):
        build_config(overrides={"mix.enabled": True, "mix.pairing": "own",
                                "train.stream": "never"})


def test_own_pairing_streams_a_small_training_set_too():
    from raysynth.flows.end_to_end import streams

    own = {"mix.enabled": True, "mix.pairing": "own"}
    assert streams(build_config(overrides=own), 100)
    assert not streams(build_config(overrides={**own, "mix.pairing": "random"}), 100)
    assert not streams(build_config(overrides={**own, "mix.enabled": False}), 100)
