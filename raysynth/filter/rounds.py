"""The filter stage's rounds: plan → generate → embed + filter, regenerating to quota (DESIGN §1,
METHODS §3).

Round 0 plans each class's quota. After each round the accepted images are counted per class
and every class short of its quota gets a new round of rows (new ``sample_id``s and seeds, as
``round`` is part of their hash), until every quota is met or ``filter.max_rounds`` is reached;
whatever stays unfilled is reported. Accepted and rejected rows both stay in the table.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from raysynth import columns as col
from raysynth.config.schema import FilterConfig, Resources, SynthesisConfig
from raysynth.errors import ConfigError
from raysynth.files import atomic_save_npz, cached
from raysynth.filter.loop import Loop, accepted_images, plan_of, run_loop
from raysynth.filter.loop import summary as loop_summary
from raysynth.filter.select import most_representative
from raysynth.filter.stage import EmbedderSpec, FilterScorer, FilterSpec, ImageEmbedder
from raysynth.filter.threshold import class_thresholds, first_real_ids
from raysynth.generate.generators import GeneratorSpec
from raysynth.generate.table import iter_tables
from raysynth.generate.warm import WarmGenerate
from raysynth.plan.quotas import GroupLayout, group_quotas, plan_round, quotas
from raysynth.progress import counter
from raysynth.ray_data import PoolStage, iter_numpy, map_pool, read_parquet
from raysynth.seeding import stable_seed
from raysynth.storage import AnyPath, spec_path

log = logging.getLogger("raysynth.flows")


@dataclass(frozen=True)
class RealTrain:
    """What the rounds need of the real train split: class names, the sample ids of each class
    (split order), the image shape and where the split's table is."""

    class_names: tuple[str, ...]
    ids_by_class: dict[int, list[str]]
    channels: int
    image_size: int
    table: str | AnyPath  # the real train split's Parquet file (in the run directory)
    group_counts: dict[int, dict[str, int]] = field(default_factory=dict)  # class → group → n
    group_names: tuple[str, ...] = ()  # every group of the data (synthesis.per_group)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def counts(self) -> list[int]:
        return [len(self.ids_by_class.get(c, ())) for c in range(self.num_classes)]


@dataclass(frozen=True)
class Synthesis:
    """The stage's settings (its own config sections) and where it writes."""

    synthesis: SynthesisConfig
    filter: FilterConfig
    seed: int
    out: AnyPath  # the synthetic table's folder
    embeddings: AnyPath  # the real train embeddings' cache file
    device: str = "auto"  # the embedder's device


def real_embeddings(real: RealTrain, spec: EmbedderSpec, pool: Resources, path: Path) -> dict:
    """Embeddings of the real train images, computed once per run (cached at ``path``)."""

    def compute() -> dict[str, np.ndarray]:
        ds = read_parquet(real.table, [col.SAMPLE_ID, col.LABEL, col.IMAGE])
        ds = map_pool(ds, ImageEmbedder, pool, {"spec": spec})
        ids, emb = [], []
        for batch in iter_numpy(ds):
            ids.extend(str(i) for i in batch[col.SAMPLE_ID])
            emb.extend(np.asarray(e, np.float32) for e in batch[col.EMBEDDING])
        return {"ids": np.array(ids), "emb": np.stack(emb)}

    def read(p: AnyPath) -> dict[str, np.ndarray]:
        with p.open("rb") as f, np.load(f, allow_pickle=False) as z:
            return {"ids": z["ids"], "emb": z["emb"]}

    z = cached(path, compute, read, lambda p, v: atomic_save_npz(p, **v))
    return dict(zip(z["ids"].tolist(), z["emb"]))


