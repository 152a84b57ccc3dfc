"""The synthesis plan: one row per image to make (DESIGN §2).

A row names the class, the prompt and negative prompt, the real image it is conditioned on
(``cond_id``, also the image the filter compares it with) and a ``sample_id`` and ``seed`` derived by
hashing (run seed, class name, index, round) — never from time or arrival order. Two calls with the
same arguments therefore give identical rows, a re-run skips the ids already written, and a rejected
row is regenerated as the same (class, index) in the next round with a fresh id and seed.

Quotas say how many images each class gets:

- :func:`quotas_fixed` — the same number per class;
- :func:`quotas_fraction_of_k` — a fraction of each class's real count, at least one (UniCon: k/2);
- :func:`quotas_top_up` — up to a target count per class (feedback guidance balances ImageNet-LT to
  1,300 per class).
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from typing import Any

from raysynth import columns as col
from raysynth.errors import ConfigError, DataError
from raysynth.seeding import stable_hash, stable_seed

INDEX = col.INDEX

PLACEHOLDERS = ("class", "context")

PROMPT_TEMPLATES: dict[str, str] = {
    "photo": "a photo of {class}",
    "context_colon": "{context}: {class}",  # AiR: "Flowers: thorn apple"
    "in_context": "{class} in {context}",  # feedback guidance on NICO++: "class in context"
}
"""Named prompt templates; any string with ``{class}`` / ``{context}`` placeholders also works."""

DATASET_PROMPTS: dict[str, tuple[str, str]] = {
    # DiffCoRe-Mix: a contextual prompt (class name plus the kind of dataset) and a negative
    # prompt chosen per kind of dataset; pass them as prompt_template / negative_prompt.
    "flowers": (
        "a photo of a {class}, a kind of {context}",
        "cartoon, drawing, painting, text, watermark, insects, people, blurry, deformed",
    ),
    "birds": (
        "a photo of a {class}, a kind of {context}",
        "cartoon, drawing, painting, text, watermark, cage, toy, blurry, deformed",
    ),
    "objects": (
        "a photo of a {class}, a {context} object",
        "cartoon, drawing, text, watermark, collage, blurry, low quality, deformed",
    ),
    "cars": (
        "a photo of a {class}, a kind of {context}",
        "cartoon, drawing, toy, interior, text, watermark, blurry, deformed",
    ),
}


def format_prompt(template: str, class_name: str, context: str = "") -> str:
    """``template`` with ``{class}`` and ``{context}`` filled in.

    Any other placeholder is a :class:`ConfigError` naming it (a typo such as ``{clas}`` would
    otherwise surface as a bare ``KeyError`` deep inside a worker).
    """
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template)]
    except ValueError as e:  # unbalanced braces
        raise ConfigError(f"prompt template {template!r} is malformed: {e}") from e
    for field in fields:
        if field is None:
            continue
        name = field.split(".")[0].split("[")[0]
        if name not in PLACEHOLDERS:
            raise ConfigError(
                f"prompt template {template!r} has the placeholder {{{field}}}; "
                f"use only {{class}} and {{context}} (double braces for a literal brace)"
            )
    return template.format(**{"class": class_name, "context": context})


def sample_id(run_seed: int, class_name: str, index: int, round: int = 0) -> str:
    """The stable id of synthetic image ``index`` of ``class_name`` in ``round``."""
    return "syn-" + stable_hash("sample", run_seed, class_name, index, round)[:20]


def sample_seed(run_seed: int, class_name: str, index: int, round: int = 0) -> int:
    """The generator seed of that image (hashed under another tag, so it is not the id's digits)."""
    return stable_seed("seed", run_seed, class_name, index, round)


def make_plan(
    class_names: list[str],
    real_ids_by_class: Mapping[int, Sequence[str]],
    quotas: Mapping[int, int],
    run_seed: int,
    round: int = 0,
    prompt_template: str = "a photo of {class}",
    negative_prompt: str = "",
    context: str = "",
    start_index: Mapping[int, int] | None = None,
    groups: Mapping[int, Sequence[tuple[str, int]]] | None = None,
) -> list[dict[str, Any]]:
    """One row per image to synthesize, classes in label order, indices ascending.

    With ``groups`` (per class, ``(group, n)`` in order) row ``index`` of a class belongs to the
    group whose range holds it (the first ``n_0`` indices to the first group, …; indices beyond
    the last range to the last group) and its group fills ``{context}`` (``{class} in {context}``:
    one prompt per class × group); the row's seed and id are those of (class, index) as before.

    Class ``c`` gets indices ``start_index[c] .. start_index[c] + quotas[c] - 1`` (start 0 unless
    given: a top-up in a later call continues where the earlier one stopped). ``cond_id`` is one of
    the class's real ids (``real_ids_by_class[c]``, order irrelevant) picked by a stable hash of the
    row. Columns: ``sample_id, label, class_name, prompt, negative_prompt, seed, round, cond_id,
    index``. ``prompt_template`` and ``negative_prompt`` may use ``{class}`` and ``{context}``.
    """
    start_index = start_index or {}
    rows: list[dict[str, Any]] = []
    for label in sorted(quotas):
        quota = int(quotas[label])
        if quota <= 0:
            continue
        if not 0 <= label < len(class_names):
            raise ConfigError(f"quota for label {label}, but there are {len(class_names)} classes")
        name = class_names[label]
        real_ids = sorted(real_ids_by_class.get(label, ()))
        if not real_ids:
            raise DataError(
                f"class {name!r} (label {label}) has no real images to condition on; "
                "give it real training images or set its quota to 0"
            )
        first = int(start_index.get(label, 0))
        layout = list(groups.get(label, ())) if groups else []
        for index in range(first, first + quota):
            ctx = group_of(layout, index) if layout else context
            prompts = (format_prompt(prompt_template, name, ctx),
                       format_prompt(negative_prompt, name, ctx))
            pick = stable_seed("cond", run_seed, name, index, round) % len(real_ids)
            rows.append(_row(run_seed, label, name, index, round, prompts, real_ids[pick]))
    return rows


def group_of(layout: Sequence[tuple[str, int]], index: int) -> str:
    """The group whose index range (laid out group after group) holds ``index``."""
    end = 0
    for group, n in layout:
        end += n
        if index < end:
            return group
    return layout[-1][0]


def _row(
    run_seed: int, label: int, name: str, index: int, round: int, prompts: tuple[str, str],
    cond: str,
) -> dict[str, Any]:
    return {
        col.SAMPLE_ID: sample_id(run_seed, name, index, round),
        col.LABEL: label,
        col.CLASS_NAME: name,
        col.PROMPT: prompts[0],
        col.NEGATIVE_PROMPT: prompts[1],
        col.SEED: sample_seed(run_seed, name, index, round),
        col.ROUND: round,
        col.COND_ID: cond,
        INDEX: index,
    }
