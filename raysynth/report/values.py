"""Reading and formatting the values of ``report.json``: a value of the wrong type or a
non-finite number reads as missing and shows as a dash, so a partial or odd report still renders.
"""

from __future__ import annotations

import math
from typing import Any

DASH = "—"


def as_dict(v: Any) -> dict:
    return v if isinstance(v, dict) else {}


def finite(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def pct(v: Any) -> str:
    f = finite(v)
    return DASH if f is None else f"{100 * f:.2f}"


def num(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return DASH if v is None else str(v)
    if isinstance(v, int):
        return str(v)
    f = finite(v)
    return DASH if f is None else f"{f:.3f}"


def dur(v: Any) -> str:
    s = finite(v)
    if s is None:
        return DASH
    if s < 120:
        return f"{s:.1f} s"
    return f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.2f} h"


def class_name(names: list[str], label: Any) -> str:
    """The name of class ``label`` (an index into ``names``), or the label itself as text."""
    return names[label] if isinstance(label, int) and 0 <= label < len(names) else str(label)
