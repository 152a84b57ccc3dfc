"""``raysynth bench guidance``: the cost of feedback guidance relative to unguided sampling.

Samples the same batch (same labels and seeds) with the ``digits`` pixel model's architecture
(:class:`~raysynth.generate.pixel.PixelDiffusionConfig` defaults, freshly initialised: the cost
does not depend on the weights) for ``num_steps`` DDIM steps with classifier-free guidance, once
unguided and once with feedback guidance every ``every``-th step (METHODS §2: 6 of 30), the
classifier being raysynth's small CNN. Repeats are interleaved and the median of each is
reported, so machine noise hits all alike. ``ratio`` = guided / unguided time (target ≤ 2) with
the default detached gradient; ``ratio_through_model`` the same with the UNet backpropagated too
(``FeedbackGuidance(gradient="through_model")``).

``latent`` is the same comparison for a latent model, through the product's generator: a small
Stable Diffusion 1.x pipeline built from config (:mod:`raysynth.bench.tiny_sd`: 32-pixel images,
16×16 latents, UNet and VAE of 32/64 channels), saved and loaded back with ``from_pretrained``;
``Text2ImageGenerator.generate`` on one batch of plan rows with ``synthesis.feedback`` off and on
(the classifier sees the VAE-decoded prediction of the clean image, so every guided step also
backpropagates through the VAE decoder). ``latent.ratio`` = guided / unguided.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from raysynth.bench import emit
from raysynth.devices import resolve_device
from raysynth.generate.guidance import FeedbackGuidance
from raysynth.generate.pixel import PixelDiffusionConfig, build_unet, sampling_scheduler_config
from raysynth.generate.sampling import sample_pixel
from raysynth.train.models import build_model, encoder_config


def _timed(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def median_times(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Each of ``fns`` called once to warm up (allocator, kernels, thread pools), then
    ``repeats`` rounds of one timed call each, interleaved: the median seconds of each."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(_timed(fn))
    return {name: statistics.median(ts) for name, ts in times.items()}


# -- the pixel model ---------------------------------------------------------------------------


def _pixel_models(cfg: PixelDiffusionConfig, device: str) -> tuple[torch.nn.Module, Any]:
    """The pixel UNet and raysynth's small-CNN classifier, freshly initialised (seed 0)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = build_unet(cfg).to(device).eval().requires_grad_(False)
        clf_cfg = encoder_config("small_cnn", cfg.in_channels, cfg.image_size, 32, 128)
        clf = build_model({"kind": "classifier", "encoder": clf_cfg, "num_classes": 10})
        clf = clf.to(device).eval().requires_grad_(False)
    return unet, clf


def _pixel_samplers(
    batch: int, num_steps: int, every: int, criterion: str, device: str
) -> dict[str, Callable[[], Any]]:
    """One call sampling the same batch per variant: unguided, guided (detached gradient) and
    guided through the model."""
    cfg = PixelDiffusionConfig()
    unet, clf = _pixel_models(cfg, device)
    sched_cfg = sampling_scheduler_config(cfg)
    labels = [i % cfg.num_classes for i in range(batch)]
    seeds = list(range(batch))
    variants = {
        "unguided": None,
        "guided": FeedbackGuidance(criterion, 0.05, every=every, classifier=clf),
        "through_model": FeedbackGuidance(
            criterion, 0.05, every=every, classifier=clf, gradient="through_model"
        ),
    }

    def sample(feedback):
        kw = {"num_steps": num_steps, "feedback": feedback, "device": device}
        return lambda: sample_pixel(unet, sched_cfg, labels, seeds, **kw)

    return {name: sample(fb) for name, fb in variants.items()}


