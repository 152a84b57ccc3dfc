"""Frozen, self-validating config dataclasses, one per stage.

Every field has a default; YAML presets and ``--set`` overrides hold only differences. Each
``__post_init__`` checks its own values and raises :class:`ConfigError` naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from raysynth.errors import ConfigError

BUDGETS = ("smoke", "default", "paper")


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


def _check_choice(value: str, key: str, choices: tuple[str, ...]) -> None:
    _check(value in choices, key, f"got {value!r}; choose one of {', '.join(choices)}")


@dataclass(frozen=True)
class DataConfig:
    """Where the real images come from and how they are split (per class)."""

    source: str = "digits"  # digits | imagefolder | parquet
    path: str | None = None  # folder (imagefolder) or file/folder (parquet)
    classes: tuple[str, ...] = ()  # subset of class names; empty = all
    image_size: int = 0  # resize (square) on load; 0 keeps the source size
    channels: int = 0  # 1 grey, 3 RGB; 0 = as the source (digits: 1, photos: 3)
    k: int = 16  # real training images per class (k-shot)
    pool_per_class: int = 16  # held-out pool for classifier runs
    val_per_class: int = 20
    test_per_class: int = 30
    imbalance_factor: float = 1.0  # > 1: long-tailed train split, n_max / n_min
    many_threshold: int = 0  # long tail: classes with > this many train images are "many"
    few_threshold: int = 0  # long tail: classes with < this many are "few"; 0 = auto (thirds)

    def __post_init__(self) -> None:
        _check_choice(self.source, "data.source", ("digits", "imagefolder", "parquet"))
        if self.source in ("imagefolder", "parquet"):
            _check(bool(self.path), "data.path", f"data.source={self.source} needs a path")
        for key in ("k", "pool_per_class", "val_per_class", "test_per_class"):
            _check(getattr(self, key) >= 0, f"data.{key}", "must be >= 0")
        _check(self.k >= 1, "data.k", "must be >= 1")
        _check(self.image_size >= 0, "data.image_size", "must be >= 0 (0 keeps the size)")
        _check(self.channels in (0, 1, 3), "data.channels", "must be 0, 1 or 3")
        _check(self.imbalance_factor >= 1.0, "data.imbalance_factor", "must be >= 1")


@dataclass(frozen=True)
class EncoderConfig:
    """Contrastive encoder (METHODS §1 protocol: Adam 1e-3, wd 1e-4, batch 32, tau 0.07)."""

    arch: str = "auto"  # auto | small_cnn | resnet18 (auto: small_cnn for <= 32 px)
    width: int = 32  # base channels of the small CNN
    feat_dim: int = 128  # encoder output (the frozen embedding)
    proj_dim: int = 64  # projection head output (the contrastive space)
    epochs: int = 200
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    temperature: float = 0.07
    augment: str = "auto"  # auto | small | photo | none

    def __post_init__(self) -> None:
        _check_choice(self.arch, "encoder.arch", ("auto", "small_cnn", "resnet18"))
        _check_choice(self.augment, "encoder.augment", ("auto", "small", "photo", "none"))
        for key in ("width", "feat_dim", "proj_dim", "epochs", "batch_size"):
            _check(getattr(self, key) >= 1, f"encoder.{key}", "must be >= 1")
        _check(self.lr > 0, "encoder.lr", "must be > 0")
        _check(self.weight_decay >= 0, "encoder.weight_decay", "must be >= 0")
        _check(self.temperature > 0, "encoder.temperature", "must be > 0")


@dataclass(frozen=True)
class ClassifierConfig:
    """3-layer MLP on frozen embeddings, trained on ``per_class`` pool images per run."""

    hidden: int = 128
    epochs: int = 200
    batch_size: int = 32
    lr: float = 1e-3
    per_class: int = 16
    # The frozen features the classifier reads: the projection v = g(h) (default; the space the
    # contrastive loss and the UniCon weights shape, so the search objective responds to w) or
    # the encoder output h.
    features: str = "projection"

    def __post_init__(self) -> None:
        _check_choice(self.features, "classifier.features", ("encoder", "projection"))
        for key in ("hidden", "epochs", "batch_size", "per_class"):
            _check(getattr(self, key) >= 1, f"classifier.{key}", "must be >= 1")
        _check(self.lr > 0, "classifier.lr", "must be > 0")


@dataclass(frozen=True)
class EndToEndConfig:
    """End-to-end classifier on real ∪ synthetic (feedback-guidance paper §4)."""

    epochs: int = 60
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 5e-4
    synthetic_share: float = 0.5  # fraction of each mini-batch drawn from synthetic rows
    balanced_softmax: bool = True

    def __post_init__(self) -> None:
        for key in ("epochs", "batch_size"):
            _check(getattr(self, key) >= 1, f"end_to_end.{key}", "must be >= 1")
        _check(self.lr > 0, "end_to_end.lr", "must be > 0")
        _check(
            0.0 <= self.synthetic_share < 1.0,
            "end_to_end.synthetic_share",
            "must be in [0, 1)",
        )


@dataclass(frozen=True)
class ProtocolConfig:
    """UniCon Algorithm 1: n_contr encoder runs × n_classif classifier runs per evaluation."""

    n_contr: int = 3
    n_classif: int = 3

    def __post_init__(self) -> None:
        _check(self.n_contr >= 1, "protocol.n_contr", "must be >= 1")
        _check(self.n_classif >= 1, "protocol.n_classif", "must be >= 1")


@dataclass(frozen=True)
class ScalingConfig:
    """Ray Train workers for one training run. ``num_workers=0`` trains in-process."""

    num_workers: int = 0
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    max_failures: int = 2  # Train worker failures retried from the last checkpoint
    checkpoint_every: int = 20  # epochs between checkpoints (resume granularity)

    def __post_init__(self) -> None:
        _check(self.num_workers >= 0, "train.num_workers", "must be >= 0 (0 = in-process)")
        _check(self.cpus_per_worker > 0, "train.cpus_per_worker", "must be > 0")
        _check(self.max_failures >= 0, "train.max_failures", "must be >= 0")
        _check(self.checkpoint_every >= 1, "train.checkpoint_every", "must be >= 1")


@dataclass(frozen=True)
class TuneConfig:
    """Per-class weight search (METHODS §1): 20 random points then TPE, 100 in all."""

    searcher: str = "hyperopt"  # hyperopt (Ray Tune, parallel) | gp (scikit-optimize, sequential)
    num_samples: int = 100
    n_initial_points: int = 20
    max_concurrent: int = 0  # 0 = as many as the cluster's CPUs / cpus_per_trial
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    warm_start: bool = True  # evaluate w = 0 and w = 1 first
    weights: tuple[float, ...] = ()  # fixed weights (skip the search); one per class

    def __post_init__(self) -> None:
        _check_choice(self.searcher, "tune.searcher", ("hyperopt", "gp"))
        _check(self.num_samples >= 1, "tune.num_samples", "must be >= 1")
        _check(self.n_initial_points >= 0, "tune.n_initial_points", "must be >= 0")
        _check(self.max_concurrent >= 0, "tune.max_concurrent", "must be >= 0")
        _check(self.cpus_per_trial > 0, "tune.cpus_per_trial", "must be > 0")
        _check(self.gpus_per_trial >= 0, "tune.gpus_per_trial", "must be >= 0")
        for w in self.weights:
            _check(0.0 <= w <= 1.0, "tune.weights", f"every weight must be in [0, 1], got {w}")


@dataclass(frozen=True)
class SynthesisConfig:
    """How many synthetic images per class (the synthesis stage adds the generator settings)."""

    per_class: int = 0  # fixed count; 0 = use per_class_fraction of k
    per_class_fraction: float = 0.5  # UniCon uses k/2

    def __post_init__(self) -> None:
        _check(self.per_class >= 0, "synthesis.per_class", "must be >= 0")
        _check(self.per_class_fraction >= 0, "synthesis.per_class_fraction", "must be >= 0")


@dataclass(frozen=True)
class RunConfig:
    """The whole run: one section per stage."""

    preset: str = "custom"
    seed: int = 0
    budget: str = "default"
    data: DataConfig = field(default_factory=DataConfig)
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    end_to_end: EndToEndConfig = field(default_factory=EndToEndConfig)
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    train: ScalingConfig = field(default_factory=ScalingConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)

    def __post_init__(self) -> None:
        _check_choice(self.budget, "budget", BUDGETS)
        _check(self.seed >= 0, "seed", "must be >= 0")


# What each budget changes (applied under the preset and --set, so explicit values win).
BUDGET_OVERRIDES: dict[str, dict[str, object]] = {
    "smoke": {
        "encoder.epochs": 20,
        "classifier.epochs": 40,
        "end_to_end.epochs": 10,
        "protocol.n_contr": 1,
        "protocol.n_classif": 2,
        "tune.num_samples": 4,
        "tune.n_initial_points": 2,
    },
    "default": {},
    "paper": {
        "encoder.epochs": 200,
        "classifier.epochs": 200,
        "protocol.n_contr": 3,
        "protocol.n_classif": 3,
        "tune.num_samples": 100,
        "tune.n_initial_points": 20,
    },
}
