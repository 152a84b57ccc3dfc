"""The run directory: resolved config, provenance, and where every stage writes (DESIGN §4).

``.raysynth-run`` (the marker, written first: this folder is a run directory, and its format),
``config.yaml`` (resolved config), ``meta.json`` (version, git revision, seed, format version),
``stages.json`` (the stage ledger: the hash of the config sections each cached stage was computed
under, ``raysynth.config.stages``), ``run.log``, ``real/``, ``synthetic/``, ``generator/``,
``tune/``, ``train/``, ``air/``, ``models/``, ``report.*``; ``stale/<time>/``: invalidated outputs.
"""

from __future__ import annotations

import json
import logging
import subprocess
import time
from pathlib import Path
from typing import Any

from raysynth import __version__
from raysynth.config import RunConfig, dump_yaml, load_resolved, to_dict
from raysynth.errors import RaysynthError, RunDirError
from raysynth.files import atomic_write_json, atomic_write_text
from raysynth.rundir import ledger
from raysynth.rundir.log import ObjectLogHandler
from raysynth.rundir.names import (  # noqa: F401 (the names every reader imports from here)
    AIR,
    CONFIG_YAML,
    FORMAT_VERSION,
    GENERATOR,
    MARKER,
    META_JSON,
    REAL,
    REPORT_HTML,
    REPORT_JSON,
    REPORT_MD,
    RUN_LOG,
    SAMPLES_PNG,
    STAGE_OUTPUTS,
    STAGES_JSON,
    STALE,
    SYNTHESIS_JSON,
    SYNTHETIC,
    TRAIN,
    TUNE,
)
from raysynth.storage import AnyPath, RemotePath, local_or_remote
from raysynth.text import PrintableFilter

log = logging.getLogger("raysynth.rundir")

def git_revision() -> str | None:
    """The git revision of the raysynth source tree, when it is a checkout."""
    src = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


