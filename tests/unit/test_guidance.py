"""Feedback guidance: predicted x0, the three criteria, class Gaussians, and guided sampling."""

import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from tiny_models import one_thread  # noqa: F401

from raysynth.errors import ConfigError
from raysynth.generate.criteria import (
    ClassGaussians,
    class_gaussians,
    criterion_entropy,
    criterion_hardness,
    criterion_loss,
)
from raysynth.generate.guidance import FeedbackGuidance, predicted_x0
from raysynth.generate.pixel import PixelDiffusionConfig, build_unet, sampling_scheduler_config
from raysynth.generate.sampling import sample_pixel

pytestmark = pytest.mark.usefixtures("one_thread")

NUM_CLASSES = 3
TINY = PixelDiffusionConfig(
    num_classes=NUM_CLASSES, block_out_channels=(4, 8), layers_per_block=1, norm_num_groups=4
)


class ToyClassifier(torch.nn.Module):
    """Linear features of the flattened 1×8×8 image, then linear logits."""

    def __init__(self, feat_dim: int = 4) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.proj = torch.nn.Parameter(torch.randn(64, feat_dim, generator=gen) / 8)
        self.head = torch.nn.Parameter(torch.randn(feat_dim, NUM_CLASSES, generator=gen))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x) @ self.head


def _toy_gaussians(clf: ToyClassifier) -> ClassGaussians:
    gen = torch.Generator().manual_seed(1)
    imgs = torch.rand(30, 1, 8, 8, generator=gen)
    labels = torch.arange(30) % NUM_CLASSES
    return class_gaussians(clf.features(imgs).detach(), labels, NUM_CLASSES)


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return build_unet(TINY).eval().requires_grad_(False)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_predicted_x0_matches_the_diffusers_scheduler(prediction_type):
    sched = DDIMScheduler(prediction_type=prediction_type, clip_sample=False)
    sched.set_timesteps(10)
    gen = torch.Generator().manual_seed(0)
    x_t, out = torch.randn(2, 1, 8, 8, generator=gen), torch.randn(2, 1, 8, 8, generator=gen)
    for t in sched.timesteps[[0, 4, 9]]:
        want = sched.step(out, t, x_t).pred_original_sample
        got = predicted_x0(x_t, out, sched.alphas_cumprod[t], prediction_type)
        torch.testing.assert_close(got, want)


def test_predicted_x0_per_sample_alphas_and_other_types():
    x_t, out = torch.ones(2, 1, 2, 2), torch.full((2, 1, 2, 2), 0.5)
    a = torch.tensor([0.25, 0.64])
    got = predicted_x0(x_t, out, a, "epsilon")
    torch.testing.assert_close(got[0], (x_t[0] - math.sqrt(0.75) * 0.5) / 0.5)
    torch.testing.assert_close(got[1], (x_t[1] - 0.6 * 0.5) / 0.8)
    assert predicted_x0(x_t, out, a, "sample") is out
    with pytest.raises(ConfigError, match="x0"):
        predicted_x0(x_t, out, a, "x0")


def test_loss_and_entropy_criteria_by_hand():
    logits = torch.tensor([[0.0, 0.0, 0.0], [2.0, 0.0, -1.0]])
    y = torch.tensor([1, 0])
    p = torch.softmax(logits, -1)
    torch.testing.assert_close(criterion_loss(logits, y), -torch.log(p[[0, 1], [1, 0]]))
    torch.testing.assert_close(criterion_entropy(logits)[0], torch.tensor(math.log(3)))
    torch.testing.assert_close(criterion_entropy(logits)[1], -(p[1] * p[1].log()).sum())


def test_hardness_equals_a_hand_computed_2d_gaussian():
    mean = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    a, b, d = 2.0, 0.5, 1.0  # Σ_0 = [[a, b], [b, d]]
    det = a * d - b * b
    inv = torch.tensor([[d, -b], [-b, a]]) / det
    precision = torch.stack([inv, torch.eye(2)])
    logdet = torch.tensor([math.log(det), 0.0])
    phi = torch.tensor([[2.0, 1.0]])
    dx, dy = 2.0 - 1.0, 1.0 - 2.0
    maha = (d * dx * dx - 2 * b * dx * dy + a * dy * dy) / det
    want = 0.5 * (maha + math.log(det) + 2 * math.log(2 * math.pi))
    got = criterion_hardness(phi, torch.tensor([0]), mean, precision, logdet)
    torch.testing.assert_close(got, torch.tensor([want]))


