"""Which files in a folder tree are images: by extension, recursively, hidden names left out.

Used by the ImageFolder loader (one sub-folder per class) and the unlabeled-folder loader.
"""

from __future__ import annotations

import os
from pathlib import Path

from raysynth.storage import AnyPath, RemotePath

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


def image_files(folder: AnyPath) -> list[AnyPath]:
    """Image files under ``folder`` (recursive, by extension, hidden files left out), sorted; a
    folder on a pyarrow filesystem (``data.path=s3://…``) listed through it."""
    if isinstance(folder, RemotePath):
        return sorted(f for f in folder.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS
                      and not any(p.startswith(".") for p in f.relative_to(folder).parts))
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fname in filenames:
            if not fname.startswith(".") and Path(fname).suffix.lower() in IMAGE_EXTENSIONS:
                out.append(Path(dirpath) / fname)
    return sorted(out)
