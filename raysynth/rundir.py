"""The run directory: resolved config, provenance, and where every stage writes (DESIGN §4).

``config.yaml`` (resolved config), ``meta.json`` (package version, git revision, seed, format
version), ``run.log``, ``real/``, ``synthetic/``, ``generator/``, ``tune/``, ``train/``,
``report.json`` / ``report.md`` / ``report.html``.
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
from raysynth.errors import RunDirError
from raysynth.files import atomic_write_text
from raysynth.text import PrintableFilter

# Bumped when the on-disk layout changes incompatibly; a run directory of another format is
# refused rather than half-read.
FORMAT_VERSION = 1

# The names of what a run directory holds (the RunDir properties below join them to its root;
# modules that only read a run directory, like the report, use them directly).
CONFIG_YAML = "config.yaml"
META_JSON = "meta.json"
RUN_LOG = "run.log"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
SYNTHESIS_JSON = "synthesis.json"
SAMPLES_PNG = "samples.png"
REAL = "real"
SYNTHETIC = "synthetic"
GENERATOR = "generator"
TUNE = "tune"
TRAIN = "train"
AIR = "air"


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

    # Paths: every file and folder the run writes, by name ---------------------------------------
    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_YAML

    @property
    def meta_path(self) -> Path:
        return self.root / META_JSON

    @property
    def report_path(self) -> Path:
        return self.root / REPORT_JSON

    @property
    def report_md(self) -> Path:
        return self.root / REPORT_MD

    @property
    def log_path(self) -> Path:
        return self.root / RUN_LOG

    @property
    def synthesis_path(self) -> Path:
        """The synthesis stage's summary (report.json's ``synthesis`` section)."""
        return self.root / SYNTHESIS_JSON

    @property
    def real(self) -> Path:
        """``real/``: the real splits (written by ``raysynth.data.store``)."""
        return self.sub(REAL)

    @property
    def real_embeddings(self) -> Path:
        """The filter's embeddings of the real train images."""
        return self.real / "embeddings.npz"

    @property
    def synthetic(self) -> Path:
        """``synthetic/``: the synthetic table, one folder of Parquet parts per round."""
        return self.sub(SYNTHETIC)

    @property
    def samples_png(self) -> Path:
        return self.root / SAMPLES_PNG

    @property
    def generator(self) -> Path:
        """``generator/``: the pixel model raysynth trains, cached by a hash of data and config."""
        return self.sub(GENERATOR)

    @property
    def tune(self) -> Path:
        """``tune/``: the weight search (trials, ledger, summary)."""
        return self.sub(TUNE)

    @property
    def tune_summary(self) -> Path:
        return self.tune / "summary.json"

    @property
    def train(self) -> Path:
        """``train/``: Ray Train's storage, the real-split classifier and the final models."""
        return self.sub(TRAIN)

    @property
    def real_classifier(self) -> Path:
        return self.train / "real_classifier"

    @property
    def air(self) -> Path:
        """``air/``: the AiR flow's embeddings, adapter, prompt and summary."""
        return self.sub(AIR)

    def sub(self, name: str) -> Path:
        """The folder ``name`` of the run (created)."""
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

    def attach_log(self) -> logging.Handler:
        """Log raysynth's messages to ``run.log`` as well (returns the handler to detach)."""
        self.root.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(self.log_path)
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
