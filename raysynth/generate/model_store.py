"""One copy of each model for the whole cluster, and one local copy per node.

The driver resolves a model to a local folder (:func:`raysynth.generate.model_source.resolve_model`)
and :func:`publish` copies it once into the model store — a folder or URI every node can read
(``synthesis.generator.model_store``; by default the run directory's ``models/``), written with
``pyarrow.fs`` so that ``s3://`` / ``gs://`` stores work as local ones. Each actor then calls
:func:`local_copy`: a node whose Hugging Face cache already holds the snapshot (or that sees the
driver's local folder) copies nothing; any other node copies the store's files once into its
local cache, under a file lock, so that the actors of one node share one copy and never ask the
hub. Store layout: ``<store>/<key>/<revision>/`` with the model's files and ``manifest.json``,
written last (a copy without it is incomplete and redone).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raysynth.errors import ConfigError

log = logging.getLogger("raysynth.generate")

MANIFEST = "manifest.json"
COMPLETE = ".raysynth-complete"
LOCK_TIMEOUT_S = 3600  # another actor of this node copying a 5 GB model


@dataclass(frozen=True)
class ModelRef:
    """A resolved model as it travels to the actors (small, picklable): the configured ``model``,
    its ``revision`` (the hub commit, or a hash of a local folder's files), the ``source`` folder
    on the driver's machine, the ``store`` folder/URI of its copy ('' = none) and its files."""

    model: str
    revision: str
    source: str
    store: str
    files: tuple[tuple[str, int], ...]

    @property
    def key(self) -> str:
        return store_key(self.model)


def store_key(model: str) -> str:
    """A folder name for ``model``: ``org--name`` for a hub id, ``local--<name>`` for a folder."""
    if model.startswith(("/", ".", "~")) or model.count("/") > 1:
        return "local--" + re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model).name or "model")
    return re.sub(r"[^A-Za-z0-9._-]+", "--", model.strip("/"))


def list_files(folder: Path) -> tuple[tuple[str, int], ...]:
    """Every file under ``folder`` (symlinks followed, as in a Hugging Face snapshot), relative
    path and size, sorted."""
    out = []
    for root, _dirs, names in os.walk(folder, followlinks=True):
        for name in names:
            path = Path(root) / name
            if name in (MANIFEST, COMPLETE) or name.startswith(".") and root == str(folder):
                continue
            out.append((path.relative_to(folder).as_posix(), path.stat().st_size))
    return tuple(sorted(out))


def revision_of(folder: Path, files: tuple[tuple[str, int], ...]) -> str:
    """The hub commit of a cached snapshot (``…/snapshots/<commit>``), else a hash of the files
    and their sizes and modification times."""
    if folder.parent.name == "snapshots" and re.fullmatch(r"[0-9a-f]{40}", folder.name):
        return folder.name
    h = hashlib.sha256()
    for rel, size in files:
        h.update(f"{rel}\0{size}\0{(folder / rel).stat().st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _fs(uri: str):
    from raysynth.storage import fs_path  # one place a location becomes a filesystem

    return fs_path(uri)


def publish(model: str, folder: Path, store: str) -> ModelRef:
    """Copy ``folder`` (the resolved ``model``) into ``store`` unless the store already has this
    revision; returns the :class:`ModelRef` the actors get. ``store=''``: no copy (every node
    must see ``folder`` itself: one machine, or a shared disk)."""
    folder = Path(folder)
    files = list_files(folder)
    ref = ModelRef(model, revision_of(folder, files), str(folder), store, files)
    if not store:
        return ref
    import pyarrow.fs as pafs

    fs, base = _fs(store)
    dest = f"{base.rstrip('/')}/{ref.key}/{ref.revision}"
    if fs.get_file_info(f"{dest}/{MANIFEST}").type == pafs.FileType.File:
        return ref
    local = isinstance(fs, pafs.LocalFileSystem)
    target = f"{dest}.tmp-{uuid.uuid4().hex[:8]}" if local else dest
    fs.create_dir(target, recursive=True)
    for parent in sorted({str(Path(rel).parent) for rel, _ in files} - {"."}):
        fs.create_dir(f"{target}/{parent}", recursive=True)
    for rel, _size in files:  # one by one: pyarrow's copy_files does not follow symlinks
        pafs.copy_files(str(folder / rel), f"{target}/{rel}", destination_filesystem=fs)
    with fs.open_output_stream(f"{target}/{MANIFEST}") as f:  # written last: the copy is whole
        f.write(json.dumps({"model": model, "revision": ref.revision, "files": files}).encode())
    if local:
        try:
            os.replace(target, dest)
        except OSError:  # another driver published the same revision meanwhile
            shutil.rmtree(target, ignore_errors=True)
    return ref


def publish_model(g: Any, default_store: str) -> ModelRef | None:
    """The model of generator config ``g`` resolved on this (the driver's) machine and published
    to ``g.model_store`` (``default_store`` when empty); None for the pixel model."""
    from raysynth.generate.single_file import is_single_file

    if g.kind not in ("text2image", "unclip") or is_single_file(g.model):
        return None  # a single-file checkpoint is read from its path (a volume every node mounts)
    from raysynth.generate.model_source import resolve_model

    store = g.model_store or default_store
    ref = publish(g.model, resolve_model(g.model), store)
    log.info("model %s (revision %s) in the model store %s", g.model, ref.revision, store)
    return ref


def cache_root() -> Path:
    """This node's local model cache: ``$RAYSYNTH_MODEL_CACHE``, else ``$HF_HOME/raysynth-models``
    (``~/.cache/huggingface`` when HF_HOME is unset)."""
    root = os.environ.get("RAYSYNTH_MODEL_CACHE")
    if root:
        return Path(root).expanduser()
    hf_home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface"
    )
    return Path(hf_home).expanduser() / "raysynth-models"


