"""The ``raysynth`` command line (DESIGN §4). The only place that reads argv or calls ray.init()."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from raysynth import __version__
from raysynth.errors import RaysynthError
from raysynth.rundir import REPORT_HTML, REPORT_JSON, REPORT_MD
from raysynth.text import PrintableFilter, printable

log = logging.getLogger("raysynth")


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", help="a preset shipped with raysynth (see --list-presets)")
    p.add_argument("--config", help="a YAML config file (differences from the defaults)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set tune.num_samples=40 (repeatable)",
    )
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS or a local one)")
    p.add_argument("--verbose", action="store_true", help=VERBOSE)


VERBOSE = "also show Ray's own output: Data's progress, Train's metrics, Tune's tables, workers' logs"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raysynth",
        description="Better image classifiers from synthetic images, scaled out on Ray.",
    )
    parser.add_argument("--version", action="version", version=f"raysynth {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_job_parsers(sub)
    _add_study_parser(sub)
    _add_bench_parser(sub)
    return parser


def _add_job_parsers(sub: Any) -> None:
    """``run``, the stage commands and ``report``."""
    run = sub.add_parser(
        "run", help="the main job: data → synthesis + filter → weight search → training → report"
    )
    _add_config_args(run)
    run.add_argument("--out", help="run directory (default runs/<preset>)")
    run.add_argument("--resume", action="store_true", help="continue an interrupted run")
    run.add_argument("--dry-run", action="store_true", help="resolve and validate, then exit")
    run.add_argument("--list-presets", action="store_true", help="list the shipped presets")
    for name, text in (
        ("synthesize", "plan + generate + filter only"),
        ("tune", "weight search on an existing run directory"),
        ("train", "final training + baselines with the given or best weights (e.g. --set "
         "tune.weights=[...] on an existing run: the search and final stages are redone, the "
         "old ones kept in <out>/stale/)"),
    ):
        p = sub.add_parser(name, help=text)
        _add_config_args(p)
        p.add_argument("--out", required=True, help="run directory")
    rep = sub.add_parser("report", help="(re)build report.md/html from report.json")
    rep.add_argument("dir", help="run directory")


def _add_study_parser(sub: Any) -> None:
    study = sub.add_parser("study", help="controlled studies")
    study_sub = study.add_subparsers(dest="study", required=True)
    ctl = study_sub.add_parser(
        "controlled",
        help="UniCon's controlled study (paper 000 §4.4) on the bundled digits or --data",
    )
    ctl.add_argument(
        "--classes", nargs="+", required=True,
        help="class names, e.g. 0 9 (digits) or class folder names / class_name values of --data",
    )
    ctl.add_argument(
        "--data",
        help="labelled images instead of the digits: an ImageFolder tree, or a Parquet file or "
        "folder (local or a URI)",
    )
    ctl.add_argument(
        "--source", choices=("imagefolder", "parquet"),
        help="how --data is read (default: parquet for a URI or Parquet files, else imagefolder)",
    )
    ctl.add_argument(
        "--synthetic",
        default="same-class",
        help="same-class | swapped | morph:R1,R2,... | noise:S (default same-class)",
    )
    ctl.add_argument("--k", type=int, default=16, help="real images per class (default 16)")
    ctl.add_argument(
        "--n-synthetic",
        type=int,
        default=0,
        help="synthetic images per class drawn for each encoder run (default: k/2, the paper)",
    )
    ctl.add_argument("--out", help="run directory (default runs/study-<kind>-<classes>-k<K>)")
    alloc = study_sub.add_parser(
        "allocation", help="closed-loop allocation policies at one budget, over seeds (#16)"
    )
    alloc.add_argument("--preset", default="digits-lt", help="preset (default digits-lt)")
    alloc.add_argument("--policies", nargs="+", default=["balance", "error", "entropy",
                       "closed_loop"], help="allocation policies (default: the four of #16)")
    alloc.add_argument("--seeds", type=int, default=3, help="seeds (default 3)")
    alloc.add_argument("--out", help="study folder (default runs/study-allocation-<preset>)")
    for p in (ctl, alloc):
        p.add_argument("--resume", action="store_true", help="continue an interrupted study")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
        p.add_argument("--address", help="Ray cluster address")
        p.add_argument("--verbose", action="store_true", help=VERBOSE)


def _add_bench_parser(sub: Any) -> None:
    bench = sub.add_parser("bench", help="measure raysynth on this machine (ratios, JSON)")
    bench.add_argument("name", choices=BENCHES, help="what to measure (DESIGN §6)")
    bench.add_argument("--out", help="JSON file (default bench-NAME.json)")
    bench.add_argument("--concurrency", type=int, default=2, help="tune: parallel trials")
    bench.add_argument("--evals", type=int, default=16, help="tune: evaluations per searcher")
    bench.add_argument("--smoke", action="store_true", help="gpu: tiny sizes on the CPU (CI)")


def _connect_ray(address: str | None, verbose: bool = False) -> None:
    """``ray.init`` ($RAY_ADDRESS or a local one); Ray's own output only when ``verbose``."""
    import ray

    from raysynth.progress import set_verbose
    from raysynth.ray_data import show_progress

    set_verbose(verbose)
    for name in ("ray.tune", "ray.train"):  # "Running in local mode", "Wrote the latest …"
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
    if not verbose:  # Tune's new output prints its experiment box at any verbosity
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        kwargs: dict = {"log_to_driver": verbose, "configure_logging": True}
        if address and address != "local":
            ray.init(address=address, **kwargs)
        else:  # our own local Ray: never the cluster a stale /tmp/ray/ray_current_cluster names
            ray.init(address="local", include_dashboard=False, **kwargs)
    show_progress(verbose)
    if not verbose:  # Ray's C++ lines on descriptor 2 that no logger level reaches
        from raysynth import stderr_filter

        stderr_filter.install()


