"""AiR step 1 (paper 001 Eq. 1–2, METHODS §4): zero-shot pseudo-labels of an unlabeled image set.

``p_c = softmax_c(cos(F(x), G(t_c)) / τ)``: ``F`` the open_clip image tower, ``G(t_c)`` the prompt
ensemble of class ``c`` (every template filled with the class name, unit embeddings averaged and
renormalised, as CLIP does), τ = 0.01 by default (CLIP's learned logit scale is ≈ 100).

- :class:`ZeroShotScorer` — the Ray Data actor: :class:`~raysynth.filter.stage.ImageEmbedder`
  (which loads the model once per actor) plus ``probs`` per row, the text classifier computed once
  in ``__init__``;
- :func:`pseudo_label` runs it as an actor pool over an :class:`UnlabeledSet` (loaded with
  :func:`raysynth.data.unlabeled.load_unlabeled`), :func:`score_dataset` over any Ray Dataset with
  ``sample_id`` and ``image`` (e.g. ``read_parquet``: streaming), :func:`pseudo_label_local` runs
  the same class in-process (tests, small sets);
- :meth:`PseudoLabels.top_k` — the ``K`` most confident images per class
  (:func:`~raysynth.pseudolabel.top_k.top_k_per_class`, FPL's top-K pseudo-labels, the images AiR
  fine-tunes its generator on).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from raysynth import columns as col
from raysynth.config.schema import FilterConfig, Resources
from raysynth.data.unlabeled import UnlabeledSet
from raysynth.errors import DataError
from raysynth.filter.stage import EmbedderSpec, ImageEmbedder
from raysynth.pseudolabel.top_k import TopK, top_k_per_class
from raysynth.ray_data import from_tables, iter_numpy, map_pool

DEFAULT_TEMPLATES = ("a photo of a {c}.",)
EMBEDDING = col.EMBEDDING
PROBS = col.PROBS
# the embedder pool when the caller gives none (one actor of one CPU, 64 images a call)
DEFAULT_POOL = Resources(batch_size=64)


# -- specs ---------------------------------------------------------------------------------


def clip_embedder_spec(
    model_name: str, pretrained: str | None, device: str = "auto", batch_size: int = 64,
    pool: Resources | None = None,
) -> EmbedderSpec:
    """An :class:`EmbedderSpec` for an open_clip model (a tag or a local checkpoint file).
    ``pool`` is the actor pool it will run on: its GPUs decide the device (an actor given a GPU
    uses CUDA or fails naming the cause, :func:`raysynth.devices.resolve_device`)."""
    cfg = FilterConfig(
        embedder="open_clip",
        clip_model=model_name,
        clip_pretrained=pretrained or "",
        pool=pool or Resources(batch_size=batch_size, cpus_per_actor=0.5),
    )
    return EmbedderSpec(filter=cfg, channels=3, device=device)


@dataclass(frozen=True)
class ZeroShotSpec:
    """What a :class:`ZeroShotScorer` actor needs (small, picklable)."""

    embedder: EmbedderSpec
    class_names: tuple[str, ...]
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    temperature: float = 0.01

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_names", tuple(self.class_names))
        object.__setattr__(self, "templates", tuple(self.templates))
        if len(self.class_names) < 2:
            raise ValueError(f"need at least 2 class names, got {list(self.class_names)}")
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"class names must be distinct, got {list(self.class_names)}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


# -- the stage -----------------------------------------------------------------------------


class ZeroShotScorer(ImageEmbedder):
    """Rows with ``image`` in; the other columns plus ``embedding`` ``F(x)`` and ``probs`` ``p``
    (``[C]`` float64 per row) out."""

    def __init__(self, spec: ZeroShotSpec) -> None:
        from raysynth.filter.clip import class_text_embeddings

        super().__init__(spec.embedder)
        self.text = class_text_embeddings(self.embedder, spec.class_names, spec.templates)
        self.temperature = spec.temperature

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        from raysynth.filter.select import cosine_softmax

        out = super().__call__(batch)
        emb = np.stack(out[EMBEDDING]) if len(out[EMBEDDING]) else np.zeros((0, self.embedder.dim))
        out[PROBS] = list(cosine_softmax(emb, self.text, self.temperature))
        return out


@dataclass
class PseudoLabels:
    """Zero-shot result over an unlabeled set, rows in the set's order.

    ``embeddings: [N, D]`` unit-norm ``F(x)``; ``probs: [N, C]``; ``true_labels: [N]`` (``-1``
    unknown) or None — for measuring only.
    """

    sample_ids: list[str]
    embeddings: np.ndarray
    probs: np.ndarray
    class_names: list[str]
    true_labels: np.ndarray | None = None

    @property
    def labels(self) -> np.ndarray:
        """``ỹ = argmax_c p_c`` (Eq. 2; ties → the lowest class), ``[N]`` int64."""
        return np.argmax(self.probs, axis=1).astype(np.int64)

    def accuracy(self, labels: np.ndarray | None = None, rows: np.ndarray | None = None) -> float:
        """Share of ``labels`` (default :attr:`labels`) equal to the true label, over ``rows``
        (default all) that have one; NaN when there are no true labels."""
        return label_accuracy(self.labels if labels is None else labels, self.true_labels, rows)

    def top_k(self, k: int | None = 16) -> TopK:
        return top_k_per_class(self.probs, k)


def label_accuracy(
    labels: np.ndarray, true_labels: np.ndarray | None, rows: np.ndarray | None = None
) -> float:
    """Accuracy of ``labels`` against ``true_labels`` (``-1`` = unknown, left out) over ``rows``."""
    if true_labels is None:
        return float("nan")
    labels, truth = np.asarray(labels), np.asarray(true_labels)
    if rows is not None:
        rows = np.asarray(rows, dtype=np.int64)
        labels, truth = labels[rows], truth[rows]
    known = truth >= 0
    return float(np.mean(labels[known] == truth[known])) if known.any() else float("nan")


def true_labels_for(data: UnlabeledSet, class_names: Sequence[str]) -> np.ndarray | None:
    """The set's true labels as indices into ``class_names`` (``-1`` unknown), or None.

    ``class_name`` values are matched by name (a name not in ``class_names`` is unknown); a bare
    ``label`` column is taken to index ``class_names`` directly.
    """
    if data.true_names is not None:
        index = {n: i for i, n in enumerate(class_names)}
        return np.array([index.get(n, -1) if n is not None else -1 for n in data.true_names])
    if data.true_labels is None:
        return None
    bad = data.true_labels >= len(class_names)
    if bad.any():
        raise DataError(
            f"the unlabeled table's {col.LABEL!r} column has values up to "
            f"{int(data.true_labels.max())}, but only {len(class_names)} class names were given; "
            f"add a {col.CLASS_NAME!r} column or pass every class name in label order"
        )
    return data.true_labels.copy()


def _collect(batches, data: UnlabeledSet, spec: ZeroShotSpec) -> PseudoLabels:
    """Put the scored batches back into the set's row order (actor pools do not keep it)."""
    row = {sid: i for i, sid in enumerate(data.sample_ids)}
    n, c = len(data), len(spec.class_names)
    emb: np.ndarray | None = None
    probs = np.zeros((n, c))
    seen = np.zeros(n, dtype=bool)
    for batch in batches:
        idx = np.array([row[str(s)] for s in batch[col.SAMPLE_ID]], dtype=np.int64)
        if len(idx) == 0:
            continue
        e = np.stack(batch[EMBEDDING]).astype(np.float32)
        if emb is None:
            emb = np.zeros((n, e.shape[1]), np.float32)
        emb[idx], probs[idx], seen[idx] = e, np.stack(batch[PROBS]), True
    if not seen.all():
        missing = [data.sample_ids[i] for i in np.flatnonzero(~seen)[:5]]
        raise RuntimeError(f"{int((~seen).sum())} rows came back without scores, e.g. {missing}")
    return PseudoLabels(
        sample_ids=list(data.sample_ids),
        embeddings=emb if emb is not None else np.zeros((0, 0), np.float32),
        probs=probs,
        class_names=list(spec.class_names),
        true_labels=true_labels_for(data, spec.class_names),
    )


