"""The run directory: resolved config, provenance, and where every stage writes (DESIGN §4).

``config.yaml`` (resolved config), ``meta.json`` (package version, git revision, seed, format
version), ``run.log``, ``real/``, ``synthetic/``, ``generator/``, ``tune/``, ``train/``,
``report.json`` / ``report.md`` / ``report.html``.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from raysynth import __version__
from raysynth.config import RunConfig, dump_yaml, load_resolved, to_dict
from raysynth.errors import RunDirError

# Bumped when the on-disk layout changes incompatibly; a run directory of another format is
# refused rather than half-read.
FORMAT_VERSION = 1


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file + rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def git_revision() -> str | None:
    """The git revision of the raysynth source tree, when it is a checkout."""
    src = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


class RunDir:
    """A run directory on local disk."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()

    # Paths ------------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def meta_path(self) -> Path:
        return self.root / "meta.json"

    @property
    def report_path(self) -> Path:
        return self.root / "report.json"

    def sub(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    # Lifecycle --------------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.meta_path.is_file()

    def init(self, cfg: RunConfig, resume: bool = False) -> None:
        """Create the directory, or check that an existing one may be continued.

        A directory that already holds a run is only reused with ``resume=True`` and the same
        resolved config; one written by an incompatible format version is refused.
        """
        if self.exists():
            meta = self.read_meta()
            if meta.get("format") != FORMAT_VERSION:
                raise RunDirError(
                    f"{self.root} was written by raysynth {meta.get('version', '?')} (run-directory "
                    f"format {meta.get('format', '?')}); this is raysynth {__version__} (format "
                    f"{FORMAT_VERSION}). Start a new run directory with --out."
                )
            if not resume:
                raise RunDirError(
                    f"{self.root} already holds a run; pass --resume to continue it or choose "
                    "another --out"
                )
            old = to_dict(load_resolved(self.config_path))
            new = to_dict(cfg)
            changed = sorted(_diff_keys(old, new))
            if changed:
                raise RunDirError(
                    f"--resume: the config differs from the one {self.root} was started with "
                    f"(keys: {', '.join(changed)}); resume with the same settings or use a new --out"
                )
            return
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.config_path, dump_yaml(cfg))
        meta = {
            "version": __version__,
            "format": FORMAT_VERSION,
            "git_revision": git_revision(),
            "seed": cfg.seed,
            "preset": cfg.preset,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        atomic_write_text(self.meta_path, json.dumps(meta, indent=2))

    def read_meta(self) -> dict[str, Any]:
        try:
            return json.loads(self.meta_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise RunDirError(f"{self.meta_path} is unreadable ({e}); start a new run directory") from e

    def config(self) -> RunConfig:
        if not self.config_path.is_file():
            raise RunDirError(f"{self.root} has no config.yaml; is it a raysynth run directory?")
        return load_resolved(self.config_path)

    def write_json(self, name: str, data: Any) -> Path:
        path = self.root / name
        atomic_write_text(path, json.dumps(data, indent=2, default=_json_default))
        return path

    def read_json(self, name: str) -> Any:
        path = self.root / name
        return json.loads(path.read_text()) if path.is_file() else None

    def attach_log(self) -> logging.Handler:
        """Log raysynth's messages to ``run.log`` as well (returns the handler to detach)."""
        self.root.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(self.root / "run.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger = logging.getLogger("raysynth")
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        return handler


def _diff_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out.extend(_diff_keys(va, vb, f"{prefix}{key}."))
        elif va != vb:
            out.append(f"{prefix}{key}")
    return out


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
