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
class Resources:
    """One stage's Ray Data actor pool: its callable class gets ``batch_size`` rows a call, on
    ``min_actors``..``max_actors`` actors of ``cpus_per_actor`` CPUs and ``gpus_per_actor`` GPUs
    (fractional GPUs let two pools share one). Every pool-running stage has one (``synthesis.pool``,
    ``filter.pool``); ``raysynth.ray_data.map_pool`` turns it into ``map_batches`` arguments."""

    batch_size: int = 8
    min_actors: int = 1
    max_actors: int = 1
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0

    def check(self, key: str) -> None:
        """Validate under the config key of the section that holds it (``synthesis.pool``)."""
        _check(self.batch_size >= 1, f"{key}.batch_size", "must be >= 1")
        _check(self.min_actors >= 1, f"{key}.min_actors", "must be >= 1")
        _check(self.max_actors >= self.min_actors, f"{key}.max_actors", f"must be >= {key}.min_actors")
        _check(self.cpus_per_actor > 0, f"{key}.cpus_per_actor", "must be > 0")
        _check(self.gpus_per_actor >= 0, f"{key}.gpus_per_actor", "must be >= 0")


@dataclass(frozen=True)
class SplitFilesConfig:
    """A benchmark's published split lists, read instead of carving (``data/split_files.py``).
    File names are absolute or relative to ``data.path``."""

    format: str = ""  # "" carve the splits | path_label (ImageNet-LT) | flowers102 | csv (NICO++)
    train: str = ""  # path_label: one "<relative path> <label>" file per split
    val: str = ""
    test: str = ""
    setid: str = "setid.mat"  # flowers102: the official split ...
    labels: str = "imagelabels.mat"  # ... and the labels
    metadata: str = ""  # csv: filename,y[,a],split (SubpopBench's NICO++ metadata)
    names: str = ""  # class names, one per line (line i = label i); "" = labels as names
    group_names: str = ""  # csv: context names, one per line (line i = group id i)
    sample_k: bool = False  # few-shot: draw data.k per class from the train list (else all of it)

    def __post_init__(self) -> None:
        f = "data.split_files"
        _check_choice(self.format, f"{f}.format", ("", "path_label", "flowers102", "csv"))
        if self.format == "path_label":
            _check(bool(self.train), f"{f}.train", "format path_label needs the train list")
        if self.format == "csv":
            _check(bool(self.metadata), f"{f}.metadata", "format csv needs the metadata file")


@dataclass(frozen=True)
class DataConfig:
    """Where the real images come from and how they are split (per class)."""

    source: str = "digits"  # digits | imagefolder | parquet | generated (stress data, no download)
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
    # the per-image group (context): "" none (or the split files' group column) | folder
    # (ImageFolder <class>/<context>/…: the first sub-folder of the class folder)
    group: str = ""
    split_files: SplitFilesConfig = field(default_factory=SplitFilesConfig)
    generated_classes: int = 100  # source generated: classes of pattern images (data/generated.py)

    def __post_init__(self) -> None:
        _check_choice(self.source, "data.source", ("digits", "imagefolder", "parquet", "generated"))
        _check(self.generated_classes >= 1, "data.generated_classes", "must be >= 1")
        _check_choice(self.group, "data.group", ("", "folder"))
        _check(self.group != "folder" or self.source == "imagefolder", "data.group",
               "folder reads <class>/<context>/ folders; it needs data.source=imagefolder")
        if self.split_files.format:
            _check(self.source != "digits", "data.split_files.format",
                   "split files list image files; use data.source=imagefolder or parquet")
            _check(self.imbalance_factor == 1.0, "data.imbalance_factor",
                   "the split files give the train list (its tail included); leave it at 1")
        if self.source in ("imagefolder", "parquet"):
            _check(bool(self.path), "data.path", f"data.source={self.source} needs a path")
        for key in ("k", "pool_per_class", "val_per_class", "test_per_class"):
            _check(getattr(self, key) >= 0, f"data.{key}", "must be >= 0")
        _check(self.k >= 1, "data.k", "must be >= 1")
        _check(self.image_size >= 0, "data.image_size", "must be >= 0 (0 keeps the size)")
        _check(self.channels in (0, 1, 3), "data.channels", "must be 0, 1 or 3")
        _check(self.imbalance_factor >= 1.0, "data.imbalance_factor", "must be >= 1")