def _batches(data: UnlabeledSet, size: int):
    for i in range(0, len(data), size):
        yield {
            col.SAMPLE_ID: np.array(data.sample_ids[i : i + size], dtype=object),
            col.IMAGE: np.array(data.images[i : i + size], dtype=object),
        }


def pseudo_label_local(
    data: UnlabeledSet, spec: ZeroShotSpec, batch_size: int = 64
) -> PseudoLabels:
    """Zero-shot pseudo-labels in this process, with the very class the actor pool runs."""
    scorer = ZeroShotScorer(spec)
    return _collect((scorer(b) for b in _batches(data, batch_size)), data, spec)


def score_dataset(ds: Any, spec: ZeroShotSpec, pool: Resources = DEFAULT_POOL) -> Any:
    """``ds`` (Ray Dataset with ``sample_id`` and ``image``) → + ``embedding`` and ``probs``, on an
    actor pool of :class:`ZeroShotScorer` (streaming: the driver holds no images)."""
    return map_pool(ds, ZeroShotScorer, pool, {"spec": spec})


def pseudo_label(
    data: UnlabeledSet, spec: ZeroShotSpec, pool: Resources = DEFAULT_POOL
) -> PseudoLabels:
    """Zero-shot pseudo-labels of ``data`` on a Ray Data actor pool; needs a connected Ray."""
    import pyarrow as pa

    table = pa.table(
        {
            col.SAMPLE_ID: pa.array(data.sample_ids, pa.string()),
            col.IMAGE: pa.array(data.images, pa.binary()),
        }
    )
    scored = score_dataset(from_tables([table]), spec, pool)
    return _collect(iter_numpy(scored, [col.SAMPLE_ID, EMBEDDING, PROBS]), data, spec)
