"""The stage ledger (``stages.json``): the hash of the config sections each cached stage's outputs
were computed under (``raysynth.config.stages``), and the sweep that moves the outputs of a stage
computed under other values into ``stale/<time>/`` (kept, never reused, never deleted)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from raysynth.config import RunConfig
from raysynth.config.stages import FLOW_STAGES, STAGE_SECTIONS, stage_key
from raysynth.files import atomic_write_bytes, atomic_write_json, move_aside
from raysynth.rundir.names import CONFIG_YAML, STAGE_OUTPUTS, STAGES_JSON, STALE

log = logging.getLogger("raysynth.rundir")


def stage_outputs(root: Path, name: str) -> list[Path]:
    """The outputs of stage ``name`` that are there (empty folders do not count)."""
    found = sorted({p for pattern in STAGE_OUTPUTS[name] for p in root.glob(pattern)})
    return [p for p in found if p.is_file() or (p.is_dir() and any(p.iterdir()))]


def adopted(root: Path, cfg: RunConfig) -> dict[str, str]:
    """The ledger of a run started before the ledger existed, whose config.yaml equals ``cfg``:
    each stage of its flow with outputs, recorded under ``cfg``."""
    return {n: stage_key(n, cfg) for n in FLOW_STAGES[cfg.flow] if stage_outputs(root, n)}




def read_ledger(root: Path) -> dict[str, str]:
    """``stages.json`` (stage → hash); empty when it is missing or unreadable."""
    try:
        ledger = json.loads((root / STAGES_JSON).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return ledger if isinstance(ledger, dict) else {}


def record(root: Path, name: str, cfg: RunConfig) -> None:
    """Record that stage ``name``'s outputs are (being) computed under ``cfg``."""
    ledger, key = read_ledger(root), stage_key(name, cfg)
    if ledger.get(name) != key:
        atomic_write_json(root / STAGES_JSON, {**ledger, name: key})


def sweep(root: Path, cfg: RunConfig, names: list[str] | None = None) -> list[str]:
    """Set aside the outputs of the stages (all by default) whose recorded hash differs from
    ``cfg``'s, or that have outputs but no record; returns their names. Without ``names``, a
    stage outside ``cfg``'s flow is only checked through its record (the air flow's prompt search
    and the unicon flow's weight search share ``tune/``)."""
    ledger, stale, stamp = read_ledger(root), [], time.strftime("%Y%m%d-%H%M%S")
    flow_stages = FLOW_STAGES.get(cfg.flow, ())
    for name in names or list(STAGE_SECTIONS):
        outputs = stage_outputs(root, name)
        recorded = ledger.get(name)
        if recorded is None and (not outputs or (names is None and name not in flow_stages)):
            continue
        if recorded == stage_key(name, cfg):
            continue
        aside = root / STALE / stamp
        for path in outputs:
            move_aside(path, aside / path.relative_to(root))
        if outputs and (root / CONFIG_YAML).is_file() and not (aside / CONFIG_YAML).exists():
            atomic_write_bytes(aside / CONFIG_YAML, (root / CONFIG_YAML).read_bytes())
        ledger.pop(name, None)
        stale.append(name)
        log.warning("stage %s: computed under other config values; %s", name,
                    f"its old outputs moved to {aside}" if outputs else "nothing to move")
    if stale:
        atomic_write_json(root / STAGES_JSON, ledger)
    return stale