def _hub_snapshot(ref: ModelRef) -> Path | None:
    """This node's own Hugging Face cache snapshot of ``ref`` (HF_HOME as this process sees it)."""
    if ref.key.startswith("local--"):
        return None
    hf_home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface"
    )
    hub = os.environ.get("HF_HUB_CACHE") or os.path.join(hf_home, "hub")
    folder = f"models--{ref.model.replace('/', '--')}"
    return Path(hub).expanduser() / folder / "snapshots" / ref.revision


def _complete(folder: Path | None, files: tuple[tuple[str, int], ...]) -> bool:
    if folder is None or not folder.is_dir():
        return False
    return all(
        (folder / rel).is_file() and (folder / rel).stat().st_size == size for rel, size in files
    )


def local_copy(ref: ModelRef) -> tuple[Path, int]:
    """The folder this node loads ``ref`` from, and the bytes copied to get it (0 when the node
    already had it): the driver's folder when this node sees it whole (same machine, shared
    disk), this node's Hugging Face cache snapshot, or its copy of the store in
    :func:`cache_root` — made now, once per node, under a file lock."""
    for folder in (Path(ref.source) if ref.key.startswith("local--") else None, _hub_snapshot(ref)):
        if _complete(folder, ref.files):
            return Path(folder), 0
    dest = cache_root() / ref.key / ref.revision
    if (dest / COMPLETE).is_file():
        return dest, 0
    if not ref.store:
        raise ConfigError(
            f"synthesis.generator.model={ref.model!r} is not on this node (looked in "
            f"{ref.source} and {dest}) and there is no model store to copy it from; set "
            "synthesis.generator.model_store to a folder or URI every node can read"
        )
    from filelock import FileLock

    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest) + ".lock", timeout=LOCK_TIMEOUT_S):
        if (dest / COMPLETE).is_file():  # another actor of this node copied it meanwhile
            return dest, 0
        return dest, _copy_from_store(ref, dest)


def _copy_from_store(ref: ModelRef, dest: Path) -> int:
    import pyarrow.fs as pafs

    fs, base = _fs(ref.store)
    src = f"{base.rstrip('/')}/{ref.key}/{ref.revision}"
    if fs.get_file_info(f"{src}/{MANIFEST}").type != pafs.FileType.File:
        raise ConfigError(
            f"the model store {ref.store!r} has no complete copy of {ref.model!r} at {src}; the "
            "driver publishes it before the actors start — is the store readable from this node?"
        )
    tmp = dest.with_name(f"{dest.name}.tmp-{uuid.uuid4().hex[:8]}")
    shutil.rmtree(dest, ignore_errors=True)  # an incomplete earlier copy (no marker)
    try:
        pafs.copy_files(src, str(tmp), source_filesystem=fs)
        if not _complete(tmp, ref.files):
            raise ConfigError(
                f"the model store's copy of {ref.model!r} at {src} does not match the driver's "
                "files (sizes differ); delete it so that the next run publishes it again"
            )
        (tmp / COMPLETE).write_text(ref.revision)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return sum(size for _rel, size in ref.files)
