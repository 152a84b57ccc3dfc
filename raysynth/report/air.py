"""The AiR sections of the report (``report.json``'s ``air``, written by ``flow: air``).

- accuracy of each classifier AiR builds: CLIP zero-shot (text), the fused ``p + λ p̂`` with the
  synthetic prototypes, the learned prompt and the learned prompt fused — as pseudo-label accuracy
  on the unlabeled images (when their labels are known) and as test accuracy;
- the LoRA step and the prompt-learning iterations;
- the prototype ``x̂*_c`` of every class (HTML: thumbnails read from ``synthetic/``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from raysynth import columns as col
from raysynth.generate.table import iter_tables
from raysynth.rundir import SYNTHETIC

ROWS = {
    "text": ("zero_shot", "CLIP zero-shot (text prompts)"),
    "fused": ("fused", "fused p + λ p̂ (synthetic prototypes)"),
    "prompt": ("prompt", "learned prompt (CoOp)"),
    "prompt_fused": ("prompt_fused", "learned prompt, fused"),
}


def air_accuracy_rows(air: dict[str, Any], pct, dash: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the accuracy table (``pct`` formats a fraction as a percentage)."""
    pseudo, test = air.get("pseudo_label_accuracy") or {}, air.get("test_accuracy") or {}
    rows = []
    for key, (test_key, label) in ROWS.items():
        p, t = pseudo.get(key), test.get(test_key)
        if p is None and t is None:
            continue
        rows.append([label, dash if p is None else pct(p), dash if t is None else pct(t)])
    return ["classifier", "pseudo-label accuracy (%)", "test accuracy (%)"], rows


def air_settings_rows(air: dict[str, Any], num) -> tuple[list[str], list[list[str]]]:
    lora = air.get("lora") or {}
    search = air.get("search") or {}
    row = [
        num(air.get("unlabeled")),
        num(lora.get("top_k")),
        num(lora.get("images")),
        num(lora.get("steps")),
        f"{num(lora.get('loss_first'))} → {num(lora.get('loss_last'))}",
        num(air.get("synthetic")),
        num(air.get("lam")),
        num(air.get("beta")),
        f"searched, {num(search.get('trials'))} trials" if search else "given",
    ]
    header = [
        "unlabeled images", "top-K", "LoRA images", "LoRA steps", "LoRA loss (first → last)",
        "generated", "λ", "β", "λ, β",
    ]
    return header, [row]


def air_history_rows(air: dict[str, Any], pct, num) -> tuple[list[str], list[list[str]]]:
    rows = [
        [
            num(h.get("iteration")),
            num(h.get("loss_last")),
            pct(h.get("pseudo_acc")),
            pct(h.get("refreshed_acc")),
            pct(h.get("val_acc")),
        ]
        for h in air.get("history") or []
    ]
    header = [
        "iteration", "loss (last step)", "pseudo-labels trained on (%)",
        "refreshed pseudo-labels (%)", "val accuracy (%)",
    ]
    return header, rows


def prototype_images(root: Path, air: dict[str, Any]) -> dict[str, bytes]:
    """``{class: PNG}`` of each class's prototype, read from ``root/synthetic``."""
    wanted = {str(sid): str(c) for c, sid in (air.get("prototypes") or {}).items()}
    out: dict[str, bytes] = {}
    for t in iter_tables(root / SYNTHETIC, [col.SAMPLE_ID, col.IMAGE]):
        ids = t.column(col.SAMPLE_ID).to_pylist()
        for i, sid in enumerate(ids):
            if sid in wanted and wanted[sid] not in out:
                data = t.column(col.IMAGE)[i].as_py()
                if data:
                    out[wanted[sid]] = data
        if len(out) == len(wanted):
            break
    return out
