"""Bring raw image bytes to one format: PNGs of the configured channel count and size.

Shared by every loader (labelled and unlabeled, files and Parquet rows). Unreadable images are
skipped, never fatal and never silent: each comes back as ``(source, reason)`` and
:func:`log_skipped` warns about it on the ``raysynth.data`` logger.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from PIL import Image

from raysynth.data.images import GREY_MODES, UnreadableImageError, decode_png, encode_png

log = logging.getLogger("raysynth.data")

_MAX_LOGGED_SKIPS = 20  # beyond this, one summary line (the full list is in ImageSet.skipped)


def convert_images(
    sources: Sequence[str],
    read: Callable[[int], bytes],
    channels: int,
    size: int,
) -> tuple[list[bytes | None], list[tuple[str, str]]]:
    """Decode, convert and re-encode every image to PNG; unreadable ones become ``None``.

    ``read(i)`` returns the raw bytes of image ``i``. Decoding runs on a thread pool (PIL releases
    the GIL while decoding, resizing and encoding). Returns the PNGs (``None`` where skipped) and
    ``(source, reason)`` for each skip (the caller reports them with :func:`log_skipped`).
    """

    def one(i: int) -> bytes | str:
        try:
            return reencode(read(i), channels, size, name=sources[i])
        except UnreadableImageError as e:
            return f"not a readable image: {e.reason}"
        except OSError as e:  # a file that vanished or cannot be read
            return f"cannot read the file: {e}"

    workers = min(32, os.cpu_count() or 1)
    if len(sources) < 64:
        results = [one(i) for i in range(len(sources))]
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(one, range(len(sources)), chunksize=16))
    pngs = [res if isinstance(res, bytes) else None for res in results]
    skipped = [(src, res) for src, res in zip(sources, results) if isinstance(res, str)]
    return pngs, skipped


def log_skipped(skipped: Sequence[tuple[str, str]], total: int) -> None:
    """Warn on ``raysynth.data`` about each skipped image (the first 20) and their number."""
    for source, reason in skipped[:_MAX_LOGGED_SKIPS]:
        log.warning("skipped %s: %s", source, reason)
    if skipped:
        more = len(skipped) - _MAX_LOGGED_SKIPS
        log.warning(
            "skipped %d of %d images%s; the list is written to real/classes.json",
            len(skipped),
            total,
            f" ({more} not shown above)" if more > 0 else "",
        )


def reencode(data: bytes, channels: int, size: int, name: str = "image data") -> bytes:
    """``data`` (any format PIL reads) as a PNG of ``channels`` channels and ``size`` pixels."""
    return encode_png(decode_png(data, channels, size, name=name))


def auto_channels(blobs: Sequence[bytes]) -> int:
    """1 if every readable image is grey (judged from its header alone), else 3."""
    for blob in blobs:
        try:
            mode = Image.open(io.BytesIO(blob)).mode
        except Exception:  # unreadable: convert_images skips and reports it
            continue
        if not (mode in GREY_MODES or mode.startswith("I;16")):
            return 3
    return 1
