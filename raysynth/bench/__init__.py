"""``raysynth bench NAME``: measurements of the product as ratios taken side by side (DESIGN §6)."""

from __future__ import annotations

import json
import os
from typing import Any


def emit(result: dict[str, Any], out: str | None) -> dict[str, Any]:
    """Print a bench's JSON and write it to ``out`` (a file, or a folder that gets
    ``bench-<name>.json``); returns the result unchanged."""
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if out is not None:
        path = os.path.join(out, f"bench-{result['name']}.json") if os.path.isdir(out) else out
        with open(path, "w") as f:
            f.write(text + "\n")
    return result
