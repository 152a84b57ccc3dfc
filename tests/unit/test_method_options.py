"""The methods' options (README "Method options"), each against a hand computation:
``synthesis.feedback.gradient`` (detached | through_model | conditional_branch),
``synthesis.feedback.x0`` (paper | reference_blend), ``filter.fixed_threshold`` (0.6) and
``filter.reference`` (conditioning | first_real)."""

import io

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import one_thread  # noqa: F401

from raysynth import columns as col
from raysynth.config.schema import FeedbackConfig, FilterConfig
from raysynth.errors import ConfigError
from raysynth.filter.rounds import RealTrain, thresholds
from raysynth.filter.stage import FilterScorer, FilterSpec
from raysynth.filter.threshold import first_real_ids, reference_ids
from raysynth.generate.classifier_free import conditional_half
from raysynth.generate.guidance import FeedbackGuidance
from raysynth.generate.pixel import PixelDiffusionConfig, build_unet, sampling_scheduler_config
from raysynth.generate.sampling import sample_pixel

pytestmark = pytest.mark.usefixtures("one_thread")

# one sample of 2×2 pixels; a linear classifier on the classifier input (pixels mapped to [0, 1])
X_T = np.array([0.3, -1.2, 0.8, 0.1])
W = np.array([[0.5, -1.0, 2.0, 0.3], [-0.7, 0.4, 0.1, 1.5], [1.1, 0.2, -0.6, -0.9]])
Y = 1
ABAR = 0.64  # √ᾱ = 0.8, √(1−ᾱ) = 0.6
S = 3.0  # classifier-free guidance scale
COND_W, COND_B, UNC_W, UNC_B = 0.5, 0.2, -0.3, 0.1  # ε_c = 0.5x + 0.2, ε_u = −0.3x + 0.1


class Linear(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ torch.tensor(W, dtype=x.dtype).T


def _eps_cond(x):
    return COND_W * x + COND_B


def _eps_guided(x):
    unc = UNC_W * x + UNC_B
    return unc + S * (_eps_cond(x) - unc)


def _hand(gradient: str, x0_form: str) -> np.ndarray:
    """∇_x CE(W·u(x), y) by the chain rule, written out per option (u: the classifier input)."""
    sa, sb = np.sqrt(ABAR), np.sqrt(1 - ABAR)
    eps = _eps_cond(X_T) if gradient == "conditional_branch" else _eps_guided(X_T)
    slope = {"detached": 0.0, "through_model": UNC_W + S * (COND_W - UNC_W),
             "conditional_branch": COND_W}[gradient]  # dε/dx
    x0 = (X_T - sb * eps) / sa
    dx0 = (1 - sb * slope) / sa
    if x0_form == "paper":
        u, du = (x0 + 1) / 2, dx0 / 2  # the classifier sees x̂0 in [0, 1]
    else:  # the reference: s = x̂0·√(1−ᾱ) + x·(1−√(1−ᾱ)), min–max rescaled (range detached)
        s = x0 * sb + X_T * (1 - sb)
        u, du = (s - s.min()) / (s.max() - s.min()), (sb * dx0 + 1 - sb) / (s.max() - s.min())
    logits = W @ u
    p = np.exp(logits - logits.max())
    p /= p.sum()
    return W.T @ (p - np.eye(3)[Y]) * du


def _apply(gradient: str, x0_form: str, rescale: bool = False) -> np.ndarray:
    fg = FeedbackGuidance("loss", 1.0, every=1, rescale=rescale, classifier=Linear(),
                          gradient=gradient, x0=x0_form)
    x = torch.tensor(X_T, dtype=torch.float64).view(1, 1, 2, 2)
    new, _ = fg.apply(0, x, _eps_guided(x), 0, torch.tensor([ABAR], dtype=torch.float64),
                      "epsilon", torch.tensor([Y]), model_fn=_eps_guided, cond_fn=_eps_cond)
    return (new - x).flatten().numpy()


@pytest.mark.parametrize("x0_form", ["paper", "reference_blend"])
@pytest.mark.parametrize("gradient", ["detached", "through_model", "conditional_branch"])
def test_feedback_gradient_and_x0_options_equal_the_hand_computation(gradient, x0_form):
    np.testing.assert_allclose(_apply(gradient, x0_form), _hand(gradient, x0_form), rtol=1e-5)  # the criterion runs in float32


def test_the_reference_configuration_with_its_rescaling():
    """The reference code's step: conditional branch, blended x̂0, min–max, ω·‖x_t‖/‖∇‖."""
    g = _hand("conditional_branch", "reference_blend")
    want = g / np.linalg.norm(g) * np.linalg.norm(X_T)
    got = _apply("conditional_branch", "reference_blend", rescale=True)
    np.testing.assert_allclose(got, want, rtol=1e-5)  # the criterion runs in float32
    # the options differ from each other here (else the test above could not tell them apart)
    assert not np.allclose(_hand("conditional_branch", "paper"), _hand("through_model", "paper"))
    assert not np.allclose(_hand("detached", "paper"), _hand("detached", "reference_blend"))


def test_feedback_options_are_checked():
    assert (FeedbackConfig().gradient, FeedbackConfig().x0) == ("detached", "paper")
    with pytest.raises(ConfigError, match="synthesis.feedback.gradient"):
        FeedbackConfig(gradient="unet")
    with pytest.raises(ConfigError, match="synthesis.feedback.x0"):
        FeedbackConfig(x0="blend")
    fg = FeedbackGuidance("loss", 1.0, every=1, classifier=Linear(), gradient="conditional_branch")
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ConfigError, match="cond_fn"):
        fg.apply(0, x, x, 0, torch.tensor([ABAR]), "epsilon", torch.tensor([Y]), model_fn=_eps_cond)


