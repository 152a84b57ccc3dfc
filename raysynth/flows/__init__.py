"""The flows ``raysynth run`` can run, each a recipe of stages (see ARCHITECTURE.md).

A flow is a module with ``STAGES`` (the names its progress lines count, ``data`` first and
``report`` last), ``check(cfg, num_classes)`` (what it needs beyond the shared checks, before any
model is trained) and ``run(job)``; :mod:`raysynth.flows.run` prepares the job and dispatches to
the flow ``cfg.flow`` names. The controlled study (``flows.controlled``) is run by
``raysynth study controlled`` instead.
"""

from __future__ import annotations

import importlib
from types import ModuleType

FLOWS = {
    "unicon": "raysynth.flows.unicon",
    "classifier": "raysynth.flows.classifier",
    "air": "raysynth.flows.air",
}


def flow(name: str) -> ModuleType:
    """The module of flow ``name`` (one of :data:`FLOWS`, as the config validated)."""
    return importlib.import_module(FLOWS[name])