def thresholds(cfg: FilterConfig, real: RealTrain, emb: dict, seed: int) -> np.ndarray:
    """Per-class acceptance thresholds (mean cosine of real pairs, or the fixed value)."""
    if cfg.threshold == "fixed":
        return np.full(real.num_classes, cfg.fixed_threshold)
    ids = [i for c in range(real.num_classes) for i in real.ids_by_class.get(c, ())]
    labels = np.array([c for c in range(real.num_classes) for _ in real.ids_by_class.get(c, ())])
    vectors = np.stack([emb[i] for i in ids])
    return class_thresholds(
        vectors, labels, real.num_classes, cfg.pairs, stable_seed(seed, "pairs")
    )


def most_representative_ids(root: Path, class_names: list[str]) -> dict[str, str]:
    """AiR selection (METHODS §4 step 3): per class, the accepted image with the highest
    own-class probability (classes without a score are absent)."""
    ids: list[str] = []
    probs: list[float] = []
    labels: list[int] = []
    for t in iter_tables(root, [col.SAMPLE_ID, col.LABEL, col.ACCEPTED, col.OWN_PROB]):
        t = t.filter(t[col.ACCEPTED].fill_null(False))
        ids.extend(t[col.SAMPLE_ID].to_pylist())
        probs.extend(t[col.OWN_PROB].to_pylist())
        labels.extend(t[col.LABEL].to_pylist())
    p = np.asarray([np.nan if v is None else v for v in probs], np.float64)
    keep = ~np.isnan(p)
    if not keep.any():
        return {}
    y = np.asarray(labels)[keep]
    one_hot = np.zeros((keep.sum(), len(class_names)))
    one_hot[np.arange(len(y)), y] = p[keep]
    chosen = most_representative(one_hot, y)
    kept_ids = np.asarray(ids)[keep]
    return {class_names[c]: str(kept_ids[i]) for c, i in chosen.items()}


