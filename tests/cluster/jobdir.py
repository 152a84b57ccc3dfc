"""The folder a cluster test submits as the job's working_dir: the raysynth package of this
checkout, the tiny models of tests/tiny_models.py, a small image folder, and the recipes.

Two ways a worker node gets a model here, as on a real cluster:
- the text-to-image SD pipeline and the CLIP model travel in the working_dir: Ray uploads it to the
  GCS and every node unpacks its own copy (the cwd of the job's driver and of every actor, trial
  and Train worker), so the recipes name them by relative paths (``./models/sd``). The generator's
  folder is published to the model store all the same (the driver's absolute path is not on the
  workers), and each worker copies it from there;
- the unCLIP pipeline is only in the head's Hugging Face cache, under a hub id (``UNCLIP_ID``, as
  ``hf download`` leaves it; the nodes run with HF_HUB_OFFLINE=1): the driver resolves it there and
  publishes it to the model store in the bucket (``synthesis.generator.model_store`` empty: the run
  directory's ``models/``), and each worker copies it into its own, empty HF_HOME.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import yaml
from tiny_models import hub_cache, png, save_clip, save_sd, unclip_pipeline

REPO = Path(__file__).resolve().parents[2]
CLASSES = ("blue", "green", "red")
UNCLIP_ID = "tiny-test/unclip"
UNCLIP_COMMIT = "c" * 40

# A text-to-image UniCon recipe on tiny models: feedback guidance from the real-split classifier,
# the CLIP filter, a 2-trial weight search, and every Ray Train run on 2 workers.
TEXT2IMAGE = {
    "preset": "cluster-t2i",
    "data": {"source": "imagefolder", "path": "./data/images", "image_size": 16, "k": 6,
             "pool_per_class": 4, "val_per_class": 2, "test_per_class": 3},
    "synthesis": {
        "quota": "fixed", "per_class": 2, "prompt": "{class}",
        "pool": {"batch_size": 3, "cpus_per_actor": 0.5, "gpus_per_actor": 1.0},
        # the workers' GPUs are logical (no CUDA here): an actor given one fails loudly with
        # device auto, so the recipe says cpu explicitly (tests/unit/test_devices.py)
        "generator": {"kind": "text2image", "model": "./models/sd", "num_steps": 2,
                      "image_size": 16, "device": "cpu"},
        "feedback": {"criterion": "entropy", "scale": 0.05, "every": 1},
    },
    # the CLIP filter runs (embedder actors on the workers) but accepts every image (cosine >= -1):
    # a random tiny CLIP rejects them all, and the search and final training are to read
    # synthetic rows from the bucket
    "filter": {"enabled": True, "embedder": "open_clip", "clip_model": "local-dir:./models/clip",
               "clip_pretrained": "", "max_rounds": 1, "pairs": 4, "threshold": "fixed",
               "fixed_threshold": -1.0,
               "pool": {"batch_size": 8, "cpus_per_actor": 0.5}},
    # the real-split classifier (feedback guidance): 3 epochs, not end_to_end's 60 (with a Ray
    # Train checkpoint per epoch put in the bucket, that stage took 147 s at load ~13)
    "end_to_end": {"epochs": 3, "batch_size": 8},
    "encoder": {"arch": "small_cnn", "width": 4, "feat_dim": 8, "proj_dim": 8, "epochs": 2,
                "batch_size": 8},
    "classifier": {"hidden": 8, "epochs": 3, "per_class": 4, "batch_size": 8},
    "protocol": {"n_contr": 1, "n_classif": 1},
    "tune": {"num_samples": 2, "n_initial_points": 1, "max_concurrent": 2, "warm_start": False},
    # max_failures 0: a Train run that cannot work (e.g. on a head-local storage path) fails at
    # once instead of being retried twice; no test here kills a Train worker
    "train": {"num_workers": 2, "cpus_per_worker": 1.0, "checkpoint_every": 1, "max_failures": 0},
}


# AiR on the same tiny models (tests/ray/test_air_flow.py's recipe, one prompt-learning iteration,
# no λ/β search): pseudo-labels by the CLIP on an actor pool, a LoRA adapter, generation with it.
AIR = {
    "flow": "air", "preset": "cluster-air",
    "data": {"source": "imagefolder", "path": "./data/images", "image_size": 32, "k": 6,
             "pool_per_class": 0, "val_per_class": 2, "test_per_class": 3},
    "synthesis": {"quota": "fixed", "per_class": 2, "prompt": "{context} {class}",
                  "context": "colors",
                  "pool": {"batch_size": 3, "cpus_per_actor": 0.5, "gpus_per_actor": 1.0},
                  "generator": {"kind": "text2image", "model": "./models/sd", "num_steps": 2,
                                "image_size": 32, "device": "cpu"}},
    "filter": {"device": "cpu", "pool": {"batch_size": 8, "cpus_per_actor": 0.5}},
    "air": {"clip_model": "local-dir:./models/clip", "clip_pretrained": "", "top_k": 3,
            "lora": {"steps": 4, "batch_size": 2}, "iterations": 1, "steps_per_iteration": 3,
            "n_ctx": 4},
}

# unCLIP synthesis (`raysynth synthesize`), conditioned on the real images: one image per batch
# and 20 steps each, so the generator actors are still sampling when a node is removed.
UNCLIP = {
    "preset": "cluster-unclip",
    "data": TEXT2IMAGE["data"],
    "synthesis": {"quota": "fixed", "per_class": 6, "prompt": "{class}",
                  "pool": {"batch_size": 1, "cpus_per_actor": 0.5, "gpus_per_actor": 1.0},
                  "generator": {"kind": "unclip", "model": UNCLIP_ID, "num_steps": 20,
                                "image_size": 16, "device": "cpu"}},
    "filter": {"enabled": False},
}


def _images(root: Path, per_class: int = 15) -> None:
    """Noisy 16×16 images whose dominant colour is their class."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(0, 90, (16, 16, 3), dtype=np.uint8)
            img[..., 2 - c] += 150
            (root / name / f"{i}.png").write_bytes(png(img))


def make_job_dir(folder: Path, hf_home: Path) -> Path:
    """The working dir in ``folder``; the unCLIP pipeline in the head's HF cache ``hf_home``."""
    import torch

    torch.manual_seed(0)
    hub_cache(hf_home, UNCLIP_ID, UNCLIP_COMMIT, unclip_pipeline())
    folder.mkdir(parents=True)
    shutil.copytree(REPO / "raysynth", folder / "raysynth",
                    ignore=shutil.ignore_patterns("__pycache__"))
    save_sd(folder / "models" / "sd")
    save_clip(folder / "models" / "clip", seed=3)
    _images(folder / "data" / "images")
    write_recipe(folder, "t2i.yaml", TEXT2IMAGE)
    write_recipe(folder, "air.yaml", AIR)
    write_recipe(folder, "unclip.yaml", UNCLIP)
    return folder


def write_recipe(folder: Path, name: str, recipe: dict) -> None:
    (folder / name).write_text(yaml.safe_dump(recipe))
