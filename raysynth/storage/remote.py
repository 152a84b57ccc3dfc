"""``RemotePath``: a file or folder on a pyarrow filesystem, the subset of ``pathlib.Path`` the
run directory uses (no ``__fspath__``: it never silently becomes a local path)."""

from __future__ import annotations

import contextlib
import fnmatch
import io
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from types import SimpleNamespace
from typing import IO, Any

import pyarrow.fs as pafs

from raysynth.errors import RaysynthError


class StorageError(RaysynthError):
    """A location names no filesystem raysynth can reach, or the filesystem refused."""


def put(fs: pafs.FileSystem, path: str, data: bytes | IO[bytes]) -> int:
    """One whole-object put of ``data`` (bytes, or a binary file read to its end), checked: an
    object the store keeps at another size than was written (a store that kept an unsigned
    put's ``aws-chunked`` framing as content) is deleted and a :class:`StorageError` — never
    left corrupt. Returns the bytes written."""
    written = 0
    with fs.open_output_stream(path) as out:
        if isinstance(data, bytes):
            written = out.write(data) or len(data)
        else:
            while chunk := data.read(8 << 20):
                out.write(chunk)
                written += len(chunk)
    kept = fs.get_file_info(path).size
    if kept != written:
        with contextlib.suppress(OSError):
            fs.delete_file(path)
        raise StorageError(
            f"{fs.type_name}://{path}: the store kept {kept} bytes of the {written} written, so the object was "
            f"deleted. An unsigned put does this: give this process credentials (on every node: "
            f"AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile or an instance role)")
    return written


class RemotePath:
    """A file or folder on a pyarrow filesystem: the subset of ``pathlib.Path`` the run directory
    uses. Writes are whole-object puts (an object store shows an object only once it is closed);
    durable, atomic writes go through ``raysynth.files``."""

    def __init__(self, fs: pafs.FileSystem, path: str, scheme: str,
                 listed: pafs.FileType | None = None) -> None:
        self.fs, self.path, self.scheme = fs, path.rstrip("/"), scheme
        # A path found by iterdir/glob answers is_file/is_dir from that listing (one request
        # for a whole folder instead of one per entry), as pathlib's scandir-based glob does.
        self._listed = listed

    def __getstate__(self) -> dict:
        return {"fs": self.fs, "path": self.path, "scheme": self.scheme, "_listed": None}

    # Names -----------------------------------------------------------------------------------
    def __truediv__(self, other: str | PurePosixPath) -> RemotePath:
        return RemotePath(self.fs, f"{self.path}/{str(other).strip('/')}", self.scheme)

    def __str__(self) -> str:
        return f"{self.scheme}://{self.path}"

    def __repr__(self) -> str:
        return f"RemotePath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemotePath) and (self.scheme, self.path) == (other.scheme, other.path)

    def __hash__(self) -> int:
        return hash((self.scheme, self.path))

    def __lt__(self, other: RemotePath) -> bool:
        return self.path < other.path

    @property
    def _pure(self) -> PurePosixPath:
        return PurePosixPath(self.path)

    @property
    def name(self) -> str:
        return self._pure.name

    @property
    def stem(self) -> str:
        return self._pure.stem

    @property
    def suffix(self) -> str:
        return self._pure.suffix

    @property
    def parent(self) -> RemotePath:
        return RemotePath(self.fs, str(self._pure.parent), self.scheme)

    def with_name(self, name: str) -> RemotePath:
        return self.parent / name

    def with_suffix(self, suffix: str) -> RemotePath:
        return self.with_name(self._pure.with_suffix(suffix).name)

    def relative_to(self, other: RemotePath) -> PurePosixPath:
        return self._pure.relative_to(other.path)

    def expanduser(self) -> RemotePath:
        return self

    def resolve(self) -> RemotePath:
        return self

    absolute = resolve

    # Queries ---------------------------------------------------------------------------------
    def _type(self) -> pafs.FileType:
        if self._listed is not None:
            return self._listed
        return self.fs.get_file_info(self.path).type

    def exists(self) -> bool:
        return self._type() != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self._type() == pafs.FileType.File

    def is_dir(self) -> bool:
        return self._type() == pafs.FileType.Directory

    def _list(self, recursive: bool) -> list[pafs.FileInfo]:
        sel = pafs.FileSelector(self.path, allow_not_found=True, recursive=recursive)
        return sorted(self.fs.get_file_info(sel), key=lambda i: i.path)

    def iterdir(self) -> Iterator[RemotePath]:
        for info in self._list(False):
            yield RemotePath(self.fs, info.path, self.scheme, info.type)

    def glob(self, pattern: str) -> Iterator[RemotePath]:
        """``*``/``?`` patterns, one per path segment (``train/real-r*``)."""
        found = [self]
        for part in pattern.strip("/").split("/"):
            found = [c for f in found for c in f.iterdir() if fnmatch.fnmatchcase(c.name, part)]
        yield from found

    def rglob(self, pattern: str) -> Iterator[RemotePath]:
        for info in self._list(True):
            if fnmatch.fnmatchcase(PurePosixPath(info.path).name, pattern):
                yield RemotePath(self.fs, info.path, self.scheme, info.type)

    def stat(self) -> SimpleNamespace:
        """``st_size`` and ``st_mtime_ns``, as ``os.stat`` names them."""
        info = self.fs.get_file_info(self.path)
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(str(self))
        return SimpleNamespace(st_size=int(info.size or 0), st_mtime_ns=info.mtime_ns)

    # Reads and plain writes ------------------------------------------------------------------
    def read_bytes(self) -> bytes:
        try:
            with self.fs.open_input_stream(self.path) as f:
                return f.read()
        except FileNotFoundError:
            raise
        except OSError as e:
            if not self.exists():
                raise FileNotFoundError(str(self)) from e
            raise

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def write_bytes(self, data: bytes) -> int:
        self._listed = None
        return put(self.fs, self.path, data)

    def write_text(self, text: str, encoding: str = "utf-8") -> int:
        return self.write_bytes(text.encode(encoding))

    def open(self, mode: str = "rb", encoding: str | None = None) -> IO[Any]:
        """``rb``/``r``: a seekable reader; ``wb``/``w``: a whole-object writer (shown on close)."""
        if mode in ("rb", "r"):
            raw = self.fs.open_input_file(self.path)
            return raw if mode == "rb" else io.TextIOWrapper(raw, encoding=encoding or "utf-8")
        if mode in ("wb", "w"):
            raw = self.fs.open_output_stream(self.path)
            return raw if mode == "wb" else io.TextIOWrapper(raw, encoding=encoding or "utf-8")
        raise ValueError(f"RemotePath.open: mode {mode!r} (use rb, r, wb or w)")

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        self.fs.create_dir(self.path, recursive=True)

    def unlink(self, missing_ok: bool = False) -> None:
        self._listed = None
        try:
            self.fs.delete_file(self.path)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def rmtree(self) -> None:
        self._listed = None
        self.fs.delete_dir(self.path)


AnyPath = Path | RemotePath

