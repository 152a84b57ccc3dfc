"""Where a run lives: the one place a location string becomes a pyarrow ``FileSystem`` and a path.

A location is a local path (``runs/x``, ``~/runs/x``, ``file:///abs/x``: a ``pathlib.Path``, so
every local run reads and writes exactly as before) or a URI that ``pyarrow.fs.FileSystem.from_uri``
knows (``s3://``, ``gs://``, ``abfs://``, ``hdfs://``): a :class:`RemotePath`, the small Path-like
object the run directory hands out on shared storage (``/``, ``name``, ``parent``, ``exists``,
``is_file``, ``iterdir``, ``glob``, ``read_bytes``, ``open``). Endpoint and credentials come from
the standard environment (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, …) and from the URI's
query options (``s3://bucket/run?endpoint_override=…``); S3 keys found in the environment are
given to the filesystem explicitly, so a pickled ``RemotePath`` (or Train's storage filesystem)
signs its puts in a process whose environment has none. A string with a ``scheme://`` that
pyarrow does not know is an error, never a local folder named ``scheme:``.

Modules: ``locations.py`` (a location → ``Path`` / ``RemotePath``, ``fs_path``, ``ray_storage``),
``remote.py`` (``RemotePath``), ``copies.py`` (folders to and from a node's disk). ``RemotePath``
has no ``__fspath__``: code that would silently turn it into a local path fails
with a ``TypeError`` instead; readers take ``fs_path(p)`` (the filesystem and its path).
"""

from raysynth.storage.copies import download_dir, local_folder, spec_path, upload_dir
from raysynth.storage.locations import (
    KNOWN_SCHEMES,
    StorageError,
    as_path,
    fs_path,
    is_remote,
    local_or_remote,
    path,
    ray_storage,
    resolve,
    scheme,
)
from raysynth.storage.remote import AnyPath, RemotePath

__all__ = [
    "KNOWN_SCHEMES", "AnyPath", "RemotePath", "StorageError", "as_path", "download_dir",
    "fs_path", "is_remote", "local_folder", "local_or_remote", "path", "ray_storage", "resolve",
    "scheme", "spec_path", "upload_dir",
]
