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

RECOGNITION_COLUMNS = (col.LABEL, col.IMAGE, col.ROUND, col.ACCEPTED)
RATES = ("all", "round0", "accepted")  # hits / rows of each, in this order, twice each


def recognition_rate(root: Path, classifier_folder: Path, channels: int) -> dict[str, float]:
    """Share of generated images the real-split classifier labels with their intended class —
    all rows, round 0 alone (unfiltered first draws) and accepted rows — counted here, one file
    at a time (:class:`RecognitionCounts` counts the same on an actor pool)."""
    counter = RecognitionCounts(classifier_folder, channels)
    total = np.zeros(2 * len(RATES), np.int64)
    for t in iter_tables(root, list(RECOGNITION_COLUMNS)):
        total += counter({c: t[c].to_numpy(zero_copy_only=False) for c in RECOGNITION_COLUMNS}
                         )["hits"][0]
    return rates(total)


def rates(hits: np.ndarray) -> dict[str, float]:
    """``{all, round0, accepted}`` from the summed ``[hits, rows] × 3`` counts (NaN: no row)."""
    return {k: (float(hits[2 * i] / hits[2 * i + 1]) if hits[2 * i + 1] else float("nan"))
            for i, k in enumerate(RATES)}


class RecognitionCounts:
    """Callable class: a batch of synthetic rows (:data:`RECOGNITION_COLUMNS`) → ``{"hits":
    [[hits, rows] × (all, round0, accepted)]}``, one row of counts. Rows without an image (a
    failed generation) are not counted; an unfiltered row (``accepted`` null) is not accepted.
    ``folder``: the classifier checkpoint, local or the run directory's ``RemotePath``."""

    def __init__(self, folder: str | Path, channels: int) -> None:
        from raysynth.storage import as_path
        from raysynth.train.checkpoint import load_model

        self.model = load_model(as_path(folder)).eval()
        self.channels = channels

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        from raysynth.data.images import to_tensor_array

        has = np.array([b is not None for b in batch[col.IMAGE]], bool)
        out = np.zeros(2 * len(RATES), np.int64)
        if has.any():
            pngs = [b for b, ok in zip(batch[col.IMAGE], has) if ok]
            x = torch.from_numpy(to_tensor_array(pngs, self.channels))
            with torch.inference_mode():
                pred = self.model(x).argmax(1).numpy()
            ok = pred == np.asarray(batch[col.LABEL], np.int64)[has]
            r0 = np.asarray(batch[col.ROUND], np.int64)[has] == 0
            acc = np.array([a is True or a == 1 for a in batch[col.ACCEPTED]], bool)[has]
            for i, mask in enumerate((np.ones_like(ok), r0, acc)):
                out[2 * i], out[2 * i + 1] = int(ok[mask].sum()), int(mask.sum())
        return {"hits": out[None, :]}


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
