"""The synthetic table's schema, in a module that imports only pyarrow: Ray tasks that conform
and write rows load it without paying for torch or diffusers."""

from __future__ import annotations

import pyarrow as pa

from raysynth import columns as col

SYNTHETIC_SCHEMA = pa.schema(
    [
        (col.SAMPLE_ID, pa.string()),
        (col.LABEL, pa.int64()),
        (col.CLASS_NAME, pa.string()),
        (col.PROMPT, pa.string()),
        (col.NEGATIVE_PROMPT, pa.string()),
        (col.SEED, pa.int64()),
        (col.ROUND, pa.int64()),
        (col.COND_ID, pa.string()),
        (col.INDEX, pa.int64()),
        (col.IMAGE, pa.binary()),  # null when the safety checker flagged the image
        (col.GENERATOR, pa.string()),
        (col.CRITERION, pa.float64()),
        (col.FLAGGED, pa.bool_()),
        (col.REAL_COS, pa.float64()),
        (col.TEXT_COS, pa.float64()),
        (col.THRESHOLD, pa.float64()),
        (col.ACCEPTED, pa.bool_()),
        (col.OWN_PROB, pa.float64()),  # own-class probability (AiR's most representative image)
    ]
)


def conform(table: pa.Table) -> pa.Table:
    """Every written file has exactly the synthetic schema (columns, order, types)."""
    return table.select(SYNTHETIC_SCHEMA.names).cast(SYNTHETIC_SCHEMA)
