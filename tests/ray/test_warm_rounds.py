"""Rounds that cost no start-up (issue #16): the synthesis stage starts its generator, filter and
writer actors once and feeds them round after round — every planned sample_id still written
exactly once, also when a warm generator actor is killed mid-round."""

import time

import pytest
from kill_actor import kill_while_working
from tiny_models import train_pixel_folder

from raysynth import columns as col
from raysynth.config import build_config
from raysynth.filter.loop import Loop
from raysynth.filter.rounds import RealTrain, Synthesis, synthesize
from raysynth.generate.generators import GeneratorSpec
from raysynth.generate.table import existing_ids, read_table
from raysynth.generate.warm import WarmGenerate
from raysynth.plan.quotas import plan_round

CLASSES = ["0", "1", "2"]
REAL_IDS = {c: [f"real-{c}-{i}" for i in range(3)] for c in range(3)}


@pytest.fixture(scope="module")
def pixel_folder(tmp_path_factory):
    return train_pixel_folder(tmp_path_factory.mktemp("warm"), CLASSES)


def _spec(pixel_folder, **over):
    cfg = build_config(overrides={"synthesis.generator.num_steps": 3,
                                  "synthesis.pool.batch_size": 2, **over})
    return cfg, GeneratorSpec(cfg.synthesis.generator, cfg.synthesis.feedback, CLASSES,
                              pixel_folder=pixel_folder, channels=1)


def _actors_since(before: set) -> dict:
    from ray._private.state import actors

    return {k: a for k, a in actors().items() if k not in before}


def _named(new: dict, name: str) -> list[dict]:
    return [a for a in new.values() if name in a["ActorClassName"]]


def test_rounds_share_one_set_of_actors_and_write_each_id_once(ray_local, pixel_folder, tmp_path):
    from ray._private.state import actors

    cfg, spec = _spec(pixel_folder, **{
        "synthesis.rounds": 2, "synthesis.allocation": "fixed", "synthesis.quota": "fixed",
        "synthesis.per_class": 4, "filter.enabled": False})
    job = Synthesis(cfg.synthesis, cfg.filter, cfg.seed, tmp_path / "synthetic",
                    tmp_path / "emb.npz")
    real = RealTrain(tuple(CLASSES), REAL_IDS, 1, 8, str(tmp_path / "unused.parquet"))
    before = set(actors())
    out = synthesize(job, real, spec, None, Loop(None, tmp_path / "allocation.jsonl"))

    counts = out["allocation"]["counts"]
    assert len(counts) == 2 and all(sum(c) > 0 for c in counts)  # two rounds, both generated
    planned, start = [], {c: 0 for c in range(3)}
    for r, per_class in enumerate(counts):
        n = {c: k for c, k in enumerate(per_class) if k}
        planned += [row[col.SAMPLE_ID] for row in
                    plan_round(cfg.synthesis, CLASSES, REAL_IDS, n, cfg.seed, r, dict(start))]
        start = {c: start[c] + n.get(c, 0) for c in range(3)}
    table = read_table(job.out, [col.SAMPLE_ID, col.ROUND])
    ids = table[col.SAMPLE_ID].to_pylist()
    assert len(ids) == len(set(ids)) == 12 and sorted(ids) == sorted(planned)
    assert sorted(set(table[col.ROUND].to_pylist())) == [0, 1]

    # one generator, one filter (accept-all) and one writer actor served both rounds — a pipeline
    # per round starts them again each round — and none of them outlives the stage
    new = _actors_since(before)
    for name in ("DiffusionGenerator", "AcceptAll", "PartWriter"):
        assert len(_named(new, name)) == 1, (name, [a["ActorClassName"] for a in new.values()])
    deadline = time.time() + 30
    while time.time() < deadline and any(a["State"] != "DEAD" for a in _actors_since(before).values()):
        time.sleep(0.5)
    assert {a["State"] for a in _actors_since(before).values()} == {"DEAD"}


def test_killed_warm_generator_loses_and_duplicates_nothing(ray_local, pixel_folder, tmp_path):
    from ray._private.state import actors

    cfg, spec = _spec(pixel_folder, **{"synthesis.pool.min_actors": 2, "synthesis.pool.max_actors": 2,
                                       "synthesis.generator.num_steps": 20})
    rounds = [plan_round(cfg.synthesis, CLASSES, REAL_IDS, {c: n for c in range(3)}, cfg.seed, r)
              for r, n in enumerate((6, 2))]
    before = set(actors())
    stats = []
    with WarmGenerate(spec, tmp_path / "s", cfg.synthesis) as generate:
        killed = kill_while_working(lambda: stats.append(generate(rounds[0], "round-000")),
                                    "DiffusionGenerator", frozenset(before))
        stats.append(generate(rounds[1], "round-001"))  # the pools still serve the next round
        survivors = generate.pids()[0]
    assert killed is not None, "no generator actor was seen"
    assert [s.generated for s in stats] == [18, 6]
    assert killed["Pid"] not in survivors and survivors
    assert len(_named(_actors_since(before), "DiffusionGenerator")) == 3  # 2 + its replacement
    ids = read_table(tmp_path / "s", [col.SAMPLE_ID])[col.SAMPLE_ID].to_pylist()
    planned = [row[col.SAMPLE_ID] for rows in rounds for row in rows]
    assert sorted(ids) == sorted(planned) and len(ids) == len(set(ids))


def test_written_ids_are_read_once_and_kept_as_the_table_grows(ray_local, pixel_folder, tmp_path):
    cfg, spec = _spec(pixel_folder)
    rounds = [plan_round(cfg.synthesis, CLASSES, REAL_IDS, {c: n for c in range(3)}, cfg.seed, r)
              for r, n in enumerate((3, 2))]
    ids = [{row[col.SAMPLE_ID] for row in rows} for rows in rounds]
    out = tmp_path / "s"
    with WarmGenerate(spec, out, cfg.synthesis) as generate:
        first = generate(rounds[0], "round-000")
        assert generate.written == existing_ids(out) == ids[0]  # each written part added
        again = generate(rounds[0], "round-000")  # from the kept ids: nothing made twice
        second = generate(rounds[1], "round-001")
        assert generate.written == existing_ids(out) == ids[0] | ids[1]
    assert [first.generated, again.generated, again.skipped, second.generated] == [9, 0, 9, 6]
    with WarmGenerate(spec, out, cfg.synthesis) as resumed:  # a new stage reads them from disk
        stats = resumed(rounds[1], "round-001")
        assert (stats.skipped, stats.generated, resumed.started) == (6, 0, False)
