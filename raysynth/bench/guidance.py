"""``raysynth bench guidance``: the cost of feedback guidance relative to unguided sampling.

Samples the same batch (same labels and seeds) with the ``digits`` pixel model's architecture
(:class:`~raysynth.synthesis.pixel.PixelDiffusionConfig` defaults, freshly initialised: the cost
does not depend on the weights) for ``num_steps`` DDIM steps with classifier-free guidance, once
unguided and once with feedback guidance every ``every``-th step (METHODS §2: 6 of 30), the
classifier being raysynth's small CNN. Repeats are interleaved and the median of each is
reported, so machine noise hits all alike. ``ratio`` = guided / unguided time (target ≤ 2) with
the default detached gradient; ``ratio_through_model`` the same with the UNet backpropagated too
(``FeedbackGuidance(through_model=True)``).
"""

from __future__ import annotations

import statistics
import time

import torch

from raysynth.bench import emit
from raysynth.synthesis.guidance import FeedbackGuidance
from raysynth.synthesis.pixel import PixelDiffusionConfig, build_unet, sampling_scheduler_config
from raysynth.synthesis.sampling import sample_pixel
from raysynth.train.models import build_model, encoder_config


def _timed(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def run(
    out: str | None = None,
    batch: int = 32,
    num_steps: int = 30,
    every: int = 5,
    criterion: str = "entropy",
    repeats: int = 5,
) -> dict:
    """Run the bench; print its JSON and write it to ``out`` (a file, or a folder for
    ``bench-guidance.json``) when given. Returns the result dict."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = PixelDiffusionConfig()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = build_unet(cfg).to(device).eval().requires_grad_(False)
        clf_cfg = encoder_config("small_cnn", cfg.in_channels, cfg.image_size, 32, 128)
        clf = build_model({"kind": "classifier", "encoder": clf_cfg, "num_classes": 10})
        clf = clf.to(device).eval().requires_grad_(False)
    sched_cfg = sampling_scheduler_config(cfg)
    labels = [i % cfg.num_classes for i in range(batch)]
    seeds = list(range(batch))
    variants = {
        "unguided": None,
        "guided": FeedbackGuidance(criterion, 0.05, every=every, classifier=clf),
        "through_model": FeedbackGuidance(
            criterion, 0.05, every=every, classifier=clf, through_model=True
        ),
    }

    def sample(feedback):
        kw = {"num_steps": num_steps, "feedback": feedback, "device": device}
        return lambda: sample_pixel(unet, sched_cfg, labels, seeds, **kw)

    runs = {name: sample(fb) for name, fb in variants.items()}
    for fn in runs.values():  # warm-up: allocator, kernels, thread pools
        fn()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            times[name].append(_timed(fn))
    med = {name: statistics.median(ts) for name, ts in times.items()}

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
    return emit(result, out)
