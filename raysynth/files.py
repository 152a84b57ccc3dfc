"""Durable writes and cached results: the one atomic writer every module uses, and the one
"compute it unless it is already there" helper that makes stages resumable.

A write goes to a temporary file in the same folder, is flushed and fsynced, renamed over the
target, and the folder is fsynced: a reader sees the old file or the new one, never a torn one,
and a crash after the rename keeps the new one. The temporary file is removed when the write fails.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, TypeVar

T = TypeVar("T")


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """A file object whose content replaces ``path`` once the ``with`` block ends without an
    error (parents created): written to a hidden temporary file beside it (``.<name>-<random>.tmp``,
    which every table reader skips), flushed, fsynced, renamed over ``path``, folder fsynced. On
    an error the temporary file is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and durably (parents created)."""
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, data: Any) -> Path:
    """``data`` as indented JSON (numpy scalars and arrays become plain numbers and lists)."""
    return atomic_write_text(path, json.dumps(data, indent=2, default=_json_default))


def atomic_save_npz(path: str | Path, **arrays: Any) -> Path:
    """``np.savez`` of ``arrays``, written atomically."""
    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return atomic_write_bytes(path, buf.getvalue())


def fsync_dir(folder: str | Path) -> None:
    """Make a rename or new file in ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def cached(
    path: str | Path,
    compute: Callable[[], T],
    read: Callable[[Path], T] = read_json,
    write: Callable[[Path, T], Any] = atomic_write_json,
) -> T:
    """``read(path)`` when ``path`` exists, else ``compute()``, written with ``write`` and returned:
    the resume rule of every stage (a finished output is never recomputed)."""
    path = Path(path)
    if path.is_file():
        return read(path)
    value = compute()
    write(path, value)
    return value


def finite(v: Any) -> Any:
    """NaN and infinities → None, through dicts and lists, so JSON output stays strict."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: finite(x) for k, x in v.items()}
    if isinstance(v, list):
        return [finite(x) for x in v]
    return v


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def move_aside(src: str | Path, dest: str | Path) -> Path:
    """Move ``src`` (a file or a folder) to ``dest`` by one rename (parents created; both folders
    fsynced): outputs a run no longer uses are kept, not deleted."""
    src, dest = Path(src), Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dest)
    fsync_dir(src.parent)
    fsync_dir(dest.parent)
    return dest
