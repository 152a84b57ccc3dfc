"""The report's charts: each function draws one matplotlib figure and returns it as PNG bytes.

Figures are built as :class:`matplotlib.figure.Figure` objects (Agg canvas), never through
``pyplot``, so no global figure state or GUI backend is touched and nothing needs closing.

Class and series names are data: every chart is built and drawn with mathtext off
(:func:`plain_text`), so a name like ``$_$`` or ``cost_$^$`` is drawn as those characters instead
of being parsed (and raising) as a formula, and names pass through
:func:`raysynth.report.text.printable` so control characters show as escapes.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from raysynth.text import printable

ACCEPTED_COLOUR = "#2e8b57"
REJECTED_COLOUR = "#c0392b"
BAR_COLOUR = "#4c72b0"
DPI = 100
# every Text a chart makes reads these when it is created, and the drawing happens inside too
PLAIN_TEXT = {"text.parse_math": False, "text.usetex": False}

F = TypeVar("F", bound=Callable[..., bytes])


def plain_text(chart: F) -> F:
    """Build and draw ``chart`` with mathtext and TeX off: data strings are never formulas."""

    @functools.wraps(chart)
    def wrapped(*args, **kwargs):
        with matplotlib.rc_context(PLAIN_TEXT):
            return chart(*args, **kwargs)

    return wrapped  # type: ignore[return-value]


def png_bytes(fig: Figure) -> bytes:
    """Render ``fig`` to PNG bytes (no metadata, so equal figures give equal bytes)."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _class_axis(ax, names: Sequence[str]) -> None:
    ax.set_xticks(range(len(names)))
    if len(names) > 60:  # too many to read; the tables carry the names
        ax.set_xticklabels([])
        ax.set_xlabel(f"{len(names)} classes")
    else:
        ax.set_xticklabels([printable(n) for n in names], rotation=90 if len(names) > 12 else 0, fontsize=8)
        ax.set_xlabel("class")


@plain_text
def weights_chart(weights: Mapping[str, float]) -> bytes:
    """Learned weight per class: bars on a 0..1 axis with a marker at each value, so a weight of
    0 shows as a marker on the axis (labelled with its value when there are few classes)."""
    names = list(weights)
    values = [_finite(weights[n]) for n in names]
    fig = Figure(figsize=(min(14.0, 4.5 + 0.3 * len(names)), 3.2))
    ax = fig.add_subplot()
    x = range(len(names))
    ax.bar(x, values, color=BAR_COLOUR)
    ax.plot(x, values, linestyle="none", marker="D", markersize=5, color="black", clip_on=False)
    if len(names) <= 30:
        for i, v in enumerate(values):
            if math.isfinite(v):
                ax.annotate(f"{v:.2f}", (i, v), textcoords="offset points", xytext=(0, 6),
                            ha="center", fontsize=7)
    ax.set_ylim(0.0, 1.12)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_ylabel("weight")
    ax.set_title("0 = distrust synthetic images, 1 = trust them", fontsize=9)
    _class_axis(ax, names)
    fig.tight_layout()
    return png_bytes(fig)


@plain_text
def grouped_accuracy_chart(
    series: Mapping[str, Mapping[str, float]], groups: Sequence[str]
) -> bytes:
    """Accuracy (%) per group (overall, many, medium, few) with one bar per series."""
    fig = Figure(figsize=(6.5, 3.2))
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(series))
    x = np.arange(len(groups))
    for i, (name, accs) in enumerate(series.items()):
        values = [100 * _finite(accs.get(g)) for g in groups]
        ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=printable(name))
    ax.set_xticks(x)
    ax.set_xticklabels([printable(g) for g in groups])
    ax.set_ylim(0, 100)
    ax.set_ylabel("accuracy (%)")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return png_bytes(fig)


@plain_text
def cosine_histograms(
    scores: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    thresholds: Mapping[str, float],
) -> bytes:
    """Small multiples, one panel per class: cosine scores of accepted vs rejected images.

    ``scores[name] = (accepted, rejected)``; the class's threshold is drawn as a dashed line.
    All panels share bins so their shapes compare.
    """
    names = list(scores)
    every = [s for a, r in scores.values() for s in (*a, *r)]
    lo, hi = (min(every), max(every)) if every else (0.0, 1.0)
    for t in thresholds.values():
        if math.isfinite(t):
            lo, hi = min(lo, t), max(hi, t)
    if hi - lo < 1e-6:
        lo, hi = lo - 0.05, hi + 0.05
    bins = np.linspace(lo, hi, 21)
    ncols = min(5, max(1, len(names)))
    nrows = max(1, math.ceil(len(names) / ncols))
    fig = Figure(figsize=(2.6 * ncols, 2.0 * nrows + 0.4))
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True)
    for ax, name in zip(axes.flat, names):
        accepted, rejected = scores[name]
        ax.hist(
            [accepted, rejected], bins=bins, stacked=True, color=[ACCEPTED_COLOUR, REJECTED_COLOUR]
        )
        t = thresholds.get(name, float("nan"))
        if math.isfinite(t):
            ax.axvline(t, color="black", linestyle="--", linewidth=1)
        ax.set_title(f"{printable(name)} ({len(accepted)} / {len(rejected)})", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in list(axes.flat)[len(names) :]:
        ax.set_visible(False)
    fig.suptitle(
        "cosine to real images: accepted (green) vs rejected (red), threshold dashed", fontsize=9
    )
    fig.tight_layout()
    return png_bytes(fig)


@plain_text
def best_so_far_chart(values: Sequence[float], scores: Sequence[float] = ()) -> bytes:
    """The search's best validation accuracy (%) after each finished trial, and each trial's own
    score (``scores``, completion order) as points beside it."""
    y = [100 * _finite(v) for v in values]
    fig = Figure(figsize=(6.5, 3.0))
    ax = fig.add_subplot()
    if len(scores):
        ax.plot(range(1, len(scores) + 1), [100 * _finite(v) for v in scores], linestyle="none",
                marker="o", markersize=6, markerfacecolor="none", color="#d62728", zorder=3,
                label="each trial")
    ax.plot(range(1, len(y) + 1), y, marker="o" if len(y) <= 40 else None, markersize=3,
            label="best so far")
    ax.set_xlabel("trial")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("validation accuracy (%)")
    ax.margins(y=0.08)
    ax.grid(alpha=0.3)
    if len(scores):
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return png_bytes(fig)


def _finite(v: object) -> float:
    """``v`` as a float, NaN for None or anything that is not a number (drawn as no bar)."""
    try:
        return float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return float("nan")
