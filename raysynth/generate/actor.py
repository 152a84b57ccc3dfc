"""The Ray Data generate stage: a callable class whose pipeline loads once per actor.

``DiffusionGenerator.__call__`` is a pure function of its batch of plan rows (same rows → same
bytes), so it is unit-tested without Ray, and Ray Data runs it on an actor pool
(``compute=pool_strategy(...)``, :mod:`raysynth.ray_data`) with the resources of ``synthesis.*``.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pyarrow as pa

from raysynth import columns as col
from raysynth.generate.factory import build_generator
from raysynth.generate.generators import GeneratorSpec, identity_json
from raysynth.generate.schema import SYNTHETIC_SCHEMA

log = logging.getLogger("raysynth.generate")

PLAN_COLUMNS = (
    col.SAMPLE_ID,
    col.LABEL,
    col.CLASS_NAME,
    col.PROMPT,
    col.NEGATIVE_PROMPT,
    col.SEED,
    col.ROUND,
    col.COND_ID,
    col.INDEX,
)

def empty_scores(n: int) -> dict[str, Any]:
    """Score columns before the filter has seen the rows."""
    nan = np.full(n, np.nan)
    return {
        col.REAL_COS: nan,
        col.TEXT_COS: nan.copy(),
        col.THRESHOLD: nan.copy(),
        col.ACCEPTED: np.full(n, None, dtype=object),
        col.OWN_PROB: nan.copy(),
    }


def to_rows(batch: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    n = len(batch[col.SAMPLE_ID])
    return [{k: batch[k][i] for k in PLAN_COLUMNS if k in batch} for i in range(n)]


class DiffusionGenerator:
    """Plan rows in, rows of PNG bytes plus provenance out (DESIGN §1)."""

    def __init__(self, spec: GeneratorSpec) -> None:
        self.generator = build_generator(spec)
        self.identity = identity_json(self.generator)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        rows = to_rows(batch)
        results = self.generator.generate(rows)
        n = len(rows)
        out: dict[str, Any] = {k: np.asarray(batch[k]) for k in PLAN_COLUMNS if k in batch}
        out[col.IMAGE] = np.array([r.png for r in results], dtype=object)
        out[col.GENERATOR] = np.array([self.identity] * n, dtype=object)
        out[col.CRITERION] = np.array(
            [np.nan if r.criterion is None else r.criterion for r in results], dtype=np.float64
        )
        out[col.FLAGGED] = np.array([r.flagged for r in results], dtype=bool)
        out.update(empty_scores(n))
        flagged = int(out[col.FLAGGED].sum())
        if flagged:
            log.warning("safety checker flagged %d of %d images; they are not kept", flagged, n)
        return out


def plan_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Plan rows as an Arrow table with the plan columns' types."""
    fields = [f for f in SYNTHETIC_SCHEMA if f.name in PLAN_COLUMNS]
    return pa.Table.from_pylist(
        [{k: r[k] for k in PLAN_COLUMNS} for r in rows], schema=pa.schema(fields)
    )