class AcceptAll:
    """The filter switched off: every generated image is accepted (a Ray Data callable class)."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch[col.ACCEPTED] = np.array([img is not None for img in batch[col.IMAGE]])
        return batch


# The disabled filter keeps every image that exists (the safety checker may drop some): a
# long-lived zero-CPU actor, like the writer (a task would wait for a CPU the generator pool
# holds, or start a worker process mid-stream — see ``generate.stage.write_synthetic``).
ACCEPT_ALL_POOL = Resources(cpus_per_actor=0)


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


def filter_stage(job: Synthesis, real: RealTrain, classifier_folder: Path | None
                 ) -> tuple[PoolStage, Any]:
    """The stage after the generators (its actor pool) and the thresholds τ."""
    f = job.filter
    if not f.enabled:
        nan = np.full(real.num_classes, np.nan)
        return PoolStage(AcceptAll, ACCEPT_ALL_POOL, batch_size="default"), nan
    espec = EmbedderSpec(f, spec_path(classifier_folder) if classifier_folder else "", real.channels,
                         real.image_size, job.device)
    emb = real_embeddings(real, espec, f.pool, job.embeddings)
    tau = thresholds(f, real, emb, job.seed)
    first = first_real_ids(real.ids_by_class) if f.reference == "first_real" else None
    fspec = FilterSpec(espec, emb, tau, tuple(real.class_names), first)
    return PoolStage(FilterScorer, f.pool, {"spec": fspec}), tau


def run_rounds(job: Synthesis, real: RealTrain, generate: WarmGenerate, want: np.ndarray,
               layout: GroupLayout | None = None) -> tuple[int, int]:
    """Generate round after round until every class has ``want`` accepted images (or the last
    round); returns the rounds run and the images this call generated (a resumed run skips the
    ones already written)."""
    rounds = generated = 0
    for r in range(job.filter.max_rounds + 1):
        acc, _ = accepted_per_class(job.out, real.num_classes, before_round=r)
        deficit = np.maximum(want - acc, 0) if r else want
        if r and not deficit.any():
            break
        counts = {c: int(n) for c, n in enumerate(deficit) if n > 0}
        rows = plan_round(job.synthesis, list(real.class_names), real.ids_by_class, counts,
                          job.seed, r, layout=layout)
        log.info("synthesis round %d: %d images for %d classes", r, len(rows), len(counts))
        with counter(f"synthesis round {r}", len(rows), "images", log_every=len(rows)) as bar:
            stats = generate(rows, f"round-{r:03d}", on_written=lambda n: bar.update(n))
            now, _ = accepted_per_class(job.out, real.num_classes, before_round=r + 1)
            bar.update(stats.skipped, accepted=int((now - acc).sum()))
        generated += stats.generated
        rounds = r + 1
        if not job.filter.enabled:
            break
    return rounds, generated


def closed_loop(job: Synthesis, real: RealTrain, generate: WarmGenerate, quota: dict[int, int],
                loop: Loop) -> tuple[np.ndarray, int, dict[str, Any]]:
    """The measured allocation rounds (:mod:`raysynth.filter.loop`); returns the images each
    class was allocated, the images this call generated and the ``allocation`` summary."""
    s = job.synthesis
    plan = plan_of(s.allocation, s.loop, s.budget, s.rounds, real.counts(), quota)
    generated = [0]

    def plan_rows(counts: dict[int, int], r: int, start: dict[int, int]) -> list[dict[str, Any]]:
        return plan_round(s, list(real.class_names), real.ids_by_class, counts, job.seed, r, start)

    def run_round(rows: list[dict[str, Any]], r: int) -> int:
        n = generate(rows, f"round-{r:03d}").generated
        generated[0] += n
        return n

    records = run_loop(
        plan, loop, lambda r: accepted_per_class(job.out, real.num_classes, before_round=r),
        lambda r: accepted_images(job.out, real.channels, real.image_size, r), plan_rows, run_round,
    )
    allocated = np.sum([r["counts"] for r in records if not r.get("final")], axis=0)
    return allocated.astype(np.int64), generated[0], loop_summary(records, plan)


def synthesize(
    job: Synthesis, real: RealTrain, gen_spec: GeneratorSpec, classifier_folder: Path | None,
    loop: Loop | None = None,
) -> dict[str, Any]:
    """Run the rounds — today's quota rounds, or the closed loop (``synthesis.closed_loop``,
    which needs ``loop``); returns the ``synthesis`` section of report.json."""
    t0 = time.perf_counter()
    layout = (group_quotas(job.synthesis, real.group_counts, real.group_names, real.num_classes)
              if job.synthesis.per_group else None)
    quota = ({c: sum(n for _, n in g) for c, g in layout.items()} if layout
             else quotas(job.synthesis, real.counts()))
    stage, tau = filter_stage(job, real, classifier_folder)
    if job.synthesis.closed_loop and (loop is None or layout):
        raise ConfigError("synthesis.allocation / rounds / budget (the closed loop) need the "
                          "per-round measurement and work per class, not per group: this "
                          "flow does not provide the one, or synthesis.per_group is set")
    with WarmGenerate(gen_spec, job.out, job.synthesis, [stage]) as generate:  # for every round
        if loop is not None and job.synthesis.closed_loop:
            want, generated, allocation = closed_loop(job, real, generate, quota, loop)
            rounds = len(allocation["counts"])
        else:
            want, allocation = np.array([quota.get(c, 0) for c in range(real.num_classes)]), None
            rounds, generated = run_rounds(job, real, generate, want, layout)
    acc, rej = accepted_per_class(job.out, real.num_classes)
    unfilled = np.maximum(want - acc, 0)
    if unfilled.any():
        short = {real.class_names[c]: int(n) for c, n in enumerate(unfilled) if n}
        log.warning("after %d rounds some classes are short of their quota: %s", rounds, short)
    return {
        **({"allocation": allocation} if allocation else {}),
        "planned": int(want.sum()),
        "generated": int(acc.sum() + rej.sum()),
        "generated_this_run": int(generated),
        "accepted": int(acc.sum()),
        "rejected": int(rej.sum()),
        "rounds": rounds,
        "representative": most_representative_ids(job.out, list(real.class_names)),
        "wall_s": time.perf_counter() - t0,
        "per_group": {real.class_names[c]: dict(g) for c, g in layout.items()} if layout else None,
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
