"""A run directory knows what it is: the marker written first, a folder that is neither empty nor a
run refused, and the stage ledger — a changed config section sets aside exactly the stages
downstream of it (real RunDir on disk; the stage outputs are small stand-in files at the real
paths, the end-to-end version through the CLI is tests/e2e/test_hostile_rundir.py)."""

from __future__ import annotations

import json

import pytest

import raysynth.rundir as rundir_mod
from raysynth.config import build_config, dump_yaml, replace
from raysynth.errors import RunDirError
from raysynth.rundir import MARKER, RunDir

BASE = {"data.classes": ["0", "1", "2"]}
# One stand-in output per ledger stage of the unicon flow, at the path the stage writes.
OUTPUTS = {
    "data": "real/train.parquet",
    "real_classifier": "train/real_classifier/model.safetensors",
    "synthesis": "synthesis.json",
    "search": "tune/summary.json",
    "final": "train/unicon-r0/result.json",
    "report": "report.json",
}
ORDER = list(OUTPUTS)


@pytest.fixture(params=["local", "s3"])
def where(request, tmp_path):
    """A folder for the test's run directories: on the local disk, and on an S3 server (moto's,
    on loopback) — every rule of the run directory holds on both."""
    return tmp_path if request.param == "local" else request.getfixturevalue("s3_root")


def cfg(**sets):
    """The digits preset on three classes with ``sets`` changed (and nothing else: a budget set
    here is only the key, not its overrides)."""
    return replace(build_config("digits", overrides=BASE), **sets)


