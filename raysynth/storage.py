"""Where a run lives: the one place a location string becomes a pyarrow ``FileSystem`` and a path.

A location is a local path (``runs/x``, ``~/runs/x``, ``file:///abs/x``: a ``pathlib.Path``, so
every local run reads and writes exactly as before) or a URI that ``pyarrow.fs.FileSystem.from_uri``
knows (``s3://``, ``gs://``, ``abfs://``, ``hdfs://``): a :class:`RemotePath`, the small Path-like
object the run directory hands out on shared storage (``/``, ``name``, ``parent``, ``exists``,
``is_file``, ``iterdir``, ``glob``, ``read_bytes``, ``open``). Endpoint and credentials come from
the standard environment (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, …) and from the URI's
query options (``s3://bucket/run?endpoint_override=…``). A string with a ``scheme://`` that
pyarrow does not know is an error, never a local folder named ``scheme:``.

``RemotePath`` has no ``__fspath__``: code that would silently turn it into a local path fails
with a ``TypeError`` instead; readers take ``fs_path(p)`` (the filesystem and its path).
"""

from __future__ import annotations

import fnmatch
import functools
import io
import re
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from types import SimpleNamespace
from typing import IO, Any

import pyarrow.fs as pafs

from raysynth.errors import RaysynthError

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# The URI schemes pyarrow.fs.FileSystem.from_uri resolves (Arrow 26).
KNOWN_SCHEMES = ("file", "local", "s3", "gs", "gcs", "abfs", "abfss", "hdfs", "viewfs")


class StorageError(RaysynthError):
    """A location names no filesystem raysynth can reach, or the filesystem refused."""


def scheme(location: str | Any) -> str | None:
    """``"s3"`` for ``s3://bucket/x``; None for a local path."""
    m = _SCHEME.match(str(location)) if isinstance(location, str) else None
    return m.group(1).lower() if m else None


def is_remote(location: Any) -> bool:
    """Whether ``location`` (a string, Path or RemotePath) is on a filesystem other than the local
    disk of this process."""
    if isinstance(location, RemotePath):
        return True
    return scheme(location) not in (None, "file", "local")


@functools.lru_cache(maxsize=32)
def _from_uri(uri_root: str) -> pafs.FileSystem:
    try:
        return pafs.FileSystem.from_uri(uri_root)[0]
    except (ValueError, OSError, ImportError) as e:
        raise StorageError(f"cannot open the filesystem of {uri_root!r}: {e}") from e


def resolve(location: str | Path | RemotePath) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and the path on it of ``location``."""
    if isinstance(location, RemotePath):
        return location.fs, location.path
    return fs_path(path(location))


def fs_path(p: Path | RemotePath | str) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path)`` for pyarrow readers and writers (``pq.read_table(path,
    filesystem=fs)``, ``ray.data.read_parquet(path, filesystem=fs)``)."""
    if isinstance(p, RemotePath):
        return p.fs, p.path
    if isinstance(p, str) and scheme(p) is not None:
        return resolve(p)
    return pafs.LocalFileSystem(), str(Path(p).expanduser().absolute())


def as_path(location: str | Path | RemotePath) -> Path | RemotePath:
    """``location`` itself when it is already a ``Path`` or ``RemotePath``, else :func:`path`."""
    return location if isinstance(location, (Path, RemotePath)) else path(location)


def ray_storage(location: str | Path | RemotePath) -> tuple[str, pafs.FileSystem | None]:
    """Ray Train's and Tune's ``storage_path`` and ``storage_filesystem`` for ``location``: a
    local folder resolved (no filesystem), a remote one as its path on its own filesystem (so the
    endpoint and credentials it was opened with travel with it to every worker)."""
    where = path(location)
    if isinstance(where, RemotePath):
        return where.path, where.fs
    return str(where.resolve()), None


def local_or_remote(location: str | Path | RemotePath) -> Path | RemotePath:
    """``path(location)``, a local one resolved (symlinks followed), as ``Path.resolve``."""
    where = path(location)
    return where.resolve() if isinstance(where, Path) else where


def path(location: str | Path | RemotePath) -> Path | RemotePath:
    """A local ``Path`` (absolute) or, for a URI, a :class:`RemotePath`; an unknown scheme is a
    :class:`StorageError` that says which are known."""
    if isinstance(location, RemotePath):
        return location
    if isinstance(location, Path):
        return location.expanduser().absolute()
    text = str(location)
    sch = scheme(text)
    if sch is None:
        return Path(text).expanduser().absolute()
    if sch not in KNOWN_SCHEMES:
        raise StorageError(
            f"{text!r} names the filesystem {sch!r}, which raysynth (pyarrow) does not know; use a "
            f"local path or a URI with one of: {', '.join(s + '://' for s in KNOWN_SCHEMES)}"
        )
    if sch in ("file", "local"):
        return Path(pafs.FileSystem.from_uri(text)[1])
    base, _, query = text.partition("?")
    rest = base[len(sch) + 3 :].rstrip("/")
    if not rest:
        raise StorageError(f"{text!r} names no bucket or folder; give e.g. {sch}://bucket/run")
    netloc = rest.split("/", 1)[0]
    fs = _from_uri(f"{sch}://{netloc}" + (f"?{query}" if query else ""))
    fs_path_ = pafs.FileSystem.from_uri(base)[1] if sch not in ("s3", "gs", "gcs") else rest
    return RemotePath(fs, fs_path_.rstrip("/"), sch)


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
        with self.fs.open_output_stream(self.path) as f:
            f.write(data)
        return len(data)

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


def download_dir(src: AnyPath, dest: Path) -> Path:
    """Copy the folder ``src`` (local or remote) into the local folder ``dest``: for libraries
    that read only local folders (diffusers' ``from_pretrained``)."""
    fs, root = fs_path(src)
    dest.mkdir(parents=True, exist_ok=True)
    pafs.copy_files(root, str(dest), source_filesystem=fs,
                    destination_filesystem=pafs.LocalFileSystem())
    return dest


def upload_dir(src: Path, dest: AnyPath, last: str | None = None) -> AnyPath:
    """Copy the local folder ``src`` into ``dest``, each file one whole-object put; the file
    ``last`` (its marker of completeness, e.g. ``meta.json``) goes after every other one, so a
    reader that checks it never finds a half-copied folder."""
    fs, root = fs_path(dest)
    files = sorted(p for p in src.rglob("*") if p.is_file())
    files.sort(key=lambda p: p.relative_to(src).as_posix() == last)
    for f in files:
        with fs.open_output_stream(f"{root}/{f.relative_to(src).as_posix()}") as out:
            out.write(f.read_bytes())
    return dest


def spec_path(folder: AnyPath | str) -> str | RemotePath:
    """A path for an actor's spec: a local one as a string (as specs always held), a run
    directory's ``RemotePath`` as itself (it carries its filesystem to the node)."""
    return folder if isinstance(folder, RemotePath) else str(folder)


_LOCAL_COPIES: dict[str, Path] = {}


def local_folder(folder: str | AnyPath) -> str | Path:
    """A folder an actor, trial or worker reads: a run directory's ``RemotePath`` (picklable,
    with its filesystem) is copied once per process into a local temporary folder; a local path
    or a model id is returned as it is."""
    if not isinstance(folder, RemotePath):
        return folder
    key = str(folder)
    if key not in _LOCAL_COPIES or not _LOCAL_COPIES[key].is_dir():
        import tempfile

        tmp = Path(tempfile.mkdtemp(prefix="raysynth-"))
        _LOCAL_COPIES[key] = download_dir(folder, tmp / folder.name)
    return _LOCAL_COPIES[key]
