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


def test_corrupt_image_is_skipped_and_named(tmp_path):
    root = _folder(tmp_path)
    (root / "cat" / "broken.png").write_bytes(b"\x89PNG not really")
    (root / "dog" / "empty.jpg").write_bytes(b"")
    proc = raysynth(*_imagefolder_args(root))
    assert proc.returncode == 0, proc.stderr
    assert "skipped 2 unreadable image(s)" in proc.stdout
    assert "broken.png" in proc.stdout and "empty.jpg" in proc.stdout


def test_empty_class_folder(tmp_path):
    root = _folder(tmp_path)
    (root / "bird").mkdir()
    proc = raysynth(*_imagefolder_args(root))
    _assert_clear_error(proc, "bird")


def test_missing_dataset_path(tmp_path):
    proc = raysynth(*_imagefolder_args(tmp_path / "nowhere"))
    _assert_clear_error(proc, "nowhere")


@pytest.mark.parametrize("preset", ["nope"])
def test_unknown_preset(preset):
    proc = raysynth("run", "--dry-run", "--preset", preset)
    _assert_clear_error(proc, "preset 'nope' does not exist", "digits")