def run(
    out: str | None = None,
    batch: int = 32,
    num_steps: int = 30,
    every: int = 5,
    criterion: str = "entropy",
    repeats: int = 5,
    latent: bool = True,
    latent_batch: int = 8,
) -> dict:
    """Run the bench; print its JSON and write it to ``out`` (a file, or a folder for
    ``bench-guidance.json``) when given. Returns the result dict."""
    device = str(resolve_device("auto"))
    med = median_times(_pixel_samplers(batch, num_steps, every, criterion, device), repeats)
    result = {
        "name": "guidance",
        "ratio": med["guided"] / med["unguided"],
        "ratio_through_model": med["through_model"] / med["unguided"],
        "guided_s": med["guided"],
        "through_model_s": med["through_model"],
        "unguided_s": med["unguided"],
        "criterion": criterion,
        "every": every,
        "guided_steps": len([i for i in range(num_steps) if i % every == 0]),
        "num_steps": num_steps,
        "batch": batch,
        "repeats": repeats,
        "device": device,
        "threads": torch.get_num_threads(),
    }
    if latent:
        result["latent"] = latent_ratio(
            batch=latent_batch,
            num_steps=num_steps,
            every=every,
            criterion=criterion,
            repeats=repeats,
        )
        result["latent_ratio"] = result["latent"]["ratio"]
    return emit(result, out)


# -- the latent model --------------------------------------------------------------------------


def _classifier_checkpoint(folder: Path, classes: list[str]) -> Path:
    """raysynth's small CNN for 32-pixel RGB images, freshly initialised (seed 0), saved."""
    from raysynth.train.checkpoint import write_checkpoint

    clf_cfg = {
        "kind": "classifier",
        "encoder": encoder_config("small_cnn", 3, 32, 32, 128),
        "num_classes": len(classes),
    }
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return write_checkpoint(folder, build_model(clf_cfg).eval(), clf_cfg)


def _latent_generators(
    folder: Path, classes: list[str], device: str, num_steps: int, criterion: str, every: int
) -> dict[str, Any]:
    """The product's text-to-image generator on a small SD saved in ``folder``, with
    ``synthesis.feedback`` off (``unguided``) and on (``guided``)."""
    from raysynth.bench.tiny_sd import save_small_sd
    from raysynth.config.schema import FeedbackConfig, GeneratorConfig
    from raysynth.generate.factory import build_generator
    from raysynth.generate.generators import GeneratorSpec

    model = save_small_sd(folder / "sd", image_size=32)
    clf = _classifier_checkpoint(folder / "clf", classes)
    gen_cfg = GeneratorConfig(kind="text2image", model=model, device=device, num_steps=num_steps)
    feedback = {
        "unguided": FeedbackConfig(),
        "guided": FeedbackConfig(criterion=criterion, scale=0.05, every=every),
    }
    return {
        name: build_generator(
            GeneratorSpec(gen_cfg, fb, classes, classifier_folder=str(clf), image_size=32)
        )
        for name, fb in feedback.items()
    }


def _plan(classes: list[str], batch: int) -> list[dict]:
    """``batch`` plan rows spread over ``classes``, one (fictitious) real image per class."""
    from raysynth.plan.rows import make_plan

    counts = {c: batch // len(classes) + (c < batch % len(classes)) for c in range(len(classes))}
    ids = {c: [f"real-{c}"] for c in range(len(classes))}
    return make_plan(classes, ids, {c: n for c, n in counts.items() if n}, 0)


def latent_ratio(
    batch: int = 8,
    num_steps: int = 30,
    every: int = 5,
    criterion: str = "entropy",
    repeats: int = 3,
) -> dict:
    """Guided / unguided time of the product's text-to-image generator on a small SD model."""
    device = str(resolve_device("auto"))
    classes = [f"class{c}" for c in range(10)]
    with tempfile.TemporaryDirectory(prefix="raysynth-bench-guidance-") as tmp:
        gens = _latent_generators(Path(tmp), classes, device, num_steps, criterion, every)
        rows = _plan(classes, batch)
        med = median_times(
            {name: (lambda g=g: g.generate(rows)) for name, g in gens.items()}, repeats
        )
    return {
        "ratio": med["guided"] / med["unguided"],
        "guided_s": med["guided"],
        "unguided_s": med["unguided"],
        "model": "SD 1.x from config: 32 px, 16x16 latents, UNet/VAE channels (32, 64)",
        "batch": len(rows),
        "num_steps": num_steps,
        "every": every,
        "repeats": repeats,
    }
