"""What the generated images look like to a person and to the real-split classifier: the sample
grid ``samples.png`` (one row of generated images per class, accepted first) and the recognition
rate (the share of generated images the real-split classifier labels with their intended class).
Both read the synthetic table under ``root`` and take plain inputs, no run state.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from raysynth import columns as col
from raysynth.files import atomic_open
from raysynth.generate.table import iter_tables


def recognition_rate(root: Path, classifier_folder: Path, channels: int) -> dict[str, float]:
    """Share of generated images the real-split classifier labels with their intended class —
    all rows, round 0 alone (unfiltered first draws) and accepted rows."""
    import torch

    from raysynth.data import to_tensor_array
    from raysynth.train.checkpoint import load_model

    model = load_model(classifier_folder).eval()
    hits = {"all": [0, 0], "round0": [0, 0], "accepted": [0, 0]}
    for t in iter_tables(root, [col.LABEL, col.IMAGE, col.ROUND, col.ACCEPTED]):
        t = t.filter(t[col.IMAGE].is_valid())
        if t.num_rows == 0:
            continue
        x = torch.from_numpy(to_tensor_array(t[col.IMAGE].to_pylist(), channels))
        with torch.no_grad():
            pred = model(x).argmax(1).numpy()
        ok = pred == np.asarray(t[col.LABEL].to_pylist())
        r0 = np.asarray(t[col.ROUND].to_pylist()) == 0
        acc = np.asarray(t[col.ACCEPTED].fill_null(False).to_pylist(), bool)
        for key, mask in (("all", np.ones_like(ok)), ("round0", r0), ("accepted", acc)):
            hits[key][0] += int(ok[mask].sum())
            hits[key][1] += int(mask.sum())
    return {k: (h / n if n else float("nan")) for k, (h, n) in hits.items()}


def write_sample_grid(root: Path, out: Path, num_classes: int, per_class: int = 8) -> Path:
    """``samples.png``: one row per class of up to ``per_class`` generated images (accepted
    first), upscaled without smoothing."""
    from PIL import Image

    from raysynth.data import decode_png

    rows: dict[int, list[np.ndarray]] = {c: [] for c in range(num_classes)}
    for t in iter_tables(root, [col.LABEL, col.IMAGE, col.ACCEPTED]):
        t = t.filter(t[col.IMAGE].is_valid())
        order = np.argsort(
            ~np.asarray(t[col.ACCEPTED].fill_null(False).to_pylist(), bool), kind="stable"
        )
        for i in order:
            c = int(t[col.LABEL][int(i)].as_py())
            if len(rows[c]) < per_class:
                rows[c].append(decode_png(t[col.IMAGE][int(i)].as_py(), 3))
        if all(len(v) >= per_class for v in rows.values()):
            break
    h, w = next((v[0].shape[:2] for v in rows.values() if v), (8, 8))
    grid = np.full((num_classes * (h + 1), per_class * (w + 1), 3), 255, np.uint8)
    for c, imgs in rows.items():
        for j, img in enumerate(imgs):
            grid[c * (h + 1) : c * (h + 1) + h, j * (w + 1) : j * (w + 1) + w] = img
    scale = max(1, 64 // max(h, w))
    with atomic_open(out, "wb") as f:  # a local file or one object in the run directory's store
        Image.fromarray(grid).resize(
            (grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST
        ).save(f, format="PNG")
    return out
