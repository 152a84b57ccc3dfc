"""``raysynth study allocation`` (issue #16): allocation policies at the same total budget on the
same real split, over seeds.

Each (seed, policy) is one ordinary run of the preset's flow in ``<out>/seed-<s>/<policy>/`` with
``synthesis.allocation = policy`` and ``seed = base + s`` (so every policy of a seed sees the
same real split, real-split classifier and pixel model: the pixel model is trained by the
seed's first run and copied into the others — its folder is named by the hash of its data and
config, so a copy is exactly what the run would train). The budget is the preset's own
(``synthesis.budget`` 0 = its quotas' total) unless ``--set synthesis.budget=N``, spread over
``synthesis.rounds`` (:data:`STUDY_ROUNDS` unless set).

Writes ``allocation.json`` (``{"policies": {NAME: {"overall": {"mean", "std"}, "few": {...},
"generated": N, "accepted": N}}}``, test accuracies in percent, ``few`` absent without
long-tail groups; ``generated`` / ``accepted`` are means over seeds), ``allocation.md`` (the
table) and ``allocation.png`` (every policy's validation accuracy versus images generated).
Nothing is chosen on the test split: the curves are the loop's own validation measurements.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from raysynth.config import RunConfig, build_config
from raysynth.config.schema import ALLOCATIONS
from raysynth.errors import ConfigError
from raysynth.files import atomic_write_bytes, atomic_write_json, atomic_write_text, move_aside
from raysynth.flows.run import run_flow
from raysynth.report.allocation import curves_chart
from raysynth.rundir import GENERATOR, MARKER, RunDir

log = logging.getLogger("raysynth.study")

STUDY_ROUNDS = 4


def study_configs(preset: str, policies: list[str], seeds: int, sets: dict[str, Any]
                  ) -> dict[tuple[int, str], RunConfig]:
    """The run config of every (seed index, policy); checks the arguments first."""
    if not policies:
        raise ConfigError(f"--policies: name at least one of {', '.join(ALLOCATIONS)}")
    if bad := [p for p in policies if p not in ALLOCATIONS]:
        raise ConfigError(f"--policies: unknown {', '.join(bad)}; choose from "
                          f"{', '.join(ALLOCATIONS)}")
    if len(set(policies)) != len(policies):
        raise ConfigError("--policies: name each policy once")
    if seeds < 1:
        raise ConfigError("--seeds must be >= 1")
    if "synthesis.allocation" in sets:
        raise ConfigError("--set synthesis.allocation: the study sets it; use --policies")
    base = int(sets.get("seed", 0))
    out = {}
    for s in range(seeds):
        for p in policies:
            over = {"synthesis.rounds": STUDY_ROUNDS, **sets, "synthesis.allocation": p,
                    "seed": base + s}
            out[(s, p)] = build_config(preset=preset, overrides=over)
    return out


def check_study_folder(out_arg: str | None, preset: str, resume: bool) -> Path:
    """The study folder (``--out`` or ``runs/study-allocation-<preset>``), refused when it holds
    something and ``resume`` is off (an existing study is continued only on request)."""
    out = Path(out_arg or f"runs/study-allocation-{preset}")
    if out.exists() and any(out.iterdir()) and not resume:
        raise ConfigError(f"{out} is not empty; pass --resume to continue the study there, "
                          "or --out DIR for a new one")
    return out


def copy_pixel_model(src: Path, dst: Path) -> None:
    """Copy ``src/generator/*`` into ``dst/generator/`` (each model written to a hidden folder
    first and renamed into place, so a kill never leaves half a model under its key)."""
    root = src / GENERATOR
    if not root.is_dir():
        return
    for model in (m for m in root.iterdir() if m.is_dir() and not m.name.startswith(".")):
        target = dst / GENERATOR / model.name
        if target.exists():
            continue
        tmp = dst / GENERATOR / f".{model.name}-copy"
        for f in (f for f in model.rglob("*") if f.is_file()):
            atomic_write_bytes(tmp / f.relative_to(model), f.read_bytes())
        move_aside(tmp, target)


def result_of(report: dict[str, Any]) -> dict[str, Any]:
    """One run's test accuracies (percent), images generated / accepted and its val curve."""
    syn = report.get("synthesis") or {}
    if "classifier" in report:
        acc = report["classifier"]["with_synthetic"]
        overall, few = acc["overall"]["mean"], (acc.get("few") or {}).get("mean")
        real = report["classifier"].get("real_only")
        base = None if real is None else (real["overall"]["mean"],
                                          (real.get("few") or {}).get("mean"))
    else:
        overall, few = report["accuracy"]["unicon"]["mean"], None
        real = report["accuracy"].get("supcon_real")
        base = None if real is None else (real["mean"], None)
    alloc = syn.get("allocation") or {}
    return {
        "overall": 100 * overall, "few": None if few is None else 100 * few,
        "generated": syn.get("generated", 0), "accepted": syn.get("accepted", 0),
        "curve": [(p["generated"], p.get("val_accuracy")) for p in alloc.get("curve", [])],
        "per_class_allocated": {n: v["quota"] for n, v in (syn.get("per_class") or {}).items()},
        # the same run's baseline without synthetic images (real only; SupCon-Real for UniCon)
        "baseline": None if base is None else {
            "overall": 100 * base[0], "few": None if base[1] is None else 100 * base[1],
            "generated": 0, "accepted": 0},
    }


def aggregate(results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """``allocation.json``'s ``policies``: mean ± std (population) over seeds."""
    out: dict[str, Any] = {}
    for p, runs in results.items():
        entry: dict[str, Any] = {}
        for key in ("overall", "few"):
            vals = [r[key] for r in runs if r[key] is not None]
            if vals:
                entry[key] = {"mean": float(np.mean(vals)), "std": float(np.std(vals))}
        entry["generated"] = float(np.mean([r["generated"] for r in runs]))
        entry["accepted"] = float(np.mean([r["accepted"] for r in runs]))
        entry["seeds"] = len(runs)
        out[p] = entry
    return out


BASELINE = "no synthetic images"  # the table's row of the runs' own baseline


def table_markdown(policies: dict[str, Any], preset: str) -> str:
    """The table of :func:`aggregate`'s rows (``BASELINE`` first when present)."""
    few = any("few" in v for v in policies.values())
    head = "| policy | overall (%) |" + (" few (%) |" if few else "") + " generated | accepted |"
    lines = [f"# Allocation study: {preset}", "",
             "Test accuracy, mean ± std over seeds (population std); images are means over seeds.",
             "", head, "|---" * (4 + few) + "|"]
    for p, v in policies.items():
        cells = [p, f"{v['overall']['mean']:.2f} ± {v['overall']['std']:.2f}"]
        if few:
            f = v.get("few")
            cells.append(f"{f['mean']:.2f} ± {f['std']:.2f}" if f else "—")
        cells += [f"{v['generated']:.0f}", f"{v['accepted']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run_allocation_study(preset: str, policies: list[str], seeds: int, out: str | Path,
                         sets: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run every (seed, policy) — resuming any run already started under ``out`` — and write
    the study's table, figure and ``allocation.json``. Needs Ray connected."""
    cfgs = study_configs(preset, policies, seeds, dict(sets or {}))
    out = Path(out)
    results: dict[str, list[dict[str, Any]]] = {p: [] for p in policies}
    for s in range(seeds):
        first = None
        for p in policies:
            folder = out / f"seed-{s}" / p
            started = (folder / MARKER).exists()
            if first is not None and not started:
                RunDir(folder).init(cfgs[(s, p)])
                copy_pixel_model(first, folder)
                started = True
            log.info("allocation study: seed %d, policy %s → %s", s, p, folder)
            results[p].append(result_of(run_flow(cfgs[(s, p)], folder, resume=started)))
            first = first or folder
    summary = {"preset": preset, "seeds": seeds, "policies": aggregate(results),
               "runs": {p: [{k: v for k, v in r.items() if k != "curve"} for r in rs]
                        for p, rs in results.items()}}
    # every policy of a seed shares the real split, so its first policy's baseline stands for all
    base = [r["baseline"] for r in results[policies[0]] if r.get("baseline")]
    if base:
        summary["baseline"] = aggregate({BASELINE: base})[BASELINE]
    rows = {**({BASELINE: summary["baseline"]} if base else {}), **summary["policies"]}
    atomic_write_json(out / "allocation.json", summary)
    atomic_write_text(out / "allocation.md", table_markdown(rows, preset))
    curves = {f"{p} (seed {s})": results[p][s]["curve"] for p in policies for s in range(seeds)}
    atomic_write_bytes(out / "allocation.png", curves_chart(curves, "validation accuracy (%)"))
    return summary
