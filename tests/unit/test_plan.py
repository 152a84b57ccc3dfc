"""The synthesis plan: stable ids and seeds, conditioning ids, quotas and prompt templates."""

import pytest

from raysynth import columns as col
from raysynth.errors import ConfigError, DataError
from raysynth.plan.quotas import quotas_fixed, quotas_fraction_of_k, quotas_top_up
from raysynth.plan.rows import (
    DATASET_PROMPTS,
    INDEX,
    PROMPT_TEMPLATES,
    format_prompt,
    make_plan,
)

NAMES = ["zero", "one", "two"]
REAL = {0: ["real-000000", "real-000003"], 1: ["real-000001"], 2: ["real-000002", "real-000005"]}


def _plan(**kw):
    args = {"quotas": {0: 4, 1: 2, 2: 3}, "run_seed": 7}
    args.update(kw)
    return make_plan(NAMES, REAL, **args)


def test_rows_have_the_columns_and_one_row_per_quota_slot():
    rows = _plan()
    assert len(rows) == 9
    want = {
        col.SAMPLE_ID,
        col.LABEL,
        col.CLASS_NAME,
        col.PROMPT,
        col.NEGATIVE_PROMPT,
        col.SEED,
        col.ROUND,
        col.COND_ID,
        INDEX,
    }
    assert all(set(r) == want for r in rows)
    assert [(r[col.LABEL], r[INDEX]) for r in rows] == [
        (0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (2, 0), (2, 1), (2, 2),
    ]  # fmt: skip
    assert [r[col.CLASS_NAME] for r in rows[:4]] == ["zero"] * 4
    assert rows[0][col.PROMPT] == "a photo of zero"
    assert {r[col.ROUND] for r in rows} == {0}


def test_ids_and_seeds_are_unique_and_stable_across_calls():
    a, b = _plan(), _plan()
    assert a == b
    ids = [r[col.SAMPLE_ID] for r in a]
    assert len(set(ids)) == len(ids)
    assert all(i.startswith("syn-") for i in ids)
    seeds = [r[col.SEED] for r in a]
    assert len(set(seeds)) == len(seeds)
    assert all(isinstance(s, int) and 0 <= s < 2**31 for s in seeds)


def test_another_seed_or_round_gives_other_ids_and_seeds():
    base = _plan()
    for other in (_plan(run_seed=8), _plan(round=1)):
        assert not {r[col.SAMPLE_ID] for r in base} & {r[col.SAMPLE_ID] for r in other}
        assert not {r[col.SEED] for r in base} & {r[col.SEED] for r in other}
    assert {r[col.ROUND] for r in _plan(round=1)} == {1}


def test_ids_do_not_depend_on_the_other_classes_or_their_order():
    alone = make_plan(NAMES, REAL, {2: 3}, run_seed=7)
    assert alone == [r for r in _plan() if r[col.LABEL] == 2]


def test_cond_id_is_a_real_id_of_the_class_and_independent_of_list_order():
    rows = _plan(quotas={0: 20, 1: 3, 2: 20})
    for r in rows:
        assert r[col.COND_ID] in REAL[r[col.LABEL]]
    assert {r[col.COND_ID] for r in rows if r[col.LABEL] == 0} == set(REAL[0])  # both get used
    shuffled = {c: list(reversed(ids)) for c, ids in REAL.items()}
    assert make_plan(NAMES, shuffled, {0: 20, 1: 3, 2: 20}, run_seed=7) == rows


def test_start_index_continues_a_plan():
    full = make_plan(NAMES, REAL, {0: 5}, run_seed=1)
    head = make_plan(NAMES, REAL, {0: 3}, run_seed=1)
    tail = make_plan(NAMES, REAL, {0: 2}, run_seed=1, start_index={0: 3})
    assert head + tail == full


def test_zero_quota_gives_no_rows_and_a_class_without_real_images_is_an_error():
    assert make_plan(NAMES, {0: ["r"]}, {0: 1, 1: 0}, run_seed=0)[0][col.COND_ID] == "r"
    with pytest.raises(DataError, match="'one'"):
        make_plan(NAMES, {0: ["r"]}, {0: 1, 1: 2}, run_seed=0)
    with pytest.raises(ConfigError, match="label 5"):
        make_plan(NAMES, REAL, {5: 1}, run_seed=0)


def test_quota_helpers():
    assert quotas_fixed(3, 4) == {0: 4, 1: 4, 2: 4}
    assert quotas_fraction_of_k([16, 16, 3, 1], 0.5) == {0: 8, 1: 8, 2: 1, 3: 1}
    assert quotas_fraction_of_k({0: 32, 4: 8}, 0.5) == {0: 16, 4: 4}
    assert quotas_top_up([1300, 500, 1400, 0], 1300) == {0: 0, 1: 800, 2: 0, 3: 1300}
    with pytest.raises(ConfigError):
        quotas_fraction_of_k([4], 0)
    with pytest.raises(ConfigError):
        quotas_top_up([4], -1)


def test_prompt_templates():
    assert format_prompt(PROMPT_TEMPLATES["photo"], "thorn apple") == "a photo of thorn apple"
    assert format_prompt("{context}: {class}", "thorn apple", "Flowers") == "Flowers: thorn apple"
    assert format_prompt("{class} in {context}", "dog", "snow") == "dog in snow"
    assert format_prompt("{{literal}} {class}", "cat") == "{literal} cat"
    prompt, negative = DATASET_PROMPTS["flowers"]
    rows = make_plan(
        ["rose"], {0: ["r"]}, {0: 1}, 0, prompt_template=prompt, negative_prompt=negative,
        context="flower",
    )  # fmt: skip
    assert rows[0][col.PROMPT] == "a photo of a rose, a kind of flower"
    assert rows[0][col.NEGATIVE_PROMPT] == negative
    for p, n in DATASET_PROMPTS.values():
        assert "{" not in format_prompt(p, "x", "y") + format_prompt(n, "x", "y")


@pytest.mark.parametrize("template", ["a photo of {clas}", "{} photo", "{class} {name.attr}"])
def test_unknown_placeholder_is_a_config_error_naming_it(template):
    with pytest.raises(ConfigError, match=r"placeholder \{") as err:
        make_plan(NAMES, REAL, {0: 1}, 0, prompt_template=template)
    assert template in str(err.value)


def test_malformed_template_is_a_config_error():
    with pytest.raises(ConfigError, match="malformed"):
        format_prompt("a photo of {class", "x")


def test_blocks_hold_up_to_four_batches_while_every_actor_gets_four_blocks():
    from raysynth.generate.stage import batches_per_block

    assert batches_per_block(1536, 8, 2) == 4  # 192 batches: 48 blocks of 4 for 2 actors
    assert batches_per_block(80, 8, 2) == 1  # a small round: a batch per block
    assert batches_per_block(200, 8, 2) == 3  # 25 batches: 8 blocks of 3 (the last short)
    assert batches_per_block(10_000, 8, 64) == 4
    assert batches_per_block(3, 8, 1) == 1  # fewer rows than a batch
    assert batches_per_block(1536, 8, 0) == 4  # no actor count: treated as one


def _blocks(n: int, batch: int, actors: int) -> tuple[list[int], list[str], list[str]]:
    from raysynth.config.schema import Resources
    from raysynth.generate.stage import plan_blocks

    rows = _plan(quotas={0: n - n // 3 - n // 3, 1: n // 3, 2: n // 3})
    blocks = plan_blocks(rows, Resources(batch_size=batch, max_actors=actors))
    ids = [i for b in blocks for i in b.column(col.SAMPLE_ID).to_pylist()]
    return [b.num_rows for b in blocks], ids, [r[col.SAMPLE_ID] for r in rows]


def test_a_round_starts_with_one_batch_then_whole_batch_blocks():
    # digits (batch 8, one generator actor): one batch first (a round's first images after one
    # batch, not one block), then blocks of two batches; the rows and their order are the plan's
    sizes, ids, want = _blocks(80, 8, 1)
    assert sizes == [8, 16, 16, 16, 16, 8]
    assert ids == want
    assert _blocks(80, 8, 2)[0] == [8] * 10
    assert _blocks(3, 8, 1)[0] == [3]
    assert _blocks(20, 1, 1)[0] == [1, 4, 4, 4, 4, 3]
    assert _blocks(66, 16, 1)[0] == [16, 16, 16, 16, 2]  # a block of one batch: 66 rows are 5
