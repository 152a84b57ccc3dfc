"""Plan → generate → filter rounds (DESIGN §1, METHODS §3).

Round 0 plans each class's quota. After each round the accepted images are counted per class
and every class short of its quota gets a new round of rows (new ``sample_id``s and seeds, as
``round`` is part of their hash), until every quota is met or ``filter.max_rounds`` is reached;
whatever stays unfilled is reported. Accepted and rejected rows both stay in the table.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from raysynth import columns as col
from raysynth.config.schema import RunConfig
from raysynth.filter.stage import EmbedderSpec, FilterScorer, FilterSpec, ImageEmbedder
from raysynth.filter.threshold import class_thresholds
from raysynth.flows.prepare import RealData
from raysynth.generate.generators import GeneratorSpec
from raysynth.generate.stage import generate
from raysynth.generate.table import iter_tables
from raysynth.plan.quotas import plan_round, quotas
from raysynth.ray_data import pool_strategy
from raysynth.rundir import RunDir
from raysynth.seeding import stable_seed

log = logging.getLogger("raysynth.flows")


def embedder_spec(cfg: RunConfig, real: RealData, classifier_folder: Path | None) -> EmbedderSpec:
    return EmbedderSpec(
        filter=cfg.filter,
        classifier_folder=str(classifier_folder or ""),
        channels=real.channels,
        image_size=real.image_size,
        device=cfg.synthesis.generator.device,
    )


def embedder_pool(cfg: RunConfig) -> dict[str, Any]:
    """``map_batches`` arguments of an embedder actor pool (resources from ``filter.*``)."""
    return {
        "batch_size": cfg.filter.batch_size,
        "batch_format": "numpy",
        "compute": pool_strategy(1, cfg.synthesis.max_actors),
        "num_gpus": cfg.filter.gpus_per_actor,
        "num_cpus": cfg.filter.cpus_per_actor,
    }


def real_embeddings(run: RunDir, real: RealData, spec: EmbedderSpec, cfg: RunConfig) -> dict:
    """Embeddings of the real train images, computed once per run (``real/embeddings.npz``)."""
    path = run.root / "real" / "embeddings.npz"
    if path.is_file():
        z = np.load(path, allow_pickle=False)
        return dict(zip(z["ids"].tolist(), z["emb"]))
    import ray

    from raysynth.data.store import real_path

    ds = ray.data.read_parquet(
        str(real_path(run.root, "train")), columns=[col.SAMPLE_ID, col.LABEL, col.IMAGE]
    )
    ds = ds.map_batches(ImageEmbedder, fn_constructor_kwargs={"spec": spec}, **embedder_pool(cfg))
    ids, emb = [], []
    for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
        ids.extend(str(i) for i in batch[col.SAMPLE_ID])
        emb.extend(np.asarray(e, np.float32) for e in batch["embedding"])
    arr = np.stack(emb)
    tmp = path.with_name(".embeddings.tmp.npz")
    np.savez(tmp, ids=np.array(ids), emb=arr)
    tmp.replace(path)
    return dict(zip(ids, arr))


def thresholds(cfg: RunConfig, real: RealData, emb: dict) -> np.ndarray:
    """Per-class acceptance thresholds (mean cosine of real pairs, or the fixed value)."""
    if cfg.filter.threshold == "fixed":
        return np.full(real.num_classes, cfg.filter.fixed_threshold)
    idx = real.splits.train
    ids = [real.images.sample_ids[i] for i in idx]
    vectors = np.stack([emb[i] for i in ids])
    return class_thresholds(
        vectors,
        real.images.labels[idx],
        real.num_classes,
        cfg.filter.pairs,
        stable_seed(cfg.seed, "pairs"),
    )


def most_representative_ids(root: Path, real: RealData) -> dict[str, str]:
    """AiR selection (METHODS §4 step 3): per class, the accepted image with the highest
    own-class probability (classes without a score are absent)."""
    from raysynth.filter.select import most_representative

    ids: list[str] = []
    probs: list[float] = []
    labels: list[int] = []
    for t in iter_tables(root, [col.SAMPLE_ID, col.LABEL, col.ACCEPTED, "own_prob"]):
        t = t.filter(t[col.ACCEPTED].fill_null(False))
        ids.extend(t[col.SAMPLE_ID].to_pylist())
        probs.extend(t["own_prob"].to_pylist())
        labels.extend(t[col.LABEL].to_pylist())
    p = np.asarray([np.nan if v is None else v for v in probs], np.float64)
    keep = ~np.isnan(p)
    if not keep.any():
        return {}
    y = np.asarray(labels)[keep]
    one_hot = np.zeros((keep.sum(), real.num_classes))
    one_hot[np.arange(len(y)), y] = p[keep]
    chosen = most_representative(one_hot, y)
    kept_ids = np.asarray(ids)[keep]
    return {real.class_names[c]: str(kept_ids[i]) for c, i in chosen.items()}


class AcceptAll:
    """The filter switched off: every generated image is accepted (a Ray Data callable class)."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch[col.ACCEPTED] = np.array([img is not None for img in batch[col.IMAGE]])
        return batch