def snapshot(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def finished_run(root, c=None) -> RunDir:
    """A run whose every unicon stage recorded itself and wrote its output."""
    run = RunDir(root)
    run.init(c or cfg())
    for name, rel in OUTPUTS.items():
        run.stage(name)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(f"{name} output")
    return run


def kept_and_moved(root):
    stale = list((root / "stale").glob("*")) if (root / "stale").exists() else []
    assert len(stale) <= 1
    kept = [n for n, rel in OUTPUTS.items() if (root / rel).is_file()]
    moved = [n for n, rel in OUTPUTS.items() if stale and (stale[0] / rel).is_file()]
    assert sorted(kept + moved) == sorted(OUTPUTS)  # nothing lost
    return kept, moved


# --- what is a run --------------------------------------------------------------------------


def test_marker_is_written_before_config_and_meta(where, monkeypatch):
    out = where / "run"

    def broken(_cfg):
        raise OSError("disk full")

    monkeypatch.setattr(rundir_mod, "dump_yaml", broken)  # the config write fails...
    with pytest.raises(OSError):
        RunDir(out).init(cfg())
    assert json.loads((out / MARKER).read_text())["format"] == rundir_mod.FORMAT_VERSION
    assert not (out / "config.yaml").exists() and not (out / "meta.json").exists()
    assert RunDir(out).exists()  # ...and the half-made folder is still known as a run
    with pytest.raises(RunDirError, match="already holds a run"):
        RunDir(out).init(cfg())


@pytest.mark.parametrize("where,what", [("local", "source tree"), ("local", "unrelated files"),
                                        ("local", "a file"), ("s3", "unrelated files"),
                                        ("s3", "a file")], indirect=["where"])
def test_a_folder_that_is_neither_empty_nor_a_run_is_refused(where, what):
    out = where / "out"
    if what == "a file":
        out.write_text("not a folder")
    else:
        out.mkdir()
        names = ["pyproject.toml", "raysynth/__init__.py", "config.yaml"] if what == "source tree" \
            else ["holiday.jpg", "notes.txt"]
        for n in names:
            (out / n).parent.mkdir(parents=True, exist_ok=True)
            (out / n).write_text("mine")
    before = snapshot(where)
    for resume in (False, True):
        with pytest.raises(RunDirError, match="is not empty and is not a raysynth run"):
            RunDir(out).init(cfg(), resume=resume)
    assert snapshot(where) == before  # nothing written, nothing changed


def test_an_empty_folder_becomes_a_run(where):
    (where / "out").mkdir()
    RunDir(where / "out").init(cfg())
    assert {p.name for p in (where / "out").iterdir()} == {
        MARKER, "stages.json", "config.yaml", "meta.json"}


def test_a_run_is_refused_without_resume_even_when_meta_json_is_gone(where):
    out = where / "run"
    finished_run(out)
    (out / "meta.json").unlink()
    before = snapshot(out)
    with pytest.raises(RunDirError, match="already holds a run; pass --resume"):
        RunDir(out).init(cfg(**{"data.k": 4}))
    assert snapshot(out) == before


def test_meta_json_deleted_then_a_new_k_redoes_every_stage(where):
    """The issue's case: before, config.yaml was overwritten and every old result reused."""
    out = where / "run"
    finished_run(out)
    old_config = (out / "config.yaml").read_text()
    (out / "meta.json").unlink()
    new = cfg(**{"data.k": 4})
    RunDir(out).init(new, resume=True)
    kept, moved = kept_and_moved(out)
    assert kept == [] and moved == ORDER
    (stale,) = (out / "stale").iterdir()
    assert (stale / "config.yaml").read_text() == old_config  # the old outputs' config with them
    assert (out / "config.yaml").read_text() == dump_yaml(new)
    assert json.loads((out / "meta.json").read_text())["format"] == rundir_mod.FORMAT_VERSION


def test_another_format_is_refused(where):
    out = where / "run"
    finished_run(out)
    (out / MARKER).write_text(json.dumps({"raysynth_run": True, "format": 99}))
    with pytest.raises(RunDirError, match="format 99"):
        RunDir(out).init(cfg(), resume=True)


# --- the stage ledger -------------------------------------------------------------------------

CHANGES = [
    # (the --set on resume, the stages kept)
    ({}, ORDER),
    ({"budget": "smoke", "preset": "other"}, ORDER[:-1]),  # only the report is rewritten
    ({"air.top_k": 3}, ORDER[:-1]),  # the air section counts in the air flow only
    ({"mix.fraction": 0.25}, ORDER[:4]),  # final + report
    ({"synthesis.loop.train_by_trust": True}, ORDER[:4]),  # read by the final stage only
    ({"synthesis.loop.explore": 0.5}, ORDER[:2]),  # the rest of synthesis.loop: synthesis on
    ({"tune.num_samples": 7}, ORDER[:3]),  # search, final, report
    ({"tune.weights": [0.2, 0.4, 0.6]}, ORDER[:3]),
    ({"protocol.n_classif": 5}, ORDER[:3]),
    ({"filter.enabled": False}, ORDER[:2]),  # synthesis and after
    ({"synthesis.per_class": 3}, ORDER[:2]),
    ({"encoder.width": 4}, ORDER[:1]),  # the real-split classifier and after
    ({"train.num_workers": 2}, ORDER[:1]),
    ({"seed": 5}, []),
    ({"data.k": 4}, []),
]


# On S3 a few of them: the section logic is the same, the moves are what differs.
S3_CHANGES = ({"mix.fraction": 0.25}, {"synthesis.per_class": 3}, {"seed": 5})
CASES = [(w, s, k) for w in ("local", "s3") for s, k in CHANGES if w == "local" or s in S3_CHANGES]


@pytest.mark.parametrize("where,sets,kept", CASES, indirect=["where"],
                         ids=[f"{w}-{','.join(s) or 'same'}" for w, s, _ in CASES])
def test_a_changed_section_sets_aside_exactly_the_stages_downstream(where, sets, kept):
    out = where / "run"
    finished_run(out)
    untouched = {n: (out / OUTPUTS[n]).stat().st_mtime_ns for n in kept}
    run = RunDir(out)
    run.init(cfg(**sets), resume=True)
    got_kept, moved = kept_and_moved(out)
    assert got_kept == kept and moved == [n for n in ORDER if n not in kept]
    assert {n: (out / OUTPUTS[n]).stat().st_mtime_ns for n in kept} == untouched
    ledger = json.loads((out / "stages.json").read_text())
    assert sorted(ledger) == sorted(kept)  # the redone stages record themselves when they run
    for name in ORDER:  # going through every stage again moves nothing more
        run.stage(name)
    assert kept_and_moved(out) == (got_kept, moved)
    assert sorted(json.loads((out / "stages.json").read_text())) == sorted(ORDER)


def test_resume_without_changes_keeps_everything_and_moves_nothing(where):
    out = where / "run"
    finished_run(out)
    before = snapshot(out)
    run = RunDir(out)
    run.init(cfg(), resume=True)
    for name in ORDER:
        run.stage(name)
    assert snapshot(out) == before and not (out / "stale").exists()


def test_outputs_without_a_record_are_never_reused(where):
    """stages.json deleted (or a stage's output dropped in by hand): its outputs are set aside."""
    out = where / "run"
    finished_run(out)
    (out / "stages.json").unlink()
    RunDir(out).init(cfg(), resume=True)
    assert kept_and_moved(out) == ([], ORDER)


def test_a_stage_checks_itself_when_it_runs(where):
    """The check is in RunDir.stage, so a stage reached without a sweep is still checked."""
    out = where / "run"
    finished_run(out)
    run = RunDir(out)
    run.cfg = cfg(**{"tune.num_samples": 9})  # as if init had not swept
    run.stage("search")
    assert not (out / "tune" / "summary.json").exists()
    assert (out / "synthesis.json").is_file()
    run.stage("synthesis")
    assert (out / "synthesis.json").is_file()


def test_the_study_refuses_any_change(where):
    out = where / "run"
    finished_run(out)
    with pytest.raises(RunDirError, match=r"config differs .*keys: data\.k"):
        RunDir(out).init(cfg(**{"data.k": 4}), resume=True, allow_changes=False)


@pytest.mark.parametrize("where", ["local"], indirect=True)  # no run on S3 predates the marker
def test_a_run_from_before_the_marker_is_adopted_only_with_its_own_config(where):
    for sets, kept in (({}, ORDER), ({"tune.num_samples": 9}, [])):
        out = where / f"legacy-{len(sets)}"
        finished_run(out)
        (out / MARKER).unlink()
        (out / "stages.json").unlink()
        RunDir(out).init(cfg(**sets), resume=True)
        assert (out / MARKER).is_file()
        assert kept_and_moved(out)[0] == kept