ARCHS = ("auto", "small_cnn", "resnet18", "resnet34", "resnet50", "resnext50_32x4d",
         "preact_resnet34")


@dataclass(frozen=True)
class EncoderConfig:
    """Contrastive encoder (METHODS §1 protocol: Adam 1e-3, wd 1e-4, batch 32, tau 0.07)."""

    # auto (small_cnn for <= 32 px, else resnet18) | small_cnn | resnet18 | resnet34 | resnet50 |
    # resnext50_32x4d | preact_resnet34 (torchvision's ResNets; PreAct-ResNet34 as DiffuseMix ran it)
    arch: str = "auto"
    # torchvision weight enum member of the arch (IMAGENET1K_V1, IMAGENET1K_V2, DEFAULT); "" =
    # random init. Downloaded by the driver when online (cached under TORCH_HOME), checked at
    # --dry-run.
    pretrained: str = ""
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
        _check_choice(self.arch, "encoder.arch", ARCHS)
        _check(not self.pretrained or self.arch in ARCHS[2:6], "encoder.pretrained",
               f"ImageNet weights exist for {', '.join(ARCHS[2:6])}, not arch={self.arch}")
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
    optimizer: str = "adam"  # adam | sgd (train/optim.py)
    momentum: float = 0.9  # sgd
    nesterov: bool = False  # sgd
    schedule: str = "constant"  # constant | cosine (to 0 over the epochs after warm-up)
    warmup_epochs: int = 0  # linear warm-up from lr/warmup to lr
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        _check_choice(self.optimizer, "end_to_end.optimizer", ("adam", "sgd"))
        _check_choice(self.schedule, "end_to_end.schedule", ("constant", "cosine"))
        _check(0 <= self.momentum < 1, "end_to_end.momentum", "must be in [0, 1)")
        _check(not self.nesterov or (self.optimizer == "sgd" and self.momentum > 0),
               "end_to_end.nesterov", "needs optimizer=sgd with momentum > 0")
        _check(0 <= self.warmup_epochs < self.epochs, "end_to_end.warmup_epochs",
               "must be in [0, end_to_end.epochs)")
        _check(0 <= self.label_smoothing < 1, "end_to_end.label_smoothing", "must be in [0, 1)")
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
    # torch threads of the training the driver runs itself (num_workers=0, the pixel model)
    driver_threads: int = 0  # 0 = every core the driver may run on
    # the end-to-end classifier reads its tables as Ray Datasets (TorchTrainer datasets=) instead
    # of arrays decoded on the driver: always | never | auto (when real train + accepted
    # synthetic rows exceed stream_above)
    stream: str = "auto"
    stream_above: int = 20_000

    def __post_init__(self) -> None:
        _check_choice(self.stream, "train.stream", ("auto", "always", "never"))
        _check(self.stream_above >= 0, "train.stream_above", "must be >= 0")
        _check(self.num_workers >= 0, "train.num_workers", "must be >= 0 (0 = in-process)")
        _check(self.driver_threads >= 0, "train.driver_threads", "must be >= 0 (0 = every core)")
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
class GeneratorConfig:
    """Which diffusion model makes the images, and how it samples (DESIGN §1, METHODS §2–3)."""

    kind: str = "pixel"  # pixel (trained on the real split) | text2image | unclip
    model: str = ""  # Hugging Face id or local folder (text2image, unclip), or a .safetensors file
    # single file (text2image): the diffusers pipeline (folder or cached id) whose component
    # configs fit it, e.g. stabilityai/stable-diffusion-xl-base-1.0 for CosXL
    single_file_config: str = ""
    prediction_type: str = ""  # "" = the model's | epsilon | v_prediction (edm_euler: v)
    dtype: str = "float32"  # float32 | float16 | bfloat16
    device: str = "auto"  # auto (cuda when the actor has a GPU) | cpu | cuda
    # ddim | ddpm | pndm | euler | euler_ancestral | dpm_solver | edm_euler (CosXL's EDM sampler)
    scheduler: str = "ddim"
    num_steps: int = 30
    guidance_scale: float = 3.0  # classifier-free guidance (1 + γ in DiffCoRe-Mix terms)
    eta: float = 0.0  # DDIM η: 0 deterministic DDIM, 1 ancestral (DDPM-like) sampling
    image_size: int = 0  # output side in pixels; 0 = the model's own
    image_dropout: float = 0.0  # unCLIP: probability of dropping the image embedding
    negative_class: bool = False  # pixel model: guide away from the next class (negative prompt)
    lora: tuple[str, ...] = ()  # LoRA adapter folders (peft / diffusers format)
    lora_weights: tuple[float, ...] = ()  # one per adapter; empty = 1.0 each
    safety_checker: bool = False  # drop (and count) images the SD safety checker flags
    # The pixel model raysynth trains for the digits preset (cached in the run directory).
    pixel_train_steps: int = 1500
    pixel_channels: tuple[int, ...] = (32, 64)
    pixel_batch_size: int = 64
    # Where the driver puts the one copy of the model every node syncs from: a folder or a
    # pyarrow.fs URI (s3://, gs://) all nodes can read; "" = the run directory's models/.
    model_store: str = ""
    # GPU memory and speed (DESIGN §1): auto = slicing for SDXL or batches >= 8, tiling for SDXL.
    vae_slicing: str = "auto"  # auto | on | off
    vae_tiling: str = "auto"  # auto | on | off
    attention: str = "sdpa"  # sdpa (torch scaled_dot_product_attention) | default (the model's)
    compile: bool = False  # torch.compile the UNet (minutes of warm-up per actor)
    channels_last: bool = False  # UNet and VAE in channels-last memory format

    def __post_init__(self) -> None:
        g = "synthesis.generator"
        for key in ("vae_slicing", "vae_tiling"):
            _check_choice(getattr(self, key), f"{g}.{key}", ("auto", "on", "off"))
        _check_choice(self.attention, f"{g}.attention", ("sdpa", "default"))
        _check_choice(self.kind, f"{g}.kind", ("pixel", "text2image", "unclip"))
        if self.kind != "pixel":
            _check(bool(self.model), f"{g}.model", f"{g}.kind={self.kind} needs a model id or path")
        _check_choice(self.dtype, f"{g}.dtype", ("float32", "float16", "bfloat16"))
        _check_choice(self.device, f"{g}.device", ("auto", "cpu", "cuda"))
        _check_choice(
            self.scheduler,
            f"{g}.scheduler",
            ("ddim", "ddpm", "pndm", "euler", "euler_ancestral", "dpm_solver", "edm_euler"),
        )
        _check_choice(self.prediction_type, f"{g}.prediction_type", ("", "epsilon", "v_prediction"))
        _check(self.num_steps >= 1, f"{g}.num_steps", "must be >= 1")
        _check(self.guidance_scale >= 0, f"{g}.guidance_scale", "must be >= 0")
        _check(0 <= self.eta <= 1, f"{g}.eta", "must be in [0, 1]")
        _check(
            self.eta == 0 or self.scheduler == "ddim",
            f"{g}.eta",
            f"η applies to the ddim scheduler only; scheduler={self.scheduler} (set eta to 0)",
        )
        _check(0 <= self.image_dropout <= 1, f"{g}.image_dropout", "must be in [0, 1]")
        _check(
            not self.lora_weights or len(self.lora_weights) == len(self.lora),
            f"{g}.lora_weights",
            "give one weight per adapter in synthesis.generator.lora",
        )
        _check(self.pixel_train_steps >= 1, f"{g}.pixel_train_steps", "must be >= 1")


