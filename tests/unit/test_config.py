import dataclasses

import pytest

from raysynth.config import RunConfig, build_config, dump_yaml, list_presets, parse_set, replace
from raysynth.config.load import from_flat, load_resolved
from raysynth.errors import ConfigError


def test_defaults_are_valid_and_frozen():
    cfg = RunConfig()
    assert cfg.tune.num_samples == 100 and cfg.tune.n_initial_points == 20
    assert cfg.encoder.temperature == 0.07 and cfg.encoder.lr == 1e-3
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 3  # type: ignore[misc]


def test_set_overrides_and_coercion():
    cfg = build_config(
        "digits",
        overrides=parse_set(
            ["tune.num_samples=40", "encoder.lr=0.01", "data.classes=0,9", "train.use_gpu=true"]
        ),
    )
    assert cfg.tune.num_samples == 40
    assert cfg.encoder.lr == pytest.approx(0.01)
    assert cfg.data.classes == ("0", "9")
    assert cfg.train.use_gpu is True
    assert cfg.preset == "digits"


def test_unknown_key_names_key_and_lists_valid_ones():
    with pytest.raises(ConfigError) as e:
        build_config(overrides={"tune.num_sampels": 3})
    msg = str(e.value)
    assert "tune.num_sampels" in msg and "tune.num_samples" in msg and "tune.max_concurrent" in msg
    with pytest.raises(ConfigError, match="valid keys are: preset, flow, seed"):
        build_config(overrides={"nosection.key": 1})


def test_wrong_type_names_key():
    with pytest.raises(ConfigError, match=r"tune.num_samples: expected an integer, got 'many'"):
        build_config(overrides={"tune.num_samples": "many"})
    with pytest.raises(ConfigError, match="train.use_gpu: expected true or false"):
        build_config(overrides={"train.use_gpu": 3})


def test_validation_errors_name_the_key():
    with pytest.raises(ConfigError, match="encoder.arch"):
        build_config(overrides={"encoder.arch": "vgg"})
    with pytest.raises(ConfigError, match="tune.weights"):
        build_config(overrides={"tune.weights": [0.5, 1.5]})
    with pytest.raises(ConfigError, match="data.path"):
        build_config(overrides={"data.source": "imagefolder"})


def test_budget_scales_and_explicit_values_win(tmp_path):
    smoke = build_config(overrides={"budget": "smoke"})
    assert smoke.tune.num_samples < RunConfig().tune.num_samples
    assert smoke.encoder.epochs < RunConfig().encoder.epochs
    explicit = build_config(overrides={"budget": "smoke", "tune.num_samples": 7})
    assert explicit.tune.num_samples == 7
    with pytest.raises(ConfigError, match="budget"):
        build_config(overrides={"budget": "huge"})


def test_yaml_file_holds_differences_and_round_trips(tmp_path):
    f = tmp_path / "exp.yaml"
    f.write_text("data:\n  k: 8\ntune:\n  num_samples: 12\n")
    cfg = build_config(config_file=f)
    assert cfg.data.k == 8 and cfg.tune.num_samples == 12 and cfg.preset == "exp"
    out = tmp_path / "config.yaml"
    out.write_text(dump_yaml(cfg))
    assert load_resolved(out) == cfg


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        build_config(config_file=tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        build_config(config_file=bad)


def test_presets_listed_and_unknown_preset():
    assert "digits" in list_presets()
    with pytest.raises(ConfigError, match="digits"):
        build_config("no-such-preset")


def test_replace_and_from_flat():
    cfg = replace(RunConfig(), **{"protocol.n_contr": 2})
    assert cfg.protocol.n_contr == 2 and cfg.protocol.n_classif == 3
    assert from_flat({"seed": 4}).seed == 4


def test_config_file_can_start_from_a_preset(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("base: digits\ndata:\n  k: 4\n")
    cfg = build_config(config_file=f)
    assert cfg.data.source == "digits" and cfg.data.k == 4 and cfg.preset == "digits"
    f.write_text("base: nothing-like-this\n")
    with pytest.raises(ConfigError, match="does not exist"):
        build_config(config_file=f)


def test_budget_overrides_the_preset_but_not_set():
    preset = build_config("digits")
    paper = build_config("digits", overrides={"budget": "paper"})
    assert preset.encoder.epochs < paper.encoder.epochs == 200
    assert build_config("digits", overrides={"budget": "smoke"}).tune.num_samples == 4


def test_ddim_eta_is_checked_against_the_scheduler():
    assert build_config(overrides={"synthesis.generator.eta": 1.0}).synthesis.generator.eta == 1.0
    with pytest.raises(ConfigError, match=r"synthesis.generator.eta: η applies to the ddim"):
        build_config(
            overrides={"synthesis.generator.eta": 0.5, "synthesis.generator.scheduler": "euler"}
        )
    with pytest.raises(ConfigError, match=r"synthesis.generator.eta: must be in \[0, 1\]"):
        build_config(overrides={"synthesis.generator.eta": 2.0})


def test_a_pool_key_given_at_its_old_place_names_its_new_one():
    with pytest.raises(ConfigError) as e:
        build_config(overrides={"synthesis.max_actors": 2})
    msg = str(e.value)
    assert "did you mean synthesis.pool.max_actors?" in msg
    assert "synthesis.pool.*" in msg and "synthesis.generator.*" in msg