def accepted_per_class(
    root: Path, num_classes: int, before_round: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Accepted and rejected counts per class (rounds ``< before_round`` when given).

    Counting only earlier rounds makes round r's plan a function of rounds 0..r-1 alone, so a
    run interrupted inside round r plans exactly the same rows when it resumes.
    """
    acc = np.zeros(num_classes, np.int64)
    rej = np.zeros(num_classes, np.int64)
    for t in iter_tables(root, [col.LABEL, col.ACCEPTED, col.ROUND]):
        y = np.asarray(t[col.LABEL].to_numpy(zero_copy_only=False), np.int64)
        a = np.asarray(t[col.ACCEPTED].fill_null(False).to_numpy(zero_copy_only=False), bool)
        if before_round is not None:
            keep = np.asarray(t[col.ROUND].to_numpy(zero_copy_only=False)) < before_round
            y, a = y[keep], a[keep]
        np.add.at(acc, y[a], 1)
        np.add.at(rej, y[~a], 1)
    return acc, rej


def synthesize(
    run: RunDir,
    cfg: RunConfig,
    real: RealData,
    gen_spec: GeneratorSpec,
    classifier_folder: Path | None,
) -> dict[str, Any]:
    """Run the rounds; returns the ``synthesis`` section of report.json."""
    t0 = time.perf_counter()
    root = run.sub("synthetic")
    quota = quotas(cfg.synthesis, real.train_counts())
    if cfg.filter.enabled:
        espec = embedder_spec(cfg, real, classifier_folder)
        emb = real_embeddings(run, real, espec, cfg)
        tau = thresholds(cfg, real, emb)
        fspec = FilterSpec(espec, emb, tau, tuple(real.class_names))
    else:
        tau = np.full(real.num_classes, np.nan)

    def filter_stage(ds: Any) -> Any:
        if not cfg.filter.enabled:
            # keep every image that exists (the safety checker may drop some): a long-lived
            # zero-CPU actor, like the writer (a task would wait for a CPU the generator pool
            # holds, or start a worker process mid-stream — see ``write_synthetic``)
            return ds.map_batches(
                AcceptAll,
                batch_format="numpy",
                num_cpus=0,
                compute=pool_strategy(1),
            )
        return ds.map_batches(
            FilterScorer, fn_constructor_kwargs={"spec": fspec}, **embedder_pool(cfg)
        )

    want = np.array([quota.get(c, 0) for c in range(real.num_classes)])
    planned = generated = 0
    rounds = 0
    for r in range(cfg.filter.max_rounds + 1):
        acc, _ = accepted_per_class(root, real.num_classes, before_round=r)
        deficit = np.maximum(want - acc, 0) if r else want
        if r and not deficit.any():
            break
        counts = {c: int(n) for c, n in enumerate(deficit) if n > 0}
        rows = plan_round(cfg.synthesis, real.class_names, real.ids_by_class(), counts, cfg.seed, r)
        log.info("synthesis round %d: %d images for %d classes", r, len(rows), len(counts))
        stats = generate(rows, gen_spec, root, cfg.synthesis, [filter_stage], f"round-{r:03d}")
        planned += stats.planned
        generated += stats.generated
        rounds = r + 1
        if not cfg.filter.enabled:
            break
    acc, rej = accepted_per_class(root, real.num_classes)
    unfilled = np.maximum(want - acc, 0)
    write_sample_grid(root, run.root / "samples.png", real)
    representative = most_representative_ids(root, real)
    recognised = recognition_rate(root, classifier_folder, real) if classifier_folder else None
    if unfilled.any():
        short = {real.class_names[c]: int(n) for c, n in enumerate(unfilled) if n}
        log.warning("after %d rounds some classes are short of their quota: %s", rounds, short)
    return {
        "planned": int(want.sum()),
        "generated": int(acc.sum() + rej.sum()),
        "generated_this_run": int(generated),
        "accepted": int(acc.sum()),
        "rejected": int(rej.sum()),
        "rounds": rounds,
        "recognised": recognised,
        "representative": representative,
        "wall_s": time.perf_counter() - t0,
        "per_class": {
            real.class_names[c]: {
                "quota": int(want[c]),
                "accepted": int(acc[c]),
                "rejected": int(rej[c]),
                "threshold": None if np.isnan(tau[c]) else float(tau[c]),
                "unfilled": int(unfilled[c]),
            }
            for c in range(real.num_classes)
        },
    }


def accepted_arrays(root: Path, real: RealData) -> Any:
    """The accepted synthetic images as training arrays (decoded on the driver: few-shot scale)."""
    from raysynth.data import to_tensor_array
    from raysynth.train.arrays import LabeledArrays

    pngs: list[bytes] = []
    labels: list[int] = []
    for t in iter_tables(root, [col.LABEL, col.IMAGE, col.ACCEPTED]):
        keep = t.filter(t[col.ACCEPTED].fill_null(False))
        pngs.extend(keep[col.IMAGE].to_pylist())
        labels.extend(keep[col.LABEL].to_pylist())
    if not pngs:
        return LabeledArrays.empty_like(real.arrays("train"))
    return LabeledArrays(to_tensor_array(pngs, real.channels), np.array(labels, np.int64))


def recognition_rate(root: Path, classifier_folder: Path, real: RealData) -> dict[str, float]:
    """Share of generated images the real-split classifier labels with their intended class —
    all rows, round 0 alone (unfiltered first draws) and accepted rows."""
    import torch

    from raysynth.data import to_tensor_array
    from raysynth.train.checkpoint import load_model

    model = load_model(classifier_folder).eval()
    hits = {"all": [0, 0], "round0": [0, 0], "accepted": [0, 0]}
    for t in iter_tables(root, [col.LABEL, col.IMAGE, col.ROUND, col.ACCEPTED]):
        t = t.filter(t[col.IMAGE].is_valid())
        if t.num_rows == 0:
            continue
        x = torch.from_numpy(to_tensor_array(t[col.IMAGE].to_pylist(), real.channels))
        with torch.no_grad():
            pred = model(x).argmax(1).numpy()
        ok = pred == np.asarray(t[col.LABEL].to_pylist())
        r0 = np.asarray(t[col.ROUND].to_pylist()) == 0
        acc = np.asarray(t[col.ACCEPTED].fill_null(False).to_pylist(), bool)
        for key, mask in (("all", np.ones_like(ok)), ("round0", r0), ("accepted", acc)):
            hits[key][0] += int(ok[mask].sum())
            hits[key][1] += int(mask.sum())
    return {k: (h / n if n else float("nan")) for k, (h, n) in hits.items()}


def write_sample_grid(root: Path, out: Path, real: RealData, per_class: int = 8) -> Path:
    """``samples.png``: one row per class of up to ``per_class`` generated images (accepted
    first), upscaled without smoothing."""
    from PIL import Image

    from raysynth.data import decode_png

    rows: dict[int, list[np.ndarray]] = {c: [] for c in range(real.num_classes)}
    for t in iter_tables(root, [col.LABEL, col.IMAGE, col.ACCEPTED]):
        t = t.filter(t[col.IMAGE].is_valid())
        order = np.argsort(
            ~np.asarray(t[col.ACCEPTED].fill_null(False).to_pylist(), bool), kind="stable"
        )
        for i in order:
            c = int(t[col.LABEL][int(i)].as_py())
            if len(rows[c]) < per_class:
                rows[c].append(decode_png(t[col.IMAGE][int(i)].as_py(), 3))
        if all(len(v) >= per_class for v in rows.values()):
            break
    h, w = next((v[0].shape[:2] for v in rows.values() if v), (8, 8))
    grid = np.full((real.num_classes * (h + 1), per_class * (w + 1), 3), 255, np.uint8)
    for c, imgs in rows.items():
        for j, img in enumerate(imgs):
            grid[c * (h + 1) : c * (h + 1) + h, j * (w + 1) : j * (w + 1) + w] = img
    scale = max(1, 64 // max(h, w))
    Image.fromarray(grid).resize(
        (grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST
    ).save(out)
    return out