@dataclass(frozen=True)
class FeedbackConfig:
    """Classifier feedback guidance (paper 002): raise a criterion of a real-data classifier."""

    criterion: str = "none"  # none | loss | entropy | hardness
    scale: float = 0.0  # ω
    every: int = 5  # apply at every k-th sampling step
    rescale: bool = True  # ω·‖x_t‖/‖∇‖ (reference code) or plain ω·∇
    classifier: str = ""  # checkpoint folder; "" = the classifier raysynth trains on the real split
    # detached (the paper) | through_model (the CFG output re-run under autograd) |
    # conditional_branch (the UNet's conditional branch alone, the reference code)
    gradient: str = "detached"
    x0: str = "paper"  # paper (score x̂0) | reference_blend (x̂0·√(1−ᾱ) + x_t·(1−√(1−ᾱ)), min–max)

    def __post_init__(self) -> None:
        f = "synthesis.feedback"
        _check_choice(self.criterion, f"{f}.criterion", ("none", "loss", "entropy", "hardness"))
        _check(self.scale >= 0, f"{f}.scale", "must be >= 0")
        _check(self.every >= 1, f"{f}.every", "must be >= 1")
        gradients = ("detached", "through_model", "conditional_branch")
        _check_choice(self.gradient, f"{f}.gradient", gradients)
        _check_choice(self.x0, f"{f}.x0", ("paper", "reference_blend"))


