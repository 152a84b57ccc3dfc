"""The run report: ``report.json`` rendered as ``report.md`` and a self-contained ``report.html``."""

from raysynth.report.render import render_report

__all__ = ["render_report"]
