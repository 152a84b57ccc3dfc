"""PNG bytes ⇄ uint8 arrays ⇄ float tensors-as-arrays.

Every table raysynth writes stores images as PNG bytes (DESIGN §1), never as decoded arrays; this
module is the one place that encodes and decodes them, so channel conversion, resizing and the
treatment of odd modes (palette, alpha, 16-bit grey) are the same in every stage.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from raysynth.errors import DataError

GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "F"})
_SIXTEEN_BIT = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})


class UnreadableImageError(DataError):
    """Bytes that PIL cannot decode; ``reason`` is the part that names no source."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name} is not a readable image: {reason}")
        self.reason = reason


def encode_png(image: np.ndarray) -> bytes:
    """Encode a uint8 image ``[H, W]`` or ``[H, W, C]`` (C = 1 or 3) as lossless PNG bytes."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"encode_png needs uint8 pixels, got {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise ValueError(f"encode_png needs [H, W] or [H, W, 1|3] pixels, got shape {arr.shape}")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG")  # uint8 → L or RGB
    return buf.getvalue()


def decode_png(
    data: bytes, channels: int = 0, size: int = 0, *, name: str = "image data"
) -> np.ndarray:
    """Decode image bytes (PNG or any format PIL reads) to uint8 ``[H, W, C]``.

    ``channels`` 1 converts to grey (PIL ``L``), 3 to RGB, 0 keeps the source's kind (grey modes
    give 1 channel, everything else 3). Alpha is composited on white rather than dropped, so
    transparent backgrounds do not turn black; 16-bit grey is scaled to 8 bits rather than clipped.
    ``size`` > 0 resizes to ``size × size`` with PIL's antialiased bilinear filter (the aspect
    ratio is not kept). Corrupt, truncated or empty bytes raise :class:`DataError`
    (``"<name> is not a readable image: <reason>"``).
    """
    if channels not in (0, 1, 3):
        raise ValueError(f"channels must be 0, 1 or 3, got {channels}")
    if size < 0:
        raise ValueError(f"size must be >= 0, got {size}")
    pil = _convert(_open(data, name), channels)
    if size > 0 and pil.size != (size, size):
        pil = pil.resize((size, size), Image.Resampling.BILINEAR)
    arr = np.asarray(pil, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def to_tensor_array(pngs: Sequence[bytes], channels: int, size: int = 0) -> np.ndarray:
    """Decode a batch of PNG bytes to float32 ``[N, C, H, W]`` in [0, 1] (torch layout).

    Without ``size`` every image must already have the same height and width.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    out: np.ndarray | None = None
    for i, data in enumerate(pngs):
        arr = decode_png(data, channels, size, name=f"image {i}")
        if out is None:
            out = np.empty((len(pngs), channels, arr.shape[0], arr.shape[1]), dtype=np.float32)
        elif arr.shape[:2] != out.shape[2:]:
            raise DataError(
                f"image {i} is {arr.shape[1]}×{arr.shape[0]} but image 0 is "
                f"{out.shape[3]}×{out.shape[2]}; set data.image_size to resize them to one size"
            )
        out[i] = arr.transpose(2, 0, 1)
    if out is None:
        return np.zeros((0, channels, size, size), dtype=np.float32)
    out /= 255.0
    return out


def _open(data: bytes, name: str) -> Image.Image:
    """Open and fully decode ``data`` (``Image.open`` alone only reads the header)."""
    if not data:
        raise UnreadableImageError(name, "it is empty (0 bytes)")
    try:
        pil = Image.open(io.BytesIO(data))
        pil.load()
    except UnidentifiedImageError as e:  # its message names a BytesIO address: say it plainly
        raise UnreadableImageError(
            name, "no image format recognised (damaged or not an image)"
        ) from e
    except Exception as e:  # PIL's plugins raise OSError, SyntaxError, ValueError, EOFError, ...
        raise UnreadableImageError(name, f"{type(e).__name__}: {e}") from e
    return pil


def _convert(pil: Image.Image, channels: int) -> Image.Image:
    """Convert to ``L`` (1 channel) or ``RGB`` (3); 0 picks by the source mode."""
    if channels == 0:
        channels = 1 if pil.mode in GREY_MODES or pil.mode.startswith("I;16") else 3
    if pil.mode in _SIXTEEN_BIT:
        wide = np.asarray(pil, dtype=np.float64)
        pil = Image.fromarray(np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8))
    if pil.mode in ("RGBA", "LA", "La", "RGBa", "PA") or (
        pil.mode == "P" and "transparency" in pil.info
    ):
        rgba = pil.convert("RGBA")
        pil = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return pil.convert("L" if channels == 1 else "RGB")


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes) -> tuple[int, int] | None:
    """``(height, width)`` from a PNG's header (nothing decoded); None when ``data`` does not
    start like a PNG."""
    if data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR" or len(data) < 24:
        return None
    return int.from_bytes(data[20:24], "big"), int.from_bytes(data[16:20], "big")


def image_size_of(data: bytes) -> tuple[int, int]:
    """``(height, width)`` of an image: a PNG's from its header, any other format decoded."""
    return png_size(data) or tuple(decode_png(data).shape[:2])  # type: ignore[return-value]
