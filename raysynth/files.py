"""Durable writes and cached results: the one atomic writer every module uses, and the one
"compute it unless it is already there" helper that makes stages resumable.

A write goes to a temporary file in the same folder, is flushed and fsynced, renamed over the
target, and the folder is fsynced: a reader sees the old file or the new one, never a torn one,
and a crash after the rename keeps the new one. The temporary file is removed when the write fails.

On an object store (a ``raysynth.storage.RemotePath``: the run directory on ``s3://`` …) rename is
not atomic, so a write is spooled locally and sent as one whole-object put once the ``with`` block
ends without an error: the store shows the old object or the new one, never a part, and nothing
at all when the write fails; an object the store keeps other than written (its size) is deleted
and an error.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, TypeVar

from raysynth.storage import AnyPath, RemotePath, as_path
from raysynth.storage.remote import put

T = TypeVar("T")


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """A file object whose content replaces ``path`` once the ``with`` block ends without an
    error (parents created): written to a hidden temporary file beside it (``.<name>-<random>.tmp``,
    which every table reader skips), flushed, fsynced, renamed over ``path``, folder fsynced. On
    an error the temporary file is removed and ``path`` is left as it was."""
    if isinstance(path, RemotePath):
        with _remote_open(path, mode) as f:
            yield f
        return
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


@contextmanager
def _remote_open(path: RemotePath, mode: str) -> Iterator[IO[Any]]:
    """Spool to a local temporary file; on success one whole-object put (shown on close), checked
    (``storage.remote.put``: an object stored other than written is deleted and an error)."""
    with tempfile.SpooledTemporaryFile(max_size=64 << 20, mode="w+b") as spool:
        f: IO[Any] = spool if "b" in mode else io.TextIOWrapper(spool, encoding="utf-8")
        yield f
        f.flush()
        spool.seek(0)
        put(path.fs, path.path, spool)
        if f is not spool:
            f.detach()


def atomic_write_bytes(path: str | AnyPath, data: bytes) -> AnyPath:
    """Write ``data`` to ``path`` atomically and durably (parents created)."""
    path = as_path(path)
    with atomic_open(path, "wb") as f:
        f.write(data)
    return path


def atomic_write_text(path: str | AnyPath, text: str) -> AnyPath:
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | AnyPath, data: Any) -> AnyPath:
    """``data`` as indented JSON (numpy scalars and arrays become plain numbers and lists)."""
    return atomic_write_text(path, json.dumps(data, indent=2, default=_json_default))


def atomic_save_npz(path: str | AnyPath, **arrays: Any) -> AnyPath:
    """``np.savez`` of ``arrays``, written atomically."""
    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return atomic_write_bytes(path, buf.getvalue())


def fsync_dir(folder: str | AnyPath) -> None:
    """Make a rename or new file in ``folder`` durable (a no-op where folders cannot be opened)."""
    if isinstance(folder, RemotePath):
        return
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


def read_json(path: str | AnyPath) -> Any:
    return json.loads(as_path(path).read_text())


def cached(
    path: str | AnyPath,
    compute: Callable[[], T],
    read: Callable[[Any], T] = read_json,
    write: Callable[[Any, T], Any] = atomic_write_json,
) -> T:
    """``read(path)`` when ``path`` exists, else ``compute()``, written with ``write`` and returned:
    the resume rule of every stage (a finished output is never recomputed)."""
    path = as_path(path)
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


def move_aside(src: str | AnyPath, dest: str | AnyPath) -> AnyPath:
    """Move ``src`` (a file or a folder) to ``dest`` by one rename (parents created; both folders
    fsynced): outputs a run no longer uses are kept, not deleted. On an object store every object
    is copied first and the originals deleted after, so each is always somewhere."""
    src, dest = as_path(src), as_path(dest)
    if isinstance(src, RemotePath) and isinstance(dest, RemotePath):
        return _remote_move(src, dest)
    src, dest = Path(src), Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dest)
    fsync_dir(src.parent)
    fsync_dir(dest.parent)
    return dest


def remove_tree(path: str | AnyPath) -> None:
    """Delete the folder ``path`` and everything in it, if it exists (scratch output only: what a
    run keeps is moved aside, :func:`move_aside`, never deleted)."""
    path = as_path(path)
    if isinstance(path, RemotePath):
        if path.exists():
            path.rmtree()
        return
    shutil.rmtree(path, ignore_errors=True)


def _remote_move(src: RemotePath, dest: RemotePath) -> RemotePath:
    if src.is_file():
        src.fs.copy_file(src.path, dest.path)
        src.unlink()
        return dest
    files = [i.path for i in src._list(True) if i.type.name == "File"]
    for f in files:
        src.fs.copy_file(f, f"{dest.path}/{f[len(src.path) + 1 :]}")
    src.rmtree()
    return dest
