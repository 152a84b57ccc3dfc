"""The generate stage on Ray Data: actor pool, streaming Parquet, resume, killed actors."""

import numpy as np
import pytest
from kill_actor import kill_while_working
from tiny_models import train_pixel_folder

from raysynth import columns as col
from raysynth.config import build_config
from raysynth.data import decode_png
from raysynth.generate.actor import DiffusionGenerator, plan_table
from raysynth.generate.generators import GeneratorSpec
from raysynth.generate.stage import generate
from raysynth.generate.table import existing_ids, read_table
from raysynth.plan.quotas import plan_round, quotas

CLASSES = ["0", "1", "2"]


@pytest.fixture(scope="module")
def pixel_folder(tmp_path_factory):
    return train_pixel_folder(tmp_path_factory.mktemp("gen"), CLASSES)


def _spec(pixel_folder, **over):
    cfg = build_config(overrides={"synthesis.generator.num_steps": 3, **over})
    return cfg, GeneratorSpec(cfg.synthesis.generator, cfg.synthesis.feedback, CLASSES,
                              pixel_folder=pixel_folder, channels=1)


def _plan(cfg, n_per_class=4, round_=0):
    real_ids = {c: [f"real-{c}-{i}" for i in range(3)] for c in range(3)}
    counts = {c: n_per_class for c in range(3)}
    return plan_round(cfg.synthesis, CLASSES, real_ids, counts, cfg.seed, round_)


def test_quotas_from_config():
    cfg = build_config(overrides={"synthesis.quota": "top_up", "synthesis.top_up_to": 10})
    assert quotas(cfg.synthesis, [10, 6, 2]) == {0: 0, 1: 4, 2: 8}
    cfg = build_config()
    assert quotas(cfg.synthesis, [16, 16]) == {0: 8, 1: 8}


def test_generator_call_is_pure_and_typed(pixel_folder):
    cfg, spec = _spec(pixel_folder)
    rows = _plan(cfg, 2)
    stage = DiffusionGenerator(spec)
    batch = {k: v.to_numpy(zero_copy_only=False) for k, v in zip(plan_table(rows).column_names, plan_table(rows).columns)}
    a, b = stage(batch), stage(batch)
    assert list(a[col.SAMPLE_ID]) == [r[col.SAMPLE_ID] for r in rows]
    assert all(x == y for x, y in zip(a[col.IMAGE], b[col.IMAGE]))  # same seed → same bytes
    img = decode_png(a[col.IMAGE][0])
    assert img.shape == (8, 8, 1) and img.dtype == np.uint8
    assert '"kind": "pixel"' in a[col.GENERATOR][0]


def test_pool_writes_each_planned_id_once_and_resumes(ray_local, pixel_folder, tmp_path):
    cfg, spec = _spec(pixel_folder, **{"synthesis.pool.batch_size": 2, "synthesis.pool.max_actors": 2})
    rows = _plan(cfg, 4)
    first = generate(rows[:7], spec, tmp_path / "synthetic", cfg.synthesis)
    assert first.generated == 7
    second = generate(rows, spec, tmp_path / "synthetic", cfg.synthesis, name="round-000b")
    assert (second.skipped, second.generated) == (7, 5)  # only the missing ones
    table = read_table(tmp_path / "synthetic")
    ids = table[col.SAMPLE_ID].to_pylist()
    assert sorted(ids) == sorted(r[col.SAMPLE_ID] for r in rows) and len(set(ids)) == len(ids)
    assert existing_ids(tmp_path / "synthetic") == set(ids)
    # deterministic: the same row generated alone gives the same bytes as in the pool
    one = DiffusionGenerator(spec)({k: np.array([rows[0][k]]) for k in rows[0]})
    by_id = dict(zip(ids, table[col.IMAGE].to_pylist()))
    assert by_id[rows[0][col.SAMPLE_ID]] == one[col.IMAGE][0]


def test_killed_generation_actor_loses_and_duplicates_nothing(ray_local, pixel_folder, tmp_path):
    cfg, spec = _spec(pixel_folder, **{"synthesis.pool.batch_size": 2, "synthesis.pool.max_actors": 2,
                                       "synthesis.generator.num_steps": 20})
    rows = _plan(cfg, 10)
    done = {}
    killed = kill_while_working(
        lambda: done.setdefault("stats", generate(rows, spec, tmp_path / "s", cfg.synthesis)),
        "DiffusionGenerator")
    assert killed is not None, "no generator actor was seen"
    assert done["stats"].generated == len(rows)
    ids = read_table(tmp_path / "s", [col.SAMPLE_ID])[col.SAMPLE_ID].to_pylist()
    assert sorted(ids) == sorted(r[col.SAMPLE_ID] for r in rows) and len(ids) == len(set(ids))