def cmd_run(args: argparse.Namespace) -> int:
    from raysynth.config import build_config, dump_yaml, list_presets, parse_set

    if args.list_presets:
        print("\n".join(list_presets()))
        return 0
    preset = args.preset or (None if args.config else "digits")
    cfg = build_config(preset, args.config, parse_set(args.set))
    from raysynth.flows.run import check

    # a missing model fails here, before Ray starts or anything is written (--dry-run: listed)
    models = check(cfg, dry_run=args.dry_run)
    if not args.dry_run:
        from raysynth.flows.run import run_flow
        from raysynth.rundir import RunDir
        from raysynth.storage import path as location

        out = location(args.out or f"runs/{cfg.preset}")  # a local folder or s3://… (storage.py)
        RunDir(out).check_target(args.resume)  # not a run / no --resume: before Ray starts
        _check_local_data(cfg.data.path, args.resume)
        _connect_ray(args.address, args.verbose)
        report = run_flow(cfg, out, resume=args.resume)
        md = out / REPORT_MD
        print(_head(md.read_text()) if md.is_file() else report)  # job logs stay short
        print(f"report: {out / REPORT_HTML} (all of it: {md})")
        return 0
    from raysynth.data.split_files import describe_splits
    from raysynth.flows.run import describe_data

    print(dump_yaml(cfg))
    for line in models:
        print(printable(line))
    if cfg.data.path and "://" not in cfg.data.path and not Path(cfg.data.path).exists():
        print(f"data: {printable(cfg.data.path)} is not on this machine; not checked")
        return 0
    print("\n".join(printable(line) for line in describe_splits(cfg.data)))
    print("\n".join(describe_data(cfg)))
    return 0


def _check_local_data(path: str, resume: bool) -> None:
    """A new run whose local ``data.path`` is not on this machine fails before Ray starts or
    anything is written (the driver reads a local path and ships it to the run directory; a
    resumed run may already hold its real splits)."""
    if path and not resume and "://" not in path and not Path(path).expanduser().exists():
        raise RaysynthError(
            f"data.path {path} does not exist on this machine (a local data.path is read where "
            "`raysynth run` runs); fix the path, or put the data on shared storage (s3://…)"
        )


def _head(markdown: str) -> str:
    """The report up to its second section (title, summary, accuracy), not every table."""
    lines = markdown.splitlines()
    cut = [i for i, line in enumerate(lines) if line.startswith("## ")][1:2] or [len(lines)]
    return "\n".join(lines[: cut[0]]).rstrip()


def cmd_study(args: argparse.Namespace) -> int:
    from raysynth.config import parse_set

    if args.study == "allocation":
        return _study_allocation(args, parse_set(args.set))
    from raysynth.flows.controlled import (
        StudySpec,
        build_study_config,
        build_study_data,
        run_controlled,
    )

    spec = StudySpec(tuple(args.classes), args.synthetic, args.k, args.n_synthetic,
                     args.data or "", args.source or "")
    cfg = build_study_config(spec, parse_set(args.set))
    data = build_study_data(spec, cfg)  # too few images for the counts: fails before Ray starts
    kind = args.synthetic.replace(":", "-").replace(",", "_")
    from raysynth.storage import path as location

    out = location(args.out or f"runs/study-{kind}-{'_'.join(args.classes)}-k{args.k}")
    from raysynth.rundir import RunDir

    RunDir(out).check_target(args.resume)  # before Ray starts
    _connect_ray(args.address, args.verbose)
    run_controlled(spec, cfg, out, resume=args.resume, data=data)
    print((out / REPORT_MD).read_text())
    print(f"report: {out / REPORT_JSON}")
    return 0


