"""Long-tailed image tables generated on the spot (no download): the stress data of the
``stress-lt`` preset and of ``raysynth bench learn``.

Class ``c`` of ``num_classes`` is a smooth pattern of its own (two sinusoid gratings whose
frequency and angle depend on ``c``) plus per-image noise and shift, so a small CNN can learn it
and classes differ in how hard they are. The counts follow the usual exponential profile
``n_c = n_max · imbalance^(−c/(C−1))`` (class 0 the head).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raysynth import columns as col
from raysynth.config.schema import DataConfig
from raysynth.data.images import encode_png
from raysynth.data.imageset import ImageSet
from raysynth.files import atomic_open

ROWS_PER_FILE = 4096


def long_tail_counts(total: int, num_classes: int, imbalance: float) -> list[int]:
    """Per-class counts summing to ``total``, ``imbalance`` = largest / smallest class."""
    if num_classes < 1 or total < num_classes or imbalance < 1:
        raise ValueError(
            f"need total >= num_classes >= 1 and imbalance >= 1, got {total}, {num_classes}, "
            f"{imbalance}"
        )
    shape = imbalance ** (-np.arange(num_classes) / max(num_classes - 1, 1))
    counts = np.maximum(1, np.floor(shape / shape.sum() * total)).astype(np.int64)
    counts[0] += total - counts.sum()
    return counts.tolist()


def pattern_images(labels: np.ndarray, size: int, channels: int, seed: int) -> np.ndarray:
    """uint8 ``[N, size, size, channels]`` images of ``labels`` (module docstring)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    c = labels.astype(np.float64)[:, None, None]
    shift = rng.uniform(0, 1, (len(labels), 2))[:, :, None, None]
    angle = c * 2.399  # golden angle: neighbouring classes far apart
    freq = 1.5 + (c % 7)
    u = np.cos(angle) * (xx + shift[:, 0]) + np.sin(angle) * (yy + shift[:, 1])
    img = 0.5 + 0.35 * np.sin(2 * np.pi * freq * u)
    out = img[..., None] + rng.normal(0, 0.12, (len(labels), size, size, channels))
    if channels == 3:
        out = out * (0.6 + 0.4 * np.stack([np.cos(c + k) ** 2 for k in range(3)], -1))
    return np.clip(out * 255, 0, 255).astype(np.uint8)


def write_table(
    folder: str | Path, counts: list[int], size: int, channels: int, seed: int,
    prefix: str = "img", accepted: bool = False,
) -> list[str]:
    """Write ``counts[c]`` images of each class as Parquet files under ``folder`` (stored class
    by class, as real splits and synthetic rounds are); ``accepted`` adds an all-true
    ``accepted`` column (a synthetic table). Returns the files."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    labels = np.repeat(np.arange(len(counts)), counts)
    files = []
    for part, start in enumerate(range(0, len(labels), ROWS_PER_FILE)):
        y = labels[start : start + ROWS_PER_FILE]
        files.append(str(_write_part(folder / f"part-{part:05d}.parquet", y, start, size,
                                     channels, seed + part, prefix, accepted)))
    return files


def _write_part(path: Path, y: np.ndarray, start: int, size: int, channels: int, seed: int,
                prefix: str, accepted: bool) -> Path:
    images = pattern_images(y, size, channels, seed)
    cols = {
        col.SAMPLE_ID: pa.array([f"{prefix}-{start + i:08d}" for i in range(len(y))]),
        col.LABEL: pa.array(y, pa.int64()),
        col.IMAGE: pa.array(list(_pngs(images)), pa.binary()),
    }
    if accepted:
        cols[col.ACCEPTED] = pa.array([True] * len(y))
    with atomic_open(path, "wb") as f:
        pq.write_table(pa.table(cols), f)
    return path


def _pngs(images: np.ndarray) -> Iterator[bytes]:
    for im in images:
        yield encode_png(im)


def generated_set(cfg: DataConfig, seed: int = 0) -> ImageSet:
    """``data.source: generated``: ``data.generated_classes`` classes of
    ``k + pool_per_class + val_per_class + test_per_class`` images each, ``data.image_size``
    (32 when 0) pixels, ``data.channels`` (3 when 0); the splits then make the train split
    long-tailed (``data.imbalance_factor``). The same images on every call."""
    per_class = cfg.k + cfg.pool_per_class + cfg.val_per_class + cfg.test_per_class
    size, channels = cfg.image_size or 32, cfg.channels or 3
    labels = np.repeat(np.arange(cfg.generated_classes), per_class)
    images: list[bytes] = []
    for start in range(0, len(labels), ROWS_PER_FILE):
        part = pattern_images(labels[start : start + ROWS_PER_FILE], size, channels, seed + start)
        images.extend(_pngs(part))
    return ImageSet(
        images=images, labels=labels.astype(np.int64),
        class_names=[f"pattern-{c:03d}" for c in range(cfg.generated_classes)],
        sources=[f"generated:{i}" for i in range(len(labels))], channels=channels,
    )
