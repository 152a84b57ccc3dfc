"""Folders between a node's local disk and the run directory's store: what an actor's spec
carries (:func:`spec_path`) and how it reads a folder a library can only open locally
(:func:`local_folder`)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.fs as pafs

from raysynth.storage.locations import fs_path
from raysynth.storage.remote import AnyPath, RemotePath, put


def download_dir(src: AnyPath, dest: Path) -> Path:
    """Copy the folder ``src`` (local or remote) into the local folder ``dest``: for libraries
    that read only local folders (diffusers' ``from_pretrained``)."""
    fs, root = fs_path(src)
    dest.mkdir(parents=True, exist_ok=True)
    pafs.copy_files(root, str(dest), source_filesystem=fs,
                    destination_filesystem=pafs.LocalFileSystem())
    return dest


def upload_dir(src: Path, dest: AnyPath, last: str | None = None) -> AnyPath:
    """Copy the local folder ``src`` into ``dest``, each file one checked whole-object put; the file
    ``last`` (its marker of completeness, e.g. ``meta.json``) goes after every other one, so a
    reader that checks it never finds a half-copied folder."""
    fs, root = fs_path(dest)
    files = sorted(p for p in src.rglob("*") if p.is_file())
    files.sort(key=lambda p: p.relative_to(src).as_posix() == last)
    for f in files:
        put(fs, f"{root}/{f.relative_to(src).as_posix()}", f.read_bytes())
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
