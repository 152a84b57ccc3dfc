"""Which config sections each cached stage of a run depends on (ARCHITECTURE.md, "Resuming with
a changed config"), and the hash the run directory's stage ledger records for it.

A stage depends on everything upstream of it too. A stage whose sections hash differently from
the ledger's record is set aside and recomputed (``RunDir.stage``); a change to a key no stage
lists (``preset``, ``budget``: their effect is in the resolved values) only rewrites the report.
``air`` counts only in the air flow. The pixel model (``generator/``) is not in the ledger: its
folder is named by the hash of its data and config already.
"""

from __future__ import annotations

import copy
import hashlib
import json

from raysynth.config.load import to_dict
from raysynth.config.schema import RunConfig

_REAL_CLASSIFIER = ("data", "seed", "encoder", "end_to_end", "train")
_SYNTHESIS = (*_REAL_CLASSIFIER, "synthesis", "filter", "air")
_SEARCH = (*_SYNTHESIS, "flow", "classifier", "protocol", "tune")
_PSEUDO_LABELS = ("data", "seed", "filter", "air")
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "data": ("data", "seed"),
    "real_classifier": _REAL_CLASSIFIER,
    "synthesis": _SYNTHESIS,
    "search": _SEARCH,
    "final": (*_SEARCH, "mix"),
    "pseudo_labels": _PSEUDO_LABELS,
    "lora": (*_PSEUDO_LABELS, "synthesis", "train"),
    "prompt": (*_SYNTHESIS, "flow"),
    "report": ("*",),  # every key
}

# The ledger stages of each flow (a stage outside the flow is only checked through its record).
FLOW_STAGES = {
    "unicon": ("data", "real_classifier", "synthesis", "search", "final", "report"),
    "classifier": ("data", "real_classifier", "synthesis", "final", "report"),
    "air": ("data", "pseudo_labels", "lora", "synthesis", "prompt", "report"),
}


# Keys inside an upstream section that only the final stage reads: left out of the other
# stages' hashes, so changing one on --resume redoes the final classifiers, not the synthesis.
FINAL_ONLY = (("synthesis", "loop", "train_by_trust"),)


def stage_key(name: str, cfg: RunConfig) -> str:
    """The hash of the config sections stage ``name`` depends on."""
    d = to_dict(cfg)
    if name not in ("final", "report"):
        d = _without(d, FINAL_ONLY)
    sections = STAGE_SECTIONS[name]
    picked = d if sections == ("*",) else {
        s: (d[s] if s != "air" or d["flow"] == "air" else None) for s in sections
    }
    return hashlib.sha256(json.dumps(picked, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _without(d: dict, keys: tuple[tuple[str, ...], ...]) -> dict:
    """``d`` (nested dicts) without the nested ``keys`` (a copy; ``d`` is left as it is)."""
    out = copy.deepcopy(d)
    for *path, last in keys:
        node = out
        for k in path:
            node = node[k]
        node.pop(last, None)
    return out