@dataclass(frozen=True)
class LoopConfig:
    """Closed-loop allocation knobs (``synthesis.loop``): the measurement after each round (a
    linear probe or a quick classifier on real ∪ accepted-so-far, scored on the validation split) and
    the policies' exploration and stop rule (``raysynth.plan.allocation``)."""

    # what scores each round: auto (probe where the run trains a real-split classifier, else
    # classifier) | probe (a linear probe on that classifier's features: deterministic, < 1 s)
    # | classifier (the quick end-to-end classifier, measure_epochs epochs)
    measure: str = "auto"
    measure_epochs: int = 20  # epochs of the quick classifier (end_to_end.* otherwise)
    # the per-class trust closed_loop multiplies in: auto (probe where the flow is unicon or
    # classifier, the rounds are scored by the probe and the allocation is closed_loop, else
    # none) | probe (each round, a weight in {0, .25, .5, .75, 1} per class on its synthetic
    # rows, chosen on the validation split by coordinate ascent on the probe's log-likelihood)
    # | none (1 for every class)
    trust: str = "auto"
    # flow classifier: true trains the classifier with synthetic images on round(trust × n) of
    # each class's n accepted images (a stable hash of the sample id picks them) with the
    # synthetic batch share scaled by the share kept — as the probe weighs them — where the loop
    # learned a trust; false (default: on digits-lt over 3 seeds it moved few-class accuracy
    # +2.9, -5.5, +3.7 points, no gain on average) trains on every accepted image, the trust
    # steering only the allocation
    train_by_trust: bool = False
    explore: float = 0.1  # exploration weight (closed_loop, ucb)
    stop_z: float = 1.0  # closed_loop stops a class whose accuracy moved <= z standard errors
    # (or, after one round, fell by more than z standard errors)
    patience: int = 2  # ... over this many rounds in which it received images

    def __post_init__(self) -> None:
        _check_choice(self.measure, "synthesis.loop.measure", ("auto", "probe", "classifier"))
        _check(self.measure_epochs >= 1, "synthesis.loop.measure_epochs", "must be >= 1")
        _check_choice(self.trust, "synthesis.loop.trust", ("auto", "probe", "none"))
        _check(not (self.trust == "probe" and self.measure == "classifier"),
               "synthesis.loop.trust", "probe learns the trust on the probe's features; with "
               "synthesis.loop.measure=classifier there is no probe — set measure to probe (or "
               "auto) or trust to none")
        _check(self.explore >= 0, "synthesis.loop.explore", "must be >= 0")
        _check(self.stop_z >= 0, "synthesis.loop.stop_z", "must be >= 0")
        _check(self.patience >= 1, "synthesis.loop.patience", "must be >= 1")


ALLOCATIONS = ("fixed", "balance", "error", "entropy", "ucb", "closed_loop")


@dataclass(frozen=True)
class SynthesisConfig:
    """How many images per class, with which prompts, on which actors."""

    quota: str = "fraction"  # fixed (per_class) | fraction (of k) | top_up (to top_up_to)
    per_class: int = 0
    per_class_fraction: float = 0.5  # UniCon uses k/2
    top_up_to: int = 0  # top_up: every class to this many real + synthetic images
    prompt: str = "a photo of {class}"  # placeholders: {class}, {context}
    negative_prompt: str = ""
    context: str = ""  # dataset context, e.g. "Flowers" or "in the snow"
    # quotas per class × group (data.group / split-file groups), each group's name as {context}
    per_group: bool = False
    pool: Resources = field(default_factory=Resources)  # the generator actors
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)
    # Closed loop (issue #16): `budget` generated images (0 = the quotas' total) over `rounds`
    # rounds, split across classes by the `allocation` policy after measuring each round.
    # fixed + 1 round + budget 0 is today's behaviour (quota, then regenerate the rejected).
    budget: int = 0
    rounds: int = 1
    allocation: str = "fixed"  # fixed | balance | error | entropy | ucb | closed_loop
    loop: LoopConfig = field(default_factory=LoopConfig)

    @property
    def closed_loop(self) -> bool:
        """Whether the synthesis runs the measured allocation rounds instead of today's quota
        round (+ regeneration of the rejected)."""
        return not (self.allocation == "fixed" and self.rounds == 1 and self.budget == 0)

    def __post_init__(self) -> None:
        _check_choice(self.quota, "synthesis.quota", ("fixed", "fraction", "top_up"))
        _check_choice(self.allocation, "synthesis.allocation", ALLOCATIONS)
        _check(self.budget >= 0, "synthesis.budget", "must be >= 0 (0 = the quotas' total)")
        _check(self.rounds >= 1, "synthesis.rounds", "must be >= 1")
        _check(self.per_class >= 0, "synthesis.per_class", "must be >= 0")
        if self.quota == "fixed":
            _check(self.per_class >= 1, "synthesis.per_class", "quota=fixed needs per_class >= 1")
        _check(self.per_class_fraction >= 0, "synthesis.per_class_fraction", "must be >= 0")
        if self.quota == "top_up":
            _check(self.top_up_to >= 1, "synthesis.top_up_to", "quota=top_up needs top_up_to >= 1")
        _check(not self.per_group or "{context}" in self.prompt, "synthesis.per_group",
               "fills {context} with each group; put {context} in synthesis.prompt "
               "(e.g. \"{class} in {context}\")")
        self.pool.check("synthesis.pool")


