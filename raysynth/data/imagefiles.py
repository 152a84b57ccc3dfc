"""Which files in a folder tree are images: by extension, recursively, hidden names left out.

Used by the ImageFolder loader (one sub-folder per class) and the unlabeled-folder loader.
"""

from __future__ import annotations

import os
from pathlib import Path

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


def image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive, by extension, hidden files left out), sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fname in filenames:
            if not fname.startswith(".") and Path(fname).suffix.lower() in IMAGE_EXTENSIONS:
                out.append(Path(dirpath) / fname)
    return sorted(out)
