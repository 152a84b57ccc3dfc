"""The closed loop's charts (issue #16): per-round stacked allocation, validation accuracy versus
images generated, per-class acceptance and trust over rounds — from report.json's
``synthesis.allocation`` section (:func:`raysynth.filter.loop.summary`); and the study's one
figure with every policy's curve."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from raysynth.report.charts import DPI, plain_text, png_bytes
from raysynth.text import printable


@plain_text
def stacked_allocation_chart(counts: Sequence[Sequence[int]], names: Sequence[str]) -> bytes:
    """Images allocated per round, one stacked segment per class."""
    c = np.asarray(counts, np.float64).reshape(len(counts), -1)
    fig = Figure(figsize=(6, 3.2), dpi=DPI)
    ax = fig.add_subplot()
    bottom = np.zeros(len(c))
    cmap = [f"C{i % 10}" for i in range(c.shape[1])]
    for k in range(c.shape[1]):
        label = printable(names[k]) if k < len(names) else str(k)
        ax.bar(range(len(c)), c[:, k], bottom=bottom, color=cmap[k], label=label)
        bottom += c[:, k]
    ax.set_xticks(range(len(c)))
    ax.set_xlabel("round")
    ax.set_ylabel("images allocated")
    if c.shape[1] <= 20:
        ax.legend(fontsize=7, ncols=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return png_bytes(fig)


@plain_text
def curves_chart(curves: Mapping[str, Sequence[tuple[float, float]]], ylabel: str) -> bytes:
    """One line per series: ``(images generated, accuracy in [0, 1])`` points, in percent."""
    fig = Figure(figsize=(6, 3.2), dpi=DPI)
    ax = fig.add_subplot()
    for name, pts in curves.items():
        pts = [(x, y) for x, y in pts if y is not None]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, [100 * y for y in ys], marker="o", label=printable(name))
    ax.set_xlabel("images generated")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return png_bytes(fig)


@plain_text
def per_class_rounds_chart(acceptance: Sequence[Sequence[float | None]],
                           trust: Sequence[Sequence[float | None]], names: Sequence[str]) -> bytes:
    """Two panels: each class's acceptance rate and trust, round by round."""
    fig = Figure(figsize=(7, 3.2), dpi=DPI)
    for i, (title, rows) in enumerate((("acceptance rate", acceptance), ("trust", trust))):
        ax = fig.add_subplot(1, 2, i + 1)
        a = np.array([[np.nan if v is None else v for v in r] for r in rows], np.float64)
        for k in range(a.shape[1] if a.ndim == 2 else 0):
            label = printable(names[k]) if k < len(names) else str(k)
            ax.plot(range(len(a)), a[:, k], marker=".", color=f"C{k % 10}", label=label)
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel("round")
        ax.set_title(title, fontsize=9)
    if len(names) <= 20:
        fig.axes[-1].legend(fontsize=6, ncols=2)
    fig.tight_layout()
    return png_bytes(fig)


def allocation_charts(report: dict[str, Any]) -> list[tuple[str, bytes]]:
    """``(title, png)`` for each chart of the run's closed loop (none without one)."""
    alloc = (report.get("synthesis") or {}).get("allocation")
    if not isinstance(alloc, dict) or not alloc.get("counts"):
        return []
    names = [str(n) for n in report.get("classes") or []]
    curve = [(p["generated"], p.get("val_accuracy")) for p in alloc.get("curve", [])]
    out = [
        ("Images allocated per round", stacked_allocation_chart(alloc["counts"], names)),
        ("Validation accuracy versus images generated",
         curves_chart({alloc.get("policy", "policy"): curve}, "validation accuracy (%)")),
    ]
    if alloc.get("acceptance"):
        out.append(("Acceptance and trust per class over rounds",
                    per_class_rounds_chart(alloc["acceptance"], alloc["trust"], names)))
    return out
