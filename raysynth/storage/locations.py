"""Locations: a local path or a URI → a ``Path`` or a ``RemotePath`` (the package docstring)."""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from raysynth.storage.remote import RemotePath, StorageError

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# The URI schemes pyarrow.fs.FileSystem.from_uri resolves (Arrow 26).
KNOWN_SCHEMES = ("file", "local", "s3", "gs", "gcs", "abfs", "abfss", "hdfs", "viewfs")


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


def _env_credentials() -> tuple[str, str, str | None] | None:
    """The S3 keys of this process's environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
    ``AWS_SESSION_TOKEN``), or None."""
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    return (key, secret, os.environ.get("AWS_SESSION_TOKEN") or None) if key and secret else None


def _filesystem(uri_root: str) -> pafs.FileSystem:
    return _from_uri(uri_root, _env_credentials() if scheme(uri_root) == "s3" else None)


@functools.lru_cache(maxsize=32)
def _from_uri(uri_root: str, keys: tuple[str, str, str | None] | None) -> pafs.FileSystem:
    try:
        fs = pafs.FileSystem.from_uri(uri_root)[0]
    except (ValueError, OSError, ImportError) as e:
        raise StorageError(f"cannot open the filesystem of {uri_root!r}: {e}") from e
    return _with_keys(fs, keys) if keys and isinstance(fs, pafs.S3FileSystem) else fs


def _with_keys(fs: pafs.S3FileSystem, keys: tuple[str, str, str | None]) -> pafs.S3FileSystem:
    """``fs`` with the environment's keys given explicitly, so they travel when it is pickled
    (into an actor's spec, Ray Train's ``storage_filesystem``): pyarrow pickles only explicit
    keys, and a process without them in its environment (a worker node, a Ray started before
    they were set) would put unsigned. Keys the URI gives, anonymous access or a role to assume
    are kept as they are; keys from a profile, the instance or a web identity stay each node's
    own (they refresh there)."""
    opts = fs.__reduce__()[1][0]  # the options pyarrow itself rebuilds the filesystem from
    if opts["access_key"] or opts["anonymous"] or opts["role_arn"]:
        return fs
    key, secret, token = keys
    return pafs.S3FileSystem(**{**opts, "access_key": key, "secret_key": secret,
                                "session_token": token})


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
    fs = _filesystem(f"{sch}://{netloc}" + (f"?{query}" if query else ""))
    fs_path_ = pafs.FileSystem.from_uri(base)[1] if sch not in ("s3", "gs", "gcs") else rest
    return RemotePath(fs, fs_path_.rstrip("/"), sch)