def test_conditional_half_takes_the_conditional_rows_of_stacked_conditioning():
    stacked = {"encoder_hidden_states": torch.arange(4.0).view(4, 1),
               "added_cond_kwargs": {"time_ids": torch.tensor([[0.0], [1.0], [2.0], [3.0]])},
               "other": 7}
    half = conditional_half(stacked, use_uncond=True, uncond_first=True)
    assert half["encoder_hidden_states"].flatten().tolist() == [2.0, 3.0]
    assert half["added_cond_kwargs"]["time_ids"].flatten().tolist() == [2.0, 3.0]
    assert half["other"] == 7
    first = conditional_half(stacked["encoder_hidden_states"], True, uncond_first=False)
    assert first.flatten().tolist() == [0.0, 1.0]
    assert conditional_half(stacked, use_uncond=False, uncond_first=True) is stacked


def test_pixel_sampler_feeds_the_conditional_branch_to_the_guidance():
    """Without classifier-free guidance (γ = 1) the conditional branch is the guided model, so
    both gradients give the same images; with γ = 3 they differ."""
    cfg = PixelDiffusionConfig(num_classes=3, block_out_channels=(4, 8), layers_per_block=1,
                               norm_num_groups=4)
    torch.manual_seed(0)
    unet = build_unet(cfg).eval().requires_grad_(False)
    sched = sampling_scheduler_config(cfg)

    class Clf(torch.nn.Module):
        def forward(self, x):
            return x.flatten(1)[:, :3] * 4

    def images(gradient, gamma):
        fg = FeedbackGuidance("entropy", 0.5, every=2, classifier=Clf(), gradient=gradient)
        return sample_pixel(unet, sched, [0, 2], [1, 2], num_steps=4, guidance_scale=gamma,
                            feedback=fg)[0]

    assert np.array_equal(images("through_model", 1.0), images("conditional_branch", 1.0))
    assert not np.array_equal(images("through_model", 3.0), images("conditional_branch", 3.0))


# -- filter ---------------------------------------------------------------------------------------


def _png(v: list[float]) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.array([v], np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


class PixelEmbedder:
    """A real (trivial) embedder: an image's pixels are its embedding."""

    def embed_images(self, pngs):
        return np.stack([np.asarray(Image.open(io.BytesIO(p)), np.float64).ravel() for p in pngs])


def _score(reference: str) -> dict:
    real = {"a0": np.array([10.0, 0.0]), "a1": np.array([0.0, 10.0]),
            "b0": np.array([3.0, 4.0]), "b1": np.array([4.0, 3.0])}
    ids_by_class = {0: ["a0", "a1"], 1: ["b0", "b1"]}
    first = first_real_ids(ids_by_class) if reference == "first_real" else None
    tau = thresholds(FilterConfig(threshold="fixed", reference=reference),
                     RealTrain(("a", "b"), ids_by_class, 1, 2, ""), real, 0)
    scorer = FilterScorer.__new__(FilterScorer)
    scorer.spec = FilterSpec(None, real, tau, ("a", "b"), first)
    scorer.embedder = PixelEmbedder()
    batch = {col.SAMPLE_ID: np.array(["g0", "g1"]), col.IMAGE: np.array([_png([8, 6]), _png([1, 7])],
             dtype=object), col.LABEL: np.array([0, 1]), col.COND_ID: np.array(["a1", "b1"])}
    return scorer(batch)


def test_fixed_threshold_default_is_the_reference_codes_0_6():
    assert FilterConfig().fixed_threshold == 0.6 and FilterConfig().reference == "conditioning"
    with pytest.raises(ConfigError, match="filter.reference"):
        FilterConfig(reference="centroid")
    with pytest.raises(ConfigError, match="filter.fixed_threshold"):
        FilterConfig(fixed_threshold=1.5)


@pytest.mark.parametrize("reference", ["conditioning", "first_real"])
def test_filter_reference_compares_with_the_hand_chosen_real_image(reference):
    out = _score(reference)
    g0, g1 = np.array([8.0, 6.0]), np.array([1.0, 7.0])

    def cos(a, b):
        return a @ b / np.linalg.norm(a) / np.linalg.norm(b)

    if reference == "conditioning":  # each row's own conditioning image: a1, b1
        want = [cos(g0, np.array([0.0, 10.0])), cos(g1, np.array([4.0, 3.0]))]  # 0.6, 0.6505
    else:  # each class's first real image: a0, b0
        want = [cos(g0, np.array([10.0, 0.0])), cos(g1, np.array([3.0, 4.0]))]  # 0.8, 0.8132
    np.testing.assert_allclose(out[col.REAL_COS], want)
    np.testing.assert_allclose(out[col.THRESHOLD], [0.6, 0.6])
    # cos > 0.6 (strict, as the reference): 0.6 itself is rejected
    assert out[col.ACCEPTED].tolist() == [w > 0.6 + 1e-9 for w in want]
    assert reference_ids(["a1", "b1"], [0, 1], None) == ["a1", "b1"]
