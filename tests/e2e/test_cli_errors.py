"""Bad input as a new user would type it: a clear message and a non-zero exit, no traceback."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image


def raysynth(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "raysynth.cli", *args],
        capture_output=True, text=True, cwd=cwd, timeout=300,
    )


def _assert_clear_error(proc, *needles):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "raysynth: error:" in proc.stderr
    for n in needles:
        assert n in proc.stderr, proc.stderr


def test_unknown_config_key():
    proc = raysynth("run", "--dry-run", "--set", "tune.num_sampels=3")
    _assert_clear_error(proc, "unknown config key 'tune.num_sampels'", "tune.num_samples")


def test_wrong_type():
    proc = raysynth("run", "--dry-run", "--set", "data.k=lots")
    _assert_clear_error(proc, "data.k: expected an integer")


def test_k_larger_than_a_class_has():
    proc = raysynth("run", "--dry-run", "--set", "data.k=500")
    _assert_clear_error(proc, "has 178 images but the split needs", "data.k")


def test_study_k_too_large(tmp_path):
    proc = raysynth("study", "controlled", "--classes", "0", "9", "--k", "400",
                    "--out", str(tmp_path / "s"))
    _assert_clear_error(proc, "images but the split needs")
    assert "Started a local Ray instance" not in proc.stderr  # checked before Ray starts


def test_study_too_few_digits_left_for_synthetic_images(tmp_path):
    proc = raysynth("study", "controlled", "--classes", "0", "9", "--k", "16",
                    "--n-synthetic", "60", "--out", str(tmp_path / "s"))
    _assert_clear_error(proc, "36 images per class are left", "each encoder run draws 60")
    assert not (tmp_path / "s").exists()  # nothing written


def test_study_bad_synthetic_kind(tmp_path):
    proc = raysynth("study", "controlled", "--classes", "0", "9", "--synthetic", "morph:0.5,2",
                    "--out", str(tmp_path / "s"))
    _assert_clear_error(proc, "morph needs one ratio in [0, 1] per class")


def _folder(tmp_path, classes=("cat", "dog"), n=4):
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            arr = rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / c / f"{i}.png")
    return root


def _imagefolder_args(root):
    return ["run", "--dry-run", "--set", "data.source=imagefolder", "--set", f"data.path={root}",
            "--set", "data.k=1", "--set", "data.pool_per_class=1", "--set", "data.val_per_class=1",
            "--set", "data.test_per_class=1"]


def test_dry_run_lists_an_imagefolder_without_reading_its_images(tmp_path):
    """--dry-run lists the tree as the data stage does (a corrupt or empty file is found and
    named by the data stage's tasks: tests/ray/test_streamed_data.py)."""
    root = _folder(tmp_path)
    (root / "cat" / "broken.png").write_bytes(b"\x89PNG not really")
    (root / "dog" / "empty.jpg").write_bytes(b"")
    proc = raysynth(*_imagefolder_args(root))
    assert proc.returncode == 0, proc.stderr
    assert "data: 10 images, 2 classes, 3 channel(s)" in proc.stdout
    assert "listed, not opened" in proc.stdout and "skipped" not in proc.stdout


def test_empty_class_folder(tmp_path):
    root = _folder(tmp_path)
    (root / "bird").mkdir()
    proc = raysynth(*_imagefolder_args(root))
    _assert_clear_error(proc, "bird")


def test_missing_dataset_path(tmp_path):
    """A run fails before Ray starts or anything is written; --dry-run (which validates cluster
    recipes on a machine without their data) says the data was not checked."""
    args = _imagefolder_args(tmp_path / "nowhere")
    proc = raysynth(*[a for a in args if a != "--dry-run"], "--out", str(tmp_path / "run"))
    _assert_clear_error(proc, "nowhere", "does not exist on this machine")
    assert not (tmp_path / "run").exists()
    dry = raysynth(*args)
    assert dry.returncode == 0, dry.stderr
    assert f"data: {tmp_path / 'nowhere'} is not on this machine; not checked" in dry.stdout


@pytest.mark.parametrize("preset", ["nope"])
def test_unknown_preset(preset):
    proc = raysynth("run", "--dry-run", "--preset", preset)
    _assert_clear_error(proc, "preset 'nope' does not exist", "digits")


# --- fixed per-class weights (`tune.weights`, from --set or a config file) ----------------------
# There is no `--weights FILE` option: weights come in through the config, e.g. a YAML file
# `tune: {weights: [...]}` passed with --config (it may start from a preset with `base:`).


def _weights_file(tmp_path, weights):
    path = tmp_path / "weights.yaml"
    path.write_text(f"base: digits\ndata:\n  classes: ['0', '1', '2']\ntune:\n  weights: {weights}\n")
    return path


def test_weights_outside_unit_interval(tmp_path):
    proc = raysynth("run", "--dry-run", "--config", str(_weights_file(tmp_path, [0.5, 1.5, 0.2])))
    _assert_clear_error(proc, "tune.weights", "[0, 1]", "1.5")
    proc = raysynth("run", "--dry-run", "--set", "tune.weights=[-0.1,0.5]")
    _assert_clear_error(proc, "tune.weights", "-0.1")


def test_weights_that_do_not_match_the_classes(tmp_path):
    proc = raysynth("run", "--dry-run", "--config", str(_weights_file(tmp_path, [0.5, 0.5])))
    _assert_clear_error(proc, "tune.weights has 2 value(s) but the data has 3 classes")


def test_weights_mismatch_stops_before_any_model_is_trained(tmp_path):
    """The same check in the job itself, right after the data stage (in-process: the error
    comes before anything needs Ray)."""
    from raysynth.config import build_config
    from raysynth.errors import ConfigError
    from raysynth.flows.run import run_flow

    out = tmp_path / "run"
    cfg = build_config(config_file=_weights_file(tmp_path, [0.5, 0.5, 0.5, 0.5]))
    with pytest.raises(ConfigError, match=r"tune.weights has 4 value\(s\) but the data has 3"):
        run_flow(cfg, out)
    assert (out / "real" / "train.parquet").is_file()  # the data stage ran...
    assert not (out / "generator").exists() and not (out / "synthetic").exists()  # ...no more


# --- a generator model that is not there (offline) ----------------------------------------------


def _snapshot(root):
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("model", ["/nope", "nobody/no-such-model"])
def test_missing_model_is_a_clear_error_and_writes_nothing(tmp_path, model):
    out = tmp_path / "run"
    sets = ["--set", "synthesis.generator.kind=text2image",
            "--set", f"synthesis.generator.model={model}"]
    proc = raysynth("run", *sets, "--out", str(out))
    _assert_clear_error(proc, f"synthesis.generator.model={model!r}")
    assert not out.exists()  # failed before the run directory was created


def test_missing_model_leaves_an_existing_run_directory_untouched(tmp_path):
    """A run whose model has since gone (deleted cache, another machine): `--resume` stops with a
    clear error and changes no file of the run directory."""
    from raysynth.config import build_config
    from raysynth.flows.prepare import prepare_real
    from raysynth.rundir import RunDir

    overrides = {"synthesis.generator.kind": "text2image", "synthesis.generator.model": "/nope",
                 "data.classes": ["0", "1"]}
    out = tmp_path / "run"
    run = RunDir(out)
    run.init(build_config("digits", overrides=overrides))
    prepare_real(run, build_config("digits", overrides=overrides))  # real/: the run's data
    (out / "run.log").write_text("earlier stages\n")
    before = _snapshot(out)
    assert "real/train.parquet" in before
    proc = raysynth("run", "--resume", "--out", str(out), "--set", "data.classes=0,1",
                    *[a for k, v in overrides.items() if k != "data.classes"
                      for a in ("--set", f"{k}={v}")])
    _assert_clear_error(proc, "synthesis.generator.model='/nope'", "model_index.json")
    assert _snapshot(out) == before
