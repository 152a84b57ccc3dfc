"""How many images each class gets, and the rows of one round (DESIGN §2).

- :func:`quotas_fixed` — the same number per class;
- :func:`quotas_fraction_of_k` — a fraction of each class's real count, at least one (UniCon: k/2);
- :func:`quotas_top_up` — up to a target count per class (feedback guidance balances ImageNet-LT to
  1,300 per class);
- :func:`quotas` picks one from ``synthesis.quota``; :func:`plan_round` plans a round's rows;
- :func:`group_quotas` applies the same rule to every class × group (``synthesis.per_group``: the
  feedback paper tops each NICO++ class × context group up, empty groups included), giving each
  class its groups' quotas in group order (a :data:`GroupLayout`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from raysynth.config.schema import SynthesisConfig
from raysynth.errors import ConfigError, DataError
from raysynth.plan.rows import make_plan


def quotas_fixed(num_classes: int, n: int) -> dict[int, int]:
    """``n`` images for each of ``num_classes`` classes."""
    if num_classes < 0 or n < 0:
        raise ConfigError(f"quotas need num_classes >= 0 and n >= 0, got {num_classes}, {n}")
    return {c: n for c in range(num_classes)}


def quotas_fraction_of_k(
    train_counts: Sequence[int] | Mapping[int, int], fraction: float = 0.5
) -> dict[int, int]:
    """``fraction`` of each class's real count, rounded down, at least 1 (UniCon: k/2 per class)."""
    if fraction <= 0:
        raise ConfigError(f"synthesis fraction must be > 0, got {fraction}")
    return {c: max(1, math.floor(k * fraction)) for c, k in _counts(train_counts).items()}


def quotas_top_up(train_counts: Sequence[int] | Mapping[int, int], target: int) -> dict[int, int]:
    """Images to bring every class up to ``target`` (``target - count``, never negative)."""
    if target < 0:
        raise ConfigError(f"top-up target must be >= 0, got {target}")
    return {c: max(0, target - k) for c, k in _counts(train_counts).items()}


def _counts(train_counts: Sequence[int] | Mapping[int, int]) -> dict[int, int]:
    items = train_counts.items() if isinstance(train_counts, Mapping) else enumerate(train_counts)
    return {int(c): int(k) for c, k in items}


def quotas(cfg: SynthesisConfig, train_counts: Sequence[int]) -> dict[int, int]:
    """Images to make per class: fixed, a fraction of k, or top-up to a target."""
    if cfg.quota == "fixed":
        return quotas_fixed(len(train_counts), cfg.per_class)
    if cfg.quota == "top_up":
        return quotas_top_up(list(train_counts), cfg.top_up_to)
    return quotas_fraction_of_k(list(train_counts), cfg.per_class_fraction)


GroupLayout = dict[int, list[tuple[str, int]]]
"""Per class, ``(group, images)`` in group order: the class's rows ``0..n-1`` are laid out group
after group, and a row's group fills ``{context}`` in its prompt."""


def group_quotas(
    cfg: SynthesisConfig, group_counts: Mapping[int, Mapping[str, int]], groups: Sequence[str],
    num_classes: int,
) -> GroupLayout:
    """The quota rule of ``cfg`` applied to each (class, group)'s real count; every group of
    ``groups`` gets a quota in every class, those with no real image included."""
    if not groups:
        raise DataError(
            "synthesis.per_group=true but the real data has no groups; read them from "
            "<class>/<context>/ folders (data.group=folder) or from split files with a group column"
        )
    layout: GroupLayout = {}
    for c in range(num_classes):
        mine = group_counts.get(c, {})
        per = quotas(cfg, [int(mine.get(g, 0)) for g in groups])
        layout[c] = [(g, per[i]) for i, g in enumerate(groups)]
    return layout


def plan_round(
    cfg: SynthesisConfig,
    class_names: list[str],
    real_ids_by_class: dict[int, list[str]],
    counts: dict[int, int],
    run_seed: int,
    round_: int,
    start_index: dict[int, int] | None = None,
    layout: GroupLayout | None = None,
) -> list[dict[str, Any]]:
    """Plan rows for one round (round 0: the quota; later rounds: replacements). With a group
    ``layout`` a row's group (by its index) fills ``{context}``; the synthetic table does not keep
    the group, so a later round's replacements of a class are laid out from its first group."""
    return make_plan(
        class_names,
        real_ids_by_class,
        counts,
        run_seed,
        round=round_,
        prompt_template=cfg.prompt,
        negative_prompt=cfg.negative_prompt,
        context=cfg.context,
        start_index=start_index,
        groups=layout,
    )
