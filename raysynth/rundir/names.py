"""The names of what a run directory holds (the ``RunDir`` properties join them to its root;
modules that only read a run directory, like the report, use them directly), and which of them
each stage of the stage ledger owns."""

from __future__ import annotations

# Bumped when the on-disk layout changes incompatibly; a run directory of another format is
# refused rather than half-read.
FORMAT_VERSION = 1

MARKER = ".raysynth-run"
STAGES_JSON = "stages.json"
STALE = "stale"
CONFIG_YAML = "config.yaml"
META_JSON = "meta.json"
RUN_LOG = "run.log"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
SYNTHESIS_JSON = "synthesis.json"
ALLOCATION_JSONL = "allocation.jsonl"  # the closed loop's per-round measurements + decisions
SAMPLES_PNG = "samples.png"
REAL = "real"
SYNTHETIC = "synthetic"
GENERATOR = "generator"
TUNE = "tune"
TRAIN = "train"
AIR = "air"

# Ray Train's own folder of the real-split classifier's run (under train/), apart from the model
# folder train/real_classifier: a model written over Ray Train's folder removes the marker file
# its workers check before they report (with train.num_workers >= 1)
REAL_CLASSIFIER_RUN = "real_classifier.run"

# The outputs of each stage of the ledger (``stages.json``; which config sections each depends on:
# ``raysynth.config.stages``), relative to the run directory.
_FINAL_RUNS = tuple(f"{TRAIN}/{m}-r*" for m in
                    ("supcon_real", "supcon_mixed", "unicon", "real_only", "with_synthetic"))
STAGE_OUTPUTS: dict[str, tuple[str, ...]] = {
    "data": (REAL,),
    "real_classifier": (f"{TRAIN}/real_classifier", f"{TRAIN}/real_classifier.ckpt",
                        f"{TRAIN}/{REAL_CLASSIFIER_RUN}"),
    "synthesis": (SYNTHETIC, SYNTHESIS_JSON, SAMPLES_PNG, f"{REAL}/embeddings.npz",
                  ALLOCATION_JSONL),
    "search": (TUNE,),
    "final": _FINAL_RUNS,
    "pseudo_labels": tuple(f"{AIR}/{s}.npz" for s in ("unlabeled", "val", "test")),
    "lora": (f"{AIR}/lora", f"{AIR}/lora-checkpoint"),
    "prompt": (f"{AIR}/synthetic.npz", f"{AIR}/prompt", f"{AIR}/search.json",
               f"{AIR}/summary.json", TUNE),
    "report": (REPORT_JSON, REPORT_MD, REPORT_HTML),
}
