"""The measuring harness of the Ray benches (``synthesis``, ``filter``, ``memory``).

Per-batch stamps (``<time> <rows> <source>`` lines) and the steady-state rate they give
(:func:`steady_rate` over the window where every actor runs, :func:`all_running`), one timed call
(:class:`Timed`) and the plain, Ray-free loop the Ray paths are compared with
(:func:`plain_loop`), the figures taken over repeats (:class:`Figures`: medians, per-repeat
ratios), the cluster's
cores and the machine's load, and the JSON each bench writes (:func:`write_result`).
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from raysynth import columns as col
from raysynth.generate.schema import conform
from raysynth.generate.table import parquet_files

# -- per-batch stamps and the steady-state rate ------------------------------------------------


def stamp(path: str | Path, rows: int) -> None:
    """Append ``<time> <rows> <pid>`` to ``path``: one batch out of this process (a bench actor
    or loop). One machine only: the file is local to the process."""
    with open(path, "a") as f:  # one short append per batch
        f.write(f"{time.time()!r} {rows} {os.getpid()}\n")


Stamp = tuple[float, int, int]  # (time, rows, source: the pid that stamped; 0 for one loop)


def read_stamps(path: str | Path) -> list[Stamp]:
    if not Path(path).is_file():
        return []
    rows = [line.split() for line in Path(path).read_text().splitlines() if line.strip()]
    return sorted((float(r[0]), int(r[1]), int(r[2]) if len(r) > 2 else 0) for r in rows)


def all_running(stamps: list[Stamp]) -> list[Stamp]:
    """The stamps taken while every source (actor) was producing: from the last source's first
    batch to the first source's last batch. An actor that starts late, or finishes its last batch
    early, is a one-time cost like the model load, so the steady state of a pool is the window
    where all its actors run. The whole list when there is one source or no such window."""
    sources: dict[int, list[float]] = {}
    for t, _, src in stamps:
        sources.setdefault(src, []).append(t)
    if len(sources) < 2:
        return stamps
    start = max(ts[0] for ts in sources.values())
    end = min(ts[-1] for ts in sources.values())
    window = [s for s in stamps if start <= s[0] <= end]
    return window if len(window) >= 2 * len(sources) else stamps


def steady_rate(stamps: list[Stamp]) -> float:
    """Least-squares slope of cumulative images against stamp time (images/s) over the stamps
    taken while every source ran (:func:`all_running`); NaN with fewer than two distinct stamp
    times."""
    window = all_running(sorted(stamps))
    if len(window) < 2:
        return float("nan")
    t = np.array([s[0] for s in window])
    done = np.cumsum([s[1] for s in window]).astype(float)
    if np.ptp(t) <= 0:
        return float("nan")
    return float(np.polyfit(t - t[0], done, 1)[0])


# -- one timed call ----------------------------------------------------------------------------


@dataclass
class Timed:
    """One call: wall time from its start, per-batch stamps, rows found on disk afterwards."""

    wall_s: float
    start: float
    stamps: list[Stamp]
    rows_written: int

    @property
    def images(self) -> int:
        return sum(s[1] for s in self.stamps)

    def end_to_end(self) -> float:
        return self.rows_written / self.wall_s

    def steady(self) -> float:
        return steady_rate(self.stamps)

    def first_batch_s(self) -> float:
        """Call start → first batch out of the generator (model load, actor start, one batch)."""
        return self.stamps[0][0] - self.start if self.stamps else float("nan")

    def tail_s(self) -> float:
        """Last batch out of the generator → call returned (the last writes, pool shutdown)."""
        return self.start + self.wall_s - self.stamps[-1][0] if self.stamps else float("nan")


def count_rows(root: str | Path) -> int:
    """Rows in every Parquet file under ``root`` (footers only)."""
    return sum(pq.ParquetFile(f).metadata.num_rows for f in parquet_files(root))


def numpy_batches(table: pa.Table, batch: int):
    """``table`` in slices of ``batch`` rows as dicts of numpy arrays (Ray Data's numpy format)."""
    for i in range(0, table.num_rows, batch):
        chunk = table.slice(i, batch)
        yield {k: chunk[k].to_numpy(zero_copy_only=False) for k in chunk.column_names}


def plain_loop(
    build: Callable[[], Callable[[dict[str, np.ndarray]], dict[str, Any]]],
    read: Callable[[], pa.Table],
    batch: int,
    threads: int,
    out: Path,
) -> Timed:
    """The loop without Ray, with ``torch.set_num_threads(threads)``: ``build()`` the callable
    (the model load is timed), ``read()`` its input table, call it batch by batch — stamping
    each batch right after the call — and write each result, conformed to the synthetic schema,
    as its own Parquet file in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        start = time.time()
        fn = build()
        stamps = []
        for i, b in enumerate(numpy_batches(read(), batch)):
            result = fn(b)
            stamps.append((time.time(), len(b[col.SAMPLE_ID]), 0))
            pq.write_table(conform(pa.table(result)), out / f"part-{i:05d}.parquet")
        wall = time.time() - start
    finally:
        torch.set_num_threads(previous)
    return Timed(wall, start, stamps, count_rows(out))


# -- figures over repeats ----------------------------------------------------------------------


def median_ratio(num: list[float], den: list[float]) -> float:
    """Median over repeats of ``num[i] / den[i]`` (pairs measured side by side)."""
    return float(statistics.median(a / b for a, b in zip(num, den)))


def per_path(runs: dict[str, list[Timed]]) -> dict[str, dict[str, dict[str, float]]]:
    """Medians over repeats of each path's figures, keyed by figure then path."""
    med = statistics.median
    done = {k: v for k, v in runs.items() if v}
    return {
        "images_per_s": {
            k: {
                "steady": float(med(t.steady() for t in v)),
                "end_to_end": float(med(t.end_to_end() for t in v)),
            }
            for k, v in done.items()
        },
        "first_batch_s": {k: float(med(t.first_batch_s() for t in v)) for k, v in done.items()},
        "tail_s": {k: float(med(t.tail_s() for t in v)) for k, v in done.items()},
        "wall_s": {k: float(med(t.wall_s for t in v)) for k, v in done.items()},
    }


def overhead_ms_per_batch(ray_ips: float, plain_ips: float, batch: int) -> float:
    """Extra milliseconds per batch of the Ray path at steady state."""
    return 1e3 * batch * (1 / ray_ips - 1 / plain_ips)


@dataclass
class Figures:
    """A bench's figures over its paths' runs: each repeat's steady-state and end-to-end
    images/s per path, and each path's medians (:func:`per_path`)."""

    steady: dict[str, list[float]]
    end_to_end: dict[str, list[float]]
    paths: dict[str, dict[str, dict[str, float]]]

    @classmethod
    def of(cls, runs: dict[str, list[Timed]]) -> Figures:
        steady = {k: [t.steady() for t in v] for k, v in runs.items()}
        e2e = {k: [t.end_to_end() for t in v] for k, v in runs.items()}
        return cls(steady, e2e, per_path(runs))

    def ratio(self, num: str, den: str, end_to_end: bool = False) -> float | None:
        """:func:`median_ratio` of path ``num`` over path ``den`` (steady state, or end to
        end); None when either did not run."""
        figures = self.end_to_end if end_to_end else self.steady
        if num not in figures or den not in figures:
            return None
        return median_ratio(figures[num], figures[den])

    def per_repeat(self, num: str, den: str) -> list[float]:
        """Path ``num`` over path ``den`` at steady state, repeat by repeat; empty when either
        did not run."""
        if num not in self.steady or den not in self.steady:
            return []
        return [a / b for a, b in zip(self.steady[num], self.steady[den])]

    def steady_ips(self, path: str) -> float:
        """Median steady-state images/s of ``path``."""
        return self.paths["images_per_s"][path]["steady"]

    def overhead_ms_per_batch(self, ray: str, plain: str, batch: int) -> float:
        """:func:`overhead_ms_per_batch` of path ``ray`` over path ``plain``."""
        return overhead_ms_per_batch(self.steady_ips(ray), self.steady_ips(plain), batch)


# -- the machine and the result ----------------------------------------------------------------


def cluster_cores(cores: int) -> tuple[int, int]:
    """The connected Ray instance's CPUs, and ``cores`` capped by them (at least 1)."""
    from raysynth.ray_data import cluster_resources

    cluster_cpus = int(cluster_resources().get("CPU", 0))
    return cluster_cpus, max(1, min(cores, cluster_cpus))


def load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def write_result(result: dict[str, Any], out: str | None, name: str) -> None:
    """Print the JSON and write it to ``out`` (a file, or a folder for ``bench-NAME.json``)."""
    text = json.dumps(result, indent=2)
    print(text)
    if out is not None:
        path = os.path.join(out, f"bench-{name}.json") if os.path.isdir(out) else out
        with open(path, "w") as f:
            f.write(text + "\n")


class PeakRss(threading.Thread):
    """Largest value of ``read()`` (an RSS in bytes) sampled every ``interval`` seconds until
    :meth:`stop`, which returns it in MiB (the memory and learn benches' samplers)."""

    def __init__(self, read: Callable[[], int], interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.read, self.interval, self.peak = read, interval, 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            self.peak = max(self.peak, self.read())
            self.halt.wait(self.interval)

    def stop(self) -> float:
        self.halt.set()
        self.join()
        return self.peak / 2**20