def _study_allocation(args: argparse.Namespace, sets: dict[str, Any]) -> int:
    import raysynth.flows.allocation_study as study
    from raysynth.flows.run import check

    for cfg in study.study_configs(args.preset, args.policies, args.seeds, sets).values():
        check(cfg)  # bad arguments or a missing model fail before Ray starts
    out = study.check_study_folder(args.out, args.preset, args.resume)
    _connect_ray(args.address)
    study.run_allocation_study(args.preset, args.policies, args.seeds, out, sets)
    print((out / "allocation.md").read_text())
    print(f"results: {out / 'allocation.json'}, figure: {out / 'allocation.png'}")
    return 0


BENCHES = ("loss", "tune", "guidance", "synthesis", "memory", "filter", "gpu", "learn", "rounds")
NEEDS_RAY = ("tune", "synthesis", "filter", "gpu", "rounds")


def cmd_bench(args: argparse.Namespace) -> int:
    import importlib

    out = args.out or f"bench-{args.name}.json"
    module = importlib.import_module(f"raysynth.bench.{args.name}")
    if args.name in NEEDS_RAY:
        _connect_ray(None)
    kwargs = {"concurrency": args.concurrency, "evals": args.evals} if args.name == "tune" else {}
    if args.name == "gpu":
        kwargs = {"smoke": args.smoke}
    module.run(out=out, **kwargs)  # each bench prints its JSON and writes it to `out`
    return 0


# The last stage each stage command runs (``train`` runs the job to its end).
STAGE_OF_COMMAND = {"synthesize": "synthesis", "tune": "search", "train": None}


def cmd_stage(args: argparse.Namespace) -> int:
    """``synthesize`` / ``tune`` / ``train``: the main job up to (or from) one stage. On an
    existing run without --preset/--config, the config is the run's ``config.yaml`` with --set on
    top; the stages whose config sections changed are redone (the old outputs go to stale/)."""
    from raysynth.config import build_config, parse_set, replace
    from raysynth.flows.run import check, run_flow
    from raysynth.rundir import RunDir

    run = RunDir(args.out)
    if args.command != "synthesize" and not run.exists():
        raise RaysynthError(
            f"{args.out} holds no run; start one with `raysynth synthesize` or `raysynth run`"
        )
    run.check_target(resume=run.exists())  # a folder of other files, another format
    if run.exists() and not (args.preset or args.config):
        cfg = replace(run.config(), **parse_set(args.set))
    else:
        preset = args.preset or (None if args.config else "digits")
        cfg = build_config(preset, args.config, parse_set(args.set))
    until = STAGE_OF_COMMAND[args.command]
    check(cfg, until)  # before Ray starts
    _connect_ray(args.address, args.verbose)
    result = run_flow(cfg, args.out, resume=run.exists(), until=until)
    print(json.dumps({k: v for k, v in result.items() if k != "history"}, indent=2, default=str)[:4000])
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from raysynth.report import render_report

    md, html = render_report(args.dir)
    print(f"wrote {md} and {html}")
    return 0


COMMANDS = {
    "run": cmd_run,
    "synthesize": cmd_stage,
    "tune": cmd_stage,
    "train": cmd_stage,
    "report": cmd_report,
    "study": cmd_study,
    "bench": cmd_bench,
}


def openmp_wait_policy() -> None:
    """Choose OpenMP's wait policy before torch loads (the user's ``OMP_WAIT_POLICY`` wins).

    Idle OpenMP threads spin by default, then sleep. On an idle machine that is fastest: the
    digits pixel model at 2 threads took 67 ms/step on the idle 2-core box (1 thread: 96);
    ``PASSIVE`` (sleep at once) took 139. On a machine already busy with other work the spinning
    threads fight it for the cores: at load 40-54 the same step took 6.6 s spinning against
    0.36 s with ``PASSIVE``. So ``PASSIVE`` is chosen when the 1-minute load is already half the
    cores or more when the command starts, and the default otherwise (logged)."""
    if "OMP_WAIT_POLICY" in os.environ:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0]
    if load >= 0.5 * (cores or 1):
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        log.info("load %.1f on %d cores: idle OpenMP threads sleep (OMP_WAIT_POLICY=PASSIVE)",
                 load, cores)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(PrintableFilter())  # names from data reach the terminal as text
    openmp_wait_policy()
    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    try:
        code = COMMANDS[args.command](args)
    except RaysynthError as e:
        print(f"raysynth: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("raysynth: interrupted; rerun the same command with --resume to continue", file=sys.stderr)
        return 130
    log.info("done in %.1f s", time.perf_counter() - t0)
    return code


if __name__ == "__main__":
    sys.exit(main())