@dataclass(frozen=True)
class FilterConfig:
    """CLIP / classifier-feature filtering against the real images of each class (METHODS §3)."""

    enabled: bool = True
    embedder: str = "auto"  # auto (classifier for <= 32 px, else open_clip) | classifier | open_clip
    clip_model: str = "ViT-B-32"
    clip_pretrained: str = "openai"  # open_clip pretrained tag, or a local checkpoint file
    threshold: str = "pairs"  # pairs (mean cosine of z real pairs) | fixed
    fixed_threshold: float = 0.6  # threshold=fixed: the DiffCoRe-Mix reference code's value
    # the real image a generated one is compared with: its plan row's conditioning image (the
    # paper's pair (I, G)) | the class's first real train image (the reference code)
    reference: str = "conditioning"
    pairs: int = 100  # z real–real pairs per class (all pairs when fewer)
    max_rounds: int = 3  # regeneration rounds for rejected images
    # the embedder's device, chosen in each embedder actor (independent of the generator's):
    # auto = the GPU filter.pool.gpus_per_actor gives it, else the CPU
    device: str = "auto"  # auto | cpu | cuda
    # the embedder actors (they sit beside the generator pool, hence half a CPU each)
    pool: Resources = field(default_factory=lambda: Resources(batch_size=64, cpus_per_actor=0.5))

    def __post_init__(self) -> None:
        _check_choice(self.embedder, "filter.embedder", ("auto", "classifier", "open_clip"))
        _check_choice(self.threshold, "filter.threshold", ("pairs", "fixed"))
        _check_choice(self.device, "filter.device", ("auto", "cpu", "cuda"))
        _check_choice(self.reference, "filter.reference", ("conditioning", "first_real"))
        _check(
            -1 <= self.fixed_threshold <= 1, "filter.fixed_threshold", "must be a cosine in [-1, 1]"
        )
        _check(self.pairs >= 1, "filter.pairs", "must be >= 1")
        _check(self.max_rounds >= 0, "filter.max_rounds", "must be >= 0")
        self.pool.check("filter.pool")


@dataclass(frozen=True)
class MixConfig:
    """DiffCoRe-Mix pixel/patch mixing of real and accepted synthetic images (METHODS §3)."""

    enabled: bool = False
    fraction: float = 0.5  # share of the training data that is mixed (DiffCoRe-Mix-50 / -100)
    # random: a random accepted synthetic image of the same class | own: the image generated
    # from it (the plan row's cond_id; eq. 6-8), read beside it from streamed tables
    pairing: str = "random"

    def __post_init__(self) -> None:
        _check(0 < self.fraction <= 1, "mix.fraction", "must be in (0, 1]")
        _check_choice(self.pairing, "mix.pairing", ("random", "own"))


@dataclass(frozen=True)
class AirLoraConfig:
    """AiR step 2: LoRA on the generator's attention projections, trained on the top-K
    pseudo-labelled images per class with the prompt ``"{synthesis.context} {class}"``."""

    rank: int = 4
    alpha: float = 4.0
    steps: int = 500
    learning_rate: float = 1e-4
    batch_size: int = 4

    def __post_init__(self) -> None:
        for key in ("rank", "steps", "batch_size"):
            _check(getattr(self, key) >= 1, f"air.lora.{key}", "must be >= 1")
        _check(self.alpha > 0, "air.lora.alpha", "must be > 0")
        _check(self.learning_rate > 0, "air.lora.learning_rate", "must be > 0")