def test_class_gaussians_match_ledoit_wolf_and_stay_finite_when_singular():
    covariance = pytest.importorskip("sklearn.covariance")
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(40, 3, generator=gen) * torch.tensor([1.0, 2.0, 0.5])
    labels = torch.arange(40) % 2
    g = class_gaussians(feats, labels, 2, eps=0.0)
    for c in range(2):
        rows = feats[labels == c].double().numpy()
        want = torch.from_numpy(covariance.ledoit_wolf(rows)[0]).float()
        torch.testing.assert_close(torch.linalg.inv(g.precision[c]), want, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(g.logdet[c], torch.logdet(want), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(g.mean[c], feats[labels == c].mean(0))
    # fewer samples than dimensions, a constant feature, and a class with a single sample
    few = torch.randn(5, 10, generator=gen)
    few[:, 3] = 1.0
    g = class_gaussians(few, torch.tensor([0, 0, 0, 1, 0]), 2)
    assert torch.isfinite(g.precision).all() and torch.isfinite(g.logdet).all()
    assert (torch.linalg.eigvalsh(g.precision) > 0).all()
    g_fixed = class_gaussians(few, torch.tensor([0, 0, 0, 1, 0]), 2, shrinkage=0.3)
    assert torch.isfinite(g_fixed.precision).all()


def _toy_step_inputs():
    gen = torch.Generator().manual_seed(3)
    x_t = torch.randn(4, 1, 8, 8, generator=gen)
    out = torch.randn(4, 1, 8, 8, generator=gen)
    alphas = torch.linspace(0.99, 0.01, 100)
    return x_t, out, alphas, torch.tensor([0, 1, 2, 0])


@pytest.mark.parametrize("criterion", ["loss", "entropy", "hardness"])
@pytest.mark.parametrize("rescale,scale", [(True, 0.01), (False, 0.05)])
def test_one_guided_step_raises_the_criterion(criterion, rescale, scale):
    clf = ToyClassifier()
    fg = FeedbackGuidance(
        criterion, scale, rescale=rescale, classifier=clf, gaussians=_toy_gaussians(clf)
    )
    x_t, out, alphas, y = _toy_step_inputs()
    t = 40
    x_new, before = fg.apply(0, x_t, out, t, alphas, "epsilon", y)
    with torch.no_grad():
        torch.testing.assert_close(
            before, fg.evaluate(predicted_x0(x_t, out, alphas[t], "epsilon"), y)
        )
        after = fg.evaluate(predicted_x0(x_new, out, alphas[t], "epsilon"), y)
    assert (after > before).all(), (before, after)


def test_rescaled_step_has_norm_scale_times_x_t_per_sample():
    fg = FeedbackGuidance("entropy", 0.1, classifier=ToyClassifier())
    x_t, out, alphas, y = _toy_step_inputs()
    x_t[1] *= 5  # per-sample, not batch, norms
    x_new, _ = fg.apply(0, x_t, out, 10, alphas, "v_prediction", y)
    torch.testing.assert_close(
        (x_new - x_t).flatten(1).norm(dim=1), 0.1 * x_t.flatten(1).norm(dim=1)
    )


def test_guidance_runs_only_every_kth_step_and_scale_zero_is_a_no_op():
    fg = FeedbackGuidance("loss", 0.1, every=5, classifier=ToyClassifier())
    x_t, out, alphas, y = _toy_step_inputs()
    assert [i for i in range(30) if fg.is_active(i)] == [0, 5, 10, 15, 20, 25]
    same, value = fg.apply(3, x_t, out, 10, alphas, "epsilon", y)
    assert same is x_t and value is None
    off = FeedbackGuidance("loss", 0.0, classifier=ToyClassifier())
    same, value = off.apply(0, x_t, out, 10, alphas, "epsilon", y)
    assert same is x_t and value is None


def test_through_model_with_a_constant_model_equals_the_detached_gradient():
    clf = ToyClassifier()
    x_t, out, alphas, y = _toy_step_inputs()
    plain = FeedbackGuidance("entropy", 0.1, classifier=clf)
    through = FeedbackGuidance("entropy", 0.1, classifier=clf, gradient="through_model")
    a, _ = plain.apply(0, x_t, out, 10, alphas, "epsilon", y)
    b, _ = through.apply(0, x_t, out, 10, alphas, "epsilon", y, model_fn=lambda z: out)
    torch.testing.assert_close(a, b)
    c, _ = through.apply(0, x_t, out, 10, alphas, "epsilon", y, model_fn=lambda z: out + 0.5 * z)
    assert not torch.allclose(a, c)


def test_scale_zero_gives_exactly_the_unguided_images(unet):
    sched_cfg = sampling_scheduler_config(TINY)
    kw = {"labels": [0, 1, 2], "seeds": [1, 2, 3], "num_steps": 6}
    plain, crit = sample_pixel(unet, sched_cfg, **kw)
    assert crit is None
    fg = FeedbackGuidance("entropy", 0.0, every=1, classifier=ToyClassifier())
    zero, crit = sample_pixel(unet, sched_cfg, feedback=fg, **kw)
    assert np.array_equal(plain, zero)
    assert crit.shape == (3,) and np.isfinite(crit).all()
    fg_on = FeedbackGuidance("entropy", 0.5, every=2, classifier=ToyClassifier())
    guided, crit_on = sample_pixel(unet, sched_cfg, feedback=fg_on, **kw)
    assert guided.shape == plain.shape and not np.array_equal(guided, plain)
    single, _ = sample_pixel(unet, sched_cfg, [2], [3], num_steps=6, feedback=fg_on)
    assert np.array_equal(single[0], guided[2])  # guidance is per sample too


def test_config_errors():
    with pytest.raises(ConfigError, match="criterion"):
        FeedbackGuidance("margin", 1.0, classifier=ToyClassifier())
    with pytest.raises(ConfigError, match="gaussians"):
        FeedbackGuidance("hardness", 1.0, classifier=ToyClassifier())
    with pytest.raises(ConfigError, match="classifier"):
        FeedbackGuidance("loss", 1.0)
    with pytest.raises(ConfigError, match="every"):
        FeedbackGuidance("loss", 1.0, every=0, classifier=ToyClassifier())
