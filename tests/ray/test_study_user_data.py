"""`raysynth study controlled --data PATH`: the study on the user's own labelled images. An
ImageFolder written from the bundled digits gives the same report as the digits study (same
classes and seeds). With fixed weights no search runs and the encoders train in Ray Train's local
mode, so the studies run in this process without starting a Ray instance (the CLI's own part,
``--data`` into the study's spec and its errors before Ray starts, is checked through ``main``)."""

import json

import numpy as np
import pytest
from PIL import Image
from tiny_models import one_thread  # noqa: F401

from raysynth.cli import main
from raysynth.config import parse_set
from raysynth.flows.controlled import (
    StudySpec,
    build_study_config,
    build_study_data,
    run_controlled,
)
from raysynth.report.text import md_text

pytestmark = pytest.mark.usefixtures("one_thread")

# tiny but real: 2 encoder epochs, one classifier run per encoder run; fixed weights of 0, so
# no search runs and the report explains the zero weights
SETS = ["budget=smoke", "encoder.width=8", "encoder.epochs=2", "classifier.epochs=10",
        "protocol.n_classif=1", "tune.weights=[0.0, 0.0]", "data.test_per_class=20",
        "data.channels=1"]


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory):
    """The digits 0 and 9 as an ImageFolder (8×8 grey PNGs, digits scaled 0–16 → 0–255), plus a
    class the study does not use."""
    from sklearn.datasets import load_digits

    d = load_digits()
    root = tmp_path_factory.mktemp("imagefolder")
    for i, (img, y) in enumerate(zip(d.images, d.target)):
        if y in (0, 9, 5):
            folder = root / str(y)
            folder.mkdir(exist_ok=True)
            pixels = np.rint(img * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:04d}.png")
    return root


def _cmd(out, *extra):
    args = ["study", "controlled", "--classes", "0", "9", "--synthetic", "swapped", "--k", "4",
            "--out", str(out), *extra]
    for s in SETS:
        args += ["--set", s]
    return args


def _study(out, data=""):
    """What ``raysynth study controlled`` runs once Ray is connected (cli.cmd_study)."""
    spec = StudySpec(("0", "9"), "swapped", 4, data=data)
    cfg = build_study_config(spec, parse_set(SETS))
    run_controlled(spec, cfg, out, data=build_study_data(spec, cfg))


def test_imagefolder_study_reports_what_the_digits_study_does(digits_folder, tmp_path):
    spec = StudySpec(("0", "9"), "swapped", 4, data=str(digits_folder))
    cfg = build_study_config(spec, parse_set(SETS))
    assert (cfg.data.source, cfg.data.path) == ("imagefolder", str(digits_folder))
    val, _ = build_study_data(spec, cfg)
    dval, _ = build_study_data(StudySpec(("0", "9"), "swapped", 4),
                               build_study_config(StudySpec(("0", "9"), "swapped", 4),
                                                  parse_set(SETS)))
    for part in ("train", "synthetic", "pool", "eval"):  # the same images, in the same order
        np.testing.assert_array_equal(getattr(val, part).x, getattr(dval, part).x)
        np.testing.assert_array_equal(getattr(val, part).y, getattr(dval, part).y)

    _study(tmp_path / "digits")
    _study(tmp_path / "folder", str(digits_folder))
    a, b = (json.loads((tmp_path / n / "report.json").read_text()) for n in ("digits", "folder"))
    assert a["study"].pop("data") == "digits" and b["study"].pop("data") == str(digits_folder)
    for r in (a, b):
        r.pop("timings")
        r["tune"].pop("wall_s")
    assert a == b
    assert set(a["weights"]) == {"0", "9"} and a["tune"]["trials"] == 0
    assert a["weights_note"].startswith("Every weight is 0 because tune.weights set them so")
    for m in ("supcon_real", "supcon_mixed", "unicon"):
        assert len(a["accuracy"][m]["per_class"]) == 2
        # with one classifier run per encoder run, the overall accuracy is the mean of the
        # per-class ones (20 test images per class)
        per = [c["mean"] for c in a["accuracy"][m]["per_class"]]
        assert a["accuracy"][m]["mean"] == pytest.approx(np.mean(per))
    h = a["headline"]
    assert h["baseline"] == "supcon_real" and h["method"] in ("supcon_mixed", "unicon")
    best = a["accuracy"][h["method"]]["mean"]
    assert best == max(a["accuracy"][m]["mean"] for m in ("supcon_mixed", "unicon"))
    assert h["gain_points"] == pytest.approx(100 * (best - a["accuracy"]["supcon_real"]["mean"]))
    md = (tmp_path / "folder" / "report.md").read_text()
    assert md.startswith(f"# Controlled study: swapped on {md_text(str(digits_folder))} 0 vs 9")
    assert h["text"].split(":")[0] in md and "| 9 |" in md


def test_bad_data_fails_before_ray_with_a_clear_message(tmp_path, digits_folder, capsys):
    assert main(_cmd(tmp_path / "a", "--data", str(tmp_path / "missing"))) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(_cmd(tmp_path / "b", "--data", str(digits_folder), "--classes", "0", "7")) == 2
    err = capsys.readouterr().err
    assert "'7'" in err and "available classes: '0', '5', '9'" in err
    notes = tmp_path / "notes.txt"
    notes.write_text("x")
    assert main(_cmd(tmp_path / "c", "--data", str(notes))) == 2
    assert "not a .parquet file" in capsys.readouterr().err