@dataclass(frozen=True)
class AirConfig:
    """AiR (paper 001, METHODS §4): CLIP zero-shot pseudo-labels of unlabeled images, a LoRA-
    adapted generator, synthetic prototypes fused into the pseudo-labels, CoOp prompt learning.

    The unlabeled images are the train split with its labels hidden (they are read only to
    measure pseudo-label accuracy) or, with ``unlabeled_path``, a folder / Parquet table of
    images without labels; the test split of ``data`` measures classification accuracy. The
    adapted generator makes ``synthesis.per_class`` images per class (M) from
    ``synthesis.prompt``; the most representative one per class is that class's prototype."""

    clip_model: str = "ViT-B-32"
    clip_pretrained: str = "openai"  # open_clip pretrained tag, or a local checkpoint file
    templates: tuple[str, ...] = ("a photo of a {c}.",)
    temperature: float = 0.01  # τ of the zero-shot and prototype softmaxes
    top_k: int = 16  # most confident pseudo-labelled images per class (LoRA data)
    unlabeled_path: str = ""  # empty = the train split, labels hidden
    lora: AirLoraConfig = field(default_factory=AirLoraConfig)
    lam: float = 1.0  # λ of p* = p + λ p̂
    beta: float = 1.0  # β of L = CE(x, ỹ*) + β CE(x̂, y)
    n_ctx: int = 16  # learnable context tokens
    iterations: int = 10  # prompt-learning iterations, pseudo-labels refreshed after each
    steps_per_iteration: int = 50  # full-batch SGD steps on the context per iteration
    learning_rate: float = 2e-3
    schedule: str = "constant"  # constant | cosine (over iterations × steps_per_iteration)
    warmup_steps: int = 0  # linear warm-up of the prompt learning rate (optimiser steps)
    search: bool = False  # search λ and β with Ray Tune (tune.num_samples trials, on val)

    def __post_init__(self) -> None:
        _check(self.temperature > 0, "air.temperature", "must be > 0")
        _check(len(self.templates) >= 1, "air.templates", "give at least one template")
        for i, t in enumerate(self.templates):
            _check(
                "{c}" in t or "{}" in t, f"air.templates[{i}]",
                f"{t!r} must mark the class name with {{c}} (or {{}})",
            )
        for key in ("top_k", "n_ctx", "iterations", "steps_per_iteration"):
            _check(getattr(self, key) >= 1, f"air.{key}", "must be >= 1")
        _check(self.lam >= 0, "air.lam", "must be >= 0")
        _check(self.beta >= 0, "air.beta", "must be >= 0")
        _check(self.learning_rate > 0, "air.learning_rate", "must be > 0")
        _check_choice(self.schedule, "air.schedule", ("constant", "cosine"))
        _check(self.warmup_steps >= 0, "air.warmup_steps", "must be >= 0")


@dataclass(frozen=True)
class RunConfig:
    """The whole run: one section per stage."""

    preset: str = "custom"
    # unicon: contrastive encoder with searched per-class weights (paper 000);
    # classifier: end-to-end classifier on real ∪ synthetic, balanced softmax (paper 002, 003);
    # air: pseudo-labels + synthetic prototypes + prompt learning on unlabeled images (paper 001).
    flow: str = "unicon"
    seed: int = 0
    budget: str = "default"
    data: DataConfig = field(default_factory=DataConfig)
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    mix: MixConfig = field(default_factory=MixConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    end_to_end: EndToEndConfig = field(default_factory=EndToEndConfig)
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    train: ScalingConfig = field(default_factory=ScalingConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    air: AirConfig = field(default_factory=AirConfig)

    def __post_init__(self) -> None:
        _check_choice(self.budget, "budget", BUDGETS)
        _check_choice(self.flow, "flow", ("unicon", "classifier", "air"))
        _check(self.seed >= 0, "seed", "must be >= 0")
        _check(not (self.mix.enabled and self.mix.pairing == "own" and self.train.stream == "never"),
               "mix.pairing", "own reads each real image's counterpart beside it from the "
               "streamed tables; set train.stream to auto or always, or use mix.pairing=random")


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
        "synthesis.generator.pixel_train_steps": 300,
        "synthesis.generator.num_steps": 20,
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