class RunDir:
    """A run directory: a local folder (``Path``) or a folder on a pyarrow filesystem
    (``s3://bucket/run`` …: a ``raysynth.storage.RemotePath``); every path below is of that kind."""

    def __init__(self, root: str | Path | RemotePath) -> None:
        self.root: AnyPath = local_or_remote(root)
        self.cfg: RunConfig | None = None  # set by init; the stage ledger hashes it

    # Paths: every file and folder the run writes, by name ---------------------------------------
    @property
    def config_path(self) -> AnyPath:
        return self.root / CONFIG_YAML

    @property
    def meta_path(self) -> AnyPath:
        return self.root / META_JSON

    @property
    def report_path(self) -> AnyPath:
        return self.root / REPORT_JSON

    @property
    def report_md(self) -> AnyPath:
        return self.root / REPORT_MD

    @property
    def log_path(self) -> AnyPath:
        return self.root / RUN_LOG

    @property
    def synthesis_path(self) -> AnyPath:
        """The synthesis stage's summary (report.json's ``synthesis`` section)."""
        return self.root / SYNTHESIS_JSON

    @property
    def real(self) -> AnyPath:
        """``real/``: the real splits (written by ``raysynth.data.store``)."""
        return self.sub(REAL)

    real_embeddings = property(lambda self: self.real / "embeddings.npz",
                               doc="The filter's embeddings of the real train images.")
    real_parts = property(lambda self: self.real / "_parts", doc="real/_parts/: the streamed "
                          "data stage's Parquet parts, merged into the splits, then removed")

    @property
    def synthetic(self) -> AnyPath:
        """``synthetic/``: the synthetic table, one folder of Parquet parts per round."""
        return self.sub(SYNTHETIC)

    @property
    def samples_png(self) -> AnyPath:
        return self.root / SAMPLES_PNG

    @property
    def generator(self) -> AnyPath:
        """``generator/``: the pixel model raysynth trains, cached by a hash of data and config."""
        return self.sub(GENERATOR)

    @property
    def tune(self) -> AnyPath:
        """``tune/``: the weight search (trials, ledger, summary)."""
        return self.sub(TUNE)

    tune_summary = property(lambda self: self.tune / "summary.json", doc="tune/summary.json")

    @property
    def train(self) -> AnyPath:
        """``train/``: Ray Train's storage, the real-split classifier and the final models."""
        return self.sub(TRAIN)

    @property
    def real_classifier(self) -> AnyPath:
        return self.train / "real_classifier"

    @property
    def air(self) -> AnyPath:
        """``air/``: the AiR flow's embeddings, adapter, prompt and summary."""
        return self.sub(AIR)

    models = property(lambda self: self.root / "models", doc="the default model store (models/)")

    def sub(self, name: str) -> AnyPath:
        """The folder ``name`` of the run (created)."""
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def marker_path(self) -> AnyPath:
        return self.root / MARKER

    @property
    def stages_path(self) -> AnyPath:
        return self.root / STAGES_JSON

    # Lifecycle --------------------------------------------------------------------------------
    def exists(self) -> bool:
        """Whether the folder holds a run: its marker, or (a run of before the marker, or one
        whose marker was deleted) its ``meta.json``."""
        return self.marker_path.is_file() or self.meta_path.is_file()

    def check_target(self, resume: bool = False) -> None:
        """Refuse, before anything is written: a folder that is neither empty nor a run, a run
        of another format, a run without ``resume``."""
        if not self.exists():
            if self.root.exists() and (not self.root.is_dir() or any(self.root.iterdir())):
                raise RunDirError(
                    f"{self.root} is not empty and is not a raysynth run directory (it has no "
                    f"{MARKER} or {META_JSON}); nothing was written. Give --out a new or empty "
                    "folder (e.g. runs/<name>)"
                )
            return
        fmt = self._format()
        if fmt != FORMAT_VERSION:
            raise RunDirError(
                f"{self.root} was written in run-directory format {fmt} (raysynth "
                f"{self._meta_version()}); this is raysynth {__version__} (format "
                f"{FORMAT_VERSION}). Start a new run directory with --out."
            )
        if not resume:
            raise RunDirError(
                f"{self.root} already holds a run; pass --resume to continue it or choose "
                "another --out"
            )

    def init(self, cfg: RunConfig, resume: bool = False, allow_changes: bool = True) -> None:
        """Create the directory (marker first), or check that an existing one may be continued.

        A directory that already holds a run is only reused with ``resume=True``. A changed config
        is then written to ``config.yaml`` and every stage whose sections changed is set aside
        (:meth:`stage`); with ``allow_changes=False`` any change is refused instead.
        """
        self.cfg = cfg
        self.check_target(resume)
        if not self.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.marker_path, {"raysynth_run": True, "format": FORMAT_VERSION})
            atomic_write_json(self.stages_path, {})
            self._write_config(cfg)
            return
        changed = self._changed_keys(cfg)
        if changed and not allow_changes:
            raise RunDirError(
                f"--resume: the config differs from the one {self.root} was started with "
                f"(keys: {', '.join(changed)}); resume with the same settings or use a new --out"
            )
        if not self.marker_path.is_file():  # a run of before the marker: its config is the ledger
            atomic_write_json(self.marker_path, {"raysynth_run": True, "format": FORMAT_VERSION})
            if not self.stages_path.is_file() and not changed:
                atomic_write_json(self.stages_path, ledger.adopted(self.root, cfg))
        redone = ledger.sweep(self.root, cfg)
        if changed or redone or not self.meta_path.is_file():
            if changed:
                log.warning("--resume with a changed config (keys: %s); stages redone: %s",
                            ", ".join(changed), ", ".join(redone) or "none")
            self._write_config(cfg, keep_created=True)

    def stage(self, name: str) -> None:
        """Stage ``name`` is about to compute or read its outputs under the run's config: the one
        check of every cached stage. Its outputs recorded under other values of its sections (or
        not recorded at all) are moved into ``stale/<time>/``; then its hash is recorded."""
        if self.cfg is None:
            raise RunDirError(f"RunDir.stage({name!r}) before RunDir.init")
        ledger.sweep(self.root, self.cfg, [name])
        ledger.record(self.root, name, self.cfg)

    def _format(self) -> Any:
        for path in (self.marker_path, self.meta_path):
            try:
                return json.loads(path.read_text()).get("format")
            except (OSError, json.JSONDecodeError, AttributeError):
                continue
        return "unknown"

    def _meta_version(self) -> str:
        try:
            return str(json.loads(self.meta_path.read_text()).get("version", "?"))
        except (OSError, json.JSONDecodeError, AttributeError):
            return "?"

    def _changed_keys(self, cfg: RunConfig) -> list[str]:
        try:
            old = to_dict(load_resolved(self.config_path))
        except (OSError, RaysynthError, ValueError, TypeError):
            return ["config.yaml (missing or unreadable)"]
        return sorted(_diff_keys(old, to_dict(cfg)))

    def _write_config(self, cfg: RunConfig, keep_created: bool = False) -> None:
        """``config.yaml`` and ``meta.json`` (its creation time kept on a resume)."""
        atomic_write_text(self.config_path, dump_yaml(cfg))
        created = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        if keep_created and self.meta_path.is_file():
            created = self.read_meta().get("created", created)
        meta = {
            "version": __version__,
            "format": FORMAT_VERSION,
            "git_revision": git_revision(),
            "seed": cfg.seed,
            "preset": cfg.preset,
            "created": created,
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

    def attach_log(self) -> logging.Handler:
        """Log raysynth's messages to ``run.log`` as well (returns the handler to detach)."""
        self.root.mkdir(parents=True, exist_ok=True)
        handler: logging.Handler = (  # no appends on an object store: re-put whole
            ObjectLogHandler(self.log_path) if isinstance(self.log_path, RemotePath)
            else logging.FileHandler(self.log_path))
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.addFilter(PrintableFilter())  # a class or file name cannot forge a log line
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
