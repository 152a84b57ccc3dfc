"""Which files make a Parquet dataset: the one lister (:func:`list_parquet`) every reader uses.

A dataset is a Parquet file, or a folder (local or a URI) searched recursively. Writers in
raysynth write under hidden temporary names and rename into place, and Ray Data and Spark leave
``_SUCCESS`` markers and ``_temporary`` folders, so names starting with ``.`` or ``_`` are never
part of a dataset.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.fs as pafs

from raysynth.errors import DataError
from raysynth.storage import is_remote, resolve


def list_parquet(path: str | Path) -> tuple[pafs.FileSystem, list[str]]:
    """The filesystem of ``path`` and the Parquet files that make the dataset there.

    ``path`` is a local path (``~`` expanded, resolved to an absolute path) or a URI. Which
    files count: ``path`` itself when it is a file, whatever its name; under a folder, searched
    recursively, every file whose name ends in ``.parquet`` unless a part of its path below the
    folder starts with ``.`` or ``_`` (hidden temporaries such as ``.part-x.parquet.123.tmp``,
    ``_SUCCESS``, ``_temporary/``), as Ray Data and Spark do. Folders themselves never count,
    whatever their name. The files come sorted as strings; a folder with none gives ``[]``.
    Raises :class:`DataError` when ``path`` does not exist.
    """
    text = str(path)
    if is_remote(path):  # s3://… or a run directory's RemotePath (an unknown scheme: an error)
        fs, root = resolve(path)
    else:
        fs, root = pafs.LocalFileSystem(), str(Path(text.removeprefix("file://")).expanduser()
                                              .resolve())
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"{text} does not exist; give a Parquet file or a folder of them")
    if info.type == pafs.FileType.File:
        return fs, [root]
    found = []
    for entry in fs.get_file_info(pafs.FileSelector(root, recursive=True)):
        rel = entry.path[len(root) :].strip("/").split("/")
        hidden = any(part.startswith((".", "_")) for part in rel)
        if entry.type == pafs.FileType.File and entry.path.endswith(".parquet") and not hidden:
            found.append(entry.path)
    return fs, sorted(found)


def require_parquet(path: str | Path) -> tuple[pafs.FileSystem, list[str]]:
    """:func:`list_parquet` for a dataset someone named: a folder with none is a DataError."""
    fs, files = list_parquet(path)
    if not files:
        raise DataError(f"{path} holds no .parquet files")
    return fs, files
