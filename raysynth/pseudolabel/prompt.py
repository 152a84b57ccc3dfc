"""AiR steps 4–5 (paper 001 Eq. 7–10, METHODS §4): CoOp prompt learning with fused pseudo-labels.

The class prompt is ``[SOT, ctx_1 … ctx_M, class tokens, '.', EOT]``: ``M = n_ctx`` learnable
context vectors shared by every class (CoOp's unified context), initialised from N(0, 0.02²) with
a seed. Everything of the open_clip model stays frozen — token embedding, text transformer, image
tower, logit scale; only ``ctx`` is trained. Image embeddings are computed once, before training,
so training runs the text side alone.

Class logits are ``cos(F(x), G(t_c)) / τ`` with a fixed τ (0.01 by default, the zero-shot
temperature; ``temperature=None`` uses the model's own ``1 / exp(logit_scale)``). The loss is
``L = CE(x, ỹ*) + β · CE(x̂, y)`` (Eq. 10) over pseudo-labelled real embeddings ``x`` and labelled
synthetic embeddings ``x̂``; β = 0 leaves the synthetic images out entirely.

Iterations (10 by default): the pseudo-labels ``ỹ* = argmax(p + λ p̂)`` (Eq. 7) start from the
zero-shot ``p`` of the hand-made prompts; each iteration trains ``steps`` full-batch SGD steps on
them, then recomputes ``p`` with the learned prompt and refreshes ``ỹ*`` (``p̂``, the synthetic
prototype classifier, does not change). The real images trained on are the ``top_k`` most
confident per class under ``p*`` — FPL's top-K pseudo-labelling that AiR builds on (paper §3.1,
§4: 16 per class); ``top_k=0`` trains on every image with its fused label.

:func:`prompt_learning_trainable` runs one (λ, β) as a Ray Tune function trainable that builds the
model in the trial and reports the validation accuracy per iteration; :func:`search_prompt_params`
searches (λ, β) with the weight search's HyperOpt machinery
(:func:`raysynth.tune.search.build_search_tuner`). Ray is imported only inside those two.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from raysynth.config.schema import RunConfig
from raysynth.errors import ConfigError, RunDirError
from raysynth.filter.select import fuse, prototype_probs
from raysynth.filter.threshold import normalize
from raysynth.pseudolabel.zero_shot import label_accuracy, top_k_per_class

log = logging.getLogger("raysynth.air")

CONTEXT_FILE = "context.safetensors"
PROMPT_JSON = "prompt.json"
METRIC = "val_acc"  # what the (λ, β) search maximises
EXPERIMENT = "prompt"  # its folder under tune_root
FORMAT = "raysynth-coop-context-v1"
PLACEHOLDER = "X"  # CoOp's stand-in word for a context slot; its embedding is replaced by ctx


@dataclass(frozen=True)
class PromptConfig:
    """Prompt learning settings; λ (``lam``) and β (``beta``) are what Tune searches."""

    n_ctx: int = 16
    init_std: float = 0.02
    seed: int = 0
    iterations: int = 10
    steps: int = 50  # full-batch optimiser steps per iteration
    lr: float = 0.002
    momentum: float = 0.9
    temperature: float | None = 0.01  # None: the model's 1 / exp(logit_scale)
    proto_temperature: float = 0.01  # τ of p̂ (Eq. 7)
    lam: float = 1.0
    beta: float = 1.0
    top_k: int = 16  # real images per class trained on; 0 = every image

    def __post_init__(self) -> None:
        checks = {
            "n_ctx": self.n_ctx >= 1,
            "init_std": self.init_std > 0,
            "iterations": self.iterations >= 1,
            "steps": self.steps >= 1,
            "lr": self.lr > 0,
            "momentum": 0 <= self.momentum < 1,
            "temperature": self.temperature is None or self.temperature > 0,
            "proto_temperature": self.proto_temperature > 0,
            "lam": self.lam >= 0,
            "beta": self.beta >= 0,
            "top_k": self.top_k >= 0,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            values = ", ".join(f"{k}={getattr(self, k)!r}" for k in bad)
            raise ConfigError(
                f"invalid prompt learning settings: {values}; need n_ctx, iterations, steps >= 1, "
                "init_std, lr, temperature, proto_temperature > 0, momentum in [0, 1), "
                "lam, beta, top_k >= 0"
            )


# -- the text tower with learnable context --------------------------------------------------


@dataclass
class _TextTower:
    """The pieces of an open_clip text tower that ``encode_text`` runs, in order."""

    token_embedding: torch.nn.Embedding
    positional_embedding: torch.Tensor
    transformer: torch.nn.Module
    ln_final: torch.nn.Module
    text_projection: Any
    attn_mask: torch.Tensor | None
    pool_type: str
    eos_id: int | None


def text_tower(model: torch.nn.Module) -> _TextTower:
    """The text tower of an open_clip ``CLIP`` (attributes on the model) or ``CustomTextCLIP``
    (``model.text``, open_clip's own ``TextTransformer``); ConfigError for anything else."""
    text = getattr(model, "text", None)
    if text is None and hasattr(model, "token_embedding"):
        src, pool, eos = model, model.text_pool_type, getattr(model, "text_eos_id", None)
    elif text is not None and type(text).__name__ == "TextTransformer":
        if text.cls_emb is not None or text.use_pad_mask:
            raise ConfigError(
                f"{type(model).__name__}'s text tower appends a class token or masks padding "
                "(CoCa-style); CoOp prompt learning supports plain causal text towers — use a "
                "CLIP model such as ViT-B-32"
            )
        src, pool, eos = text, text.pool_type, getattr(text, "eos_id", None)
    else:
        kind = type(text).__name__ if text is not None else type(model).__name__
        raise ConfigError(
            f"prompt learning cannot reach the token embeddings of a {kind} text tower (Hugging "
            "Face text encoders are not supported); use an open_clip model whose text tower is "
            "open_clip's own transformer (CLIP / CustomTextCLIP, e.g. ViT-B-32)"
        )
    if pool not in ("argmax", "eos", "last"):
        raise ConfigError(
            f"the text tower pools with {pool!r}; prompt learning needs the EOT token's feature "
            "(text_pool_type argmax, eos or last)"
        )
    return _TextTower(
        src.token_embedding,
        src.positional_embedding,
        src.transformer,
        src.ln_final,
        src.text_projection,
        src.attn_mask,
        pool,
        eos,
    )


def _context_tokens(
    tokenizer: Callable, class_names: Sequence[str], n_ctx: int, context_length: int
) -> tuple[torch.Tensor, int]:
    """``[C, L]`` token ids of ``"X X … X {class}."`` and the position of the first ``X``.

    Raises ConfigError when ``X`` is not one token of its own or a prompt does not fit.
    """
    prompts = [" ".join([PLACEHOLDER] * n_ctx) + f" {name}." for name in class_names]
    tokens = tokenizer(prompts)
    pad = int(tokenizer([""])[0, -1])
    x_ids = set(tokenizer([PLACEHOLDER])[0].tolist()) - set(tokenizer([""])[0].tolist())
    start = -1
    if len(x_ids) == 1:
        hits = (tokens[0] == x_ids.pop()).nonzero().flatten()
        start = int(hits[0]) if len(hits) else -1
    if start < 0 or not bool((tokens[:, start : start + n_ctx] == tokens[0, start]).all()):
        raise ConfigError(
            f"the tokenizer does not map {PLACEHOLDER!r} to one token per context slot; CoOp "
            "prompt learning needs a CLIP BPE tokenizer (open_clip's default)"
        )
    long = tokenizer(prompts, context_length=context_length + 64)
    too_long = [n for n, row in zip(class_names, long) if bool((row[context_length:] != pad).any())]
    if too_long:
        raise ConfigError(
            f"with n_ctx={n_ctx} the prompts of {too_long[:3]} exceed the text tower's "
            f"{context_length} tokens; lower n_ctx or shorten the class names"
        )
    return tokens, start


class PromptTextEncoder(torch.nn.Module):
    """``G([SOT, ctx, class tokens, '.', EOT])`` for every class → ``[C, D]`` unit rows.

    ``ctx: [n_ctx, width]`` is the only parameter; the open_clip model is kept outside the module's
    parameters and set to ``requires_grad=False`` (its weights never change).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Callable,
        class_names: Sequence[str],
        n_ctx: int = 16,
        init_std: float = 0.02,
        seed: int = 0,
    ) -> None:
        super().__init__()
        model.eval().requires_grad_(False)
        tower = text_tower(model)
        self._tower = tower  # a plain dataclass, not a submodule: the weights are not ours
        self.class_names = list(class_names)
        # the model's own 1 / τ (used when PromptConfig.temperature is None)
        self.model_scale = (
            float(model.logit_scale.exp()) if hasattr(model, "logit_scale") else 100.0
        )
        length = tower.positional_embedding.shape[0]
        tokens, start = _context_tokens(tokenizer, class_names, n_ctx, length)
        device = tower.positional_embedding.device
        tokens = tokens.to(device)
        with torch.no_grad():
            emb = tower.token_embedding(tokens).float()
        self.register_buffer("tokens", tokens, persistent=False)
        self.register_buffer("prefix", emb[:, :start].clone(), persistent=False)
        self.register_buffer("suffix", emb[:, start + n_ctx :].clone(), persistent=False)
        gen = torch.Generator().manual_seed(int(seed))
        width = emb.shape[-1]
        self.ctx = torch.nn.Parameter(
            (torch.randn(n_ctx, width, generator=gen) * init_std).to(device)
        )

    def forward(self) -> torch.Tensor:
        t = self._tower
        c = len(self.class_names)
        x = torch.cat([self.prefix, self.ctx.unsqueeze(0).expand(c, -1, -1), self.suffix], dim=1)
        cast = t.transformer.get_cast_dtype() if hasattr(t.transformer, "get_cast_dtype") else None
        x = x.to(cast or x.dtype) + t.positional_embedding.to(cast or x.dtype)
        x = t.ln_final(t.transformer(x, attn_mask=t.attn_mask))
        if t.pool_type == "argmax":
            x = x[torch.arange(c), self.tokens.argmax(dim=-1)]
        elif t.pool_type == "eos":
            x = x[torch.arange(c), (self.tokens == t.eos_id).int().argmax(dim=-1)]
        else:
            x = x[:, -1]
        if t.text_projection is not None:
            proj = t.text_projection
            x = proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj
        return F.normalize(x.float(), dim=-1)

    @torch.no_grad()
    def set_context(self, ctx: torch.Tensor) -> None:
        """Load a learned context (e.g. from :func:`load_context`)."""
        if tuple(ctx.shape) != tuple(self.ctx.shape):
            raise ConfigError(
                f"context of shape {tuple(ctx.shape)} does not fit this encoder's "
                f"{tuple(self.ctx.shape)} (n_ctx, text width); build the encoder with the same "
                "open_clip model and n_ctx"
            )
        self.ctx.copy_(ctx.to(self.ctx))

    @torch.no_grad()
    def probs(self, image_emb: np.ndarray, temperature: float | None = 0.01) -> np.ndarray:
        """``[N, C]`` ``softmax_c(cos(F(x), G(t_c)) / τ)`` with the current context."""
        scale = 1.0 / temperature if temperature else self.model_scale
        e = torch.from_numpy(normalize(image_emb).astype(np.float32)).to(self.ctx.device)
        return torch.softmax(e @ self().T * scale, dim=1).double().cpu().numpy()


# -- data, result, training -----------------------------------------------------------------


@dataclass
class PromptData:
    """Precomputed embeddings (all ``F(·)`` of the frozen image tower, any norm).

    ``real_emb: [N, D]`` unlabeled images; ``zero_shot: [N, C]`` their ``p`` from hand-made prompts
    (:class:`~raysynth.pseudolabel.zero_shot.PseudoLabels` ``.probs``); ``prototypes: [C, D]``
    ``F(x̂*_c)``; ``syn_emb: [M, D]`` / ``syn_labels: [M]`` labelled synthetic images;
    ``true_labels: [N]`` (−1 unknown) for measuring only; ``val_emb`` / ``val_labels`` a labelled
    validation split (the Tune objective).
    """

    real_emb: np.ndarray
    zero_shot: np.ndarray
    prototypes: np.ndarray
    syn_emb: np.ndarray
    syn_labels: np.ndarray
    true_labels: np.ndarray | None = None
    val_emb: np.ndarray | None = None
    val_labels: np.ndarray | None = None

    def __post_init__(self) -> None:
        n, c = np.shape(self.zero_shot)
        d = np.shape(self.real_emb)[1]
        if np.shape(self.real_emb)[0] != n or np.shape(self.prototypes) != (c, d):
            raise ValueError(
                f"need real_emb [N, D], zero_shot [N, C], prototypes [C, D]; got "
                f"{np.shape(self.real_emb)}, {np.shape(self.zero_shot)}, {np.shape(self.prototypes)}"
            )
        if len(self.syn_emb) != len(self.syn_labels):
            raise ValueError(
                f"{len(self.syn_emb)} synthetic embeddings, {len(self.syn_labels)} labels"
            )
        if (self.val_emb is None) != (self.val_labels is None):
            raise ValueError("give val_emb and val_labels together, or neither")

    @property
    def num_classes(self) -> int:
        return int(np.shape(self.zero_shot)[1])


@dataclass
class PromptResult:
    """The learned context and what happened per iteration.

    ``history[i]``: ``loss_first`` / ``loss_last`` (first and last step of the iteration),
    ``pseudo_acc`` (accuracy of the fused labels trained on, over every image with a true label;
    NaN without true labels), ``selected_acc`` (the same over the top-K rows trained on),
    ``refreshed_acc`` (the labels recomputed with the learned prompt), ``val_acc`` (the learned
    prompt's classifier on the validation split; NaN without one).
    """

    ctx: torch.Tensor
    class_names: list[str]
    config: PromptConfig
    history: list[dict[str, float]] = field(default_factory=list)
    pseudo_labels: np.ndarray | None = None  # the last refreshed ỹ*, [N]
    probs: np.ndarray | None = None  # the learned prompt's p, [N, C]

    @property
    def losses(self) -> list[float]:
        return [h["loss_last"] for h in self.history]

    def save(self, folder: str | Path, model_name: str = "") -> Path:
        return save_context(
            folder, self.ctx, self.class_names, self.config, model_name, self.history
        )


def _logits(emb: torch.Tensor, text: torch.Tensor, scale: float) -> torch.Tensor:
    return emb @ text.T * scale


def train_prompt(
    encoder: PromptTextEncoder,
    data: PromptData,
    cfg: PromptConfig | None = None,
    on_iteration: Callable[[dict[str, float]], None] | None = None,
) -> PromptResult:
    """CoOp on AiR's fused pseudo-labels (see the module docstring); ``on_iteration(record)`` is
    called after every iteration (Tune's report)."""
    cfg = cfg or PromptConfig()
    if data.num_classes != len(encoder.class_names):
        raise ValueError(
            f"{data.num_classes} classes in the data, {len(encoder.class_names)} in the encoder"
        )
    dev = encoder.ctx.device
    scale = 1.0 / cfg.temperature if cfg.temperature else encoder.model_scale

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(normalize(a).astype(np.float32)).to(dev)

    real = tensor(data.real_emb)
    syn = tensor(data.syn_emb) if len(data.syn_emb) else None
    syn_y = torch.as_tensor(np.asarray(data.syn_labels, np.int64), device=dev)
    p_hat = prototype_probs(data.real_emb, data.prototypes, cfg.proto_temperature)
    p = np.asarray(data.zero_shot, np.float64)
    opt = torch.optim.SGD([encoder.ctx], lr=cfg.lr, momentum=cfg.momentum)
    history: list[dict[str, float]] = []
    for it in range(cfg.iterations):
        # 1. pseudo-labels from the fused classifier (Eq. 7), top-K per class
        fused = fuse(p, p_hat, cfg.lam)
        labels = np.argmax(fused, axis=1).astype(np.int64)
        rows = top_k_per_class(fused, cfg.top_k or None).indices
        # 2. full-batch steps on L = CE(x, ỹ*) + β CE(x̂, y) (Eq. 10)
        y = torch.from_numpy(labels[rows]).to(dev)
        synthetic = (syn, syn_y) if cfg.beta > 0 and syn is not None else None
        losses = _steps(encoder, opt, (real[rows], y), synthetic, cfg, scale)
        # 3. refresh p with the learned prompt
        with torch.no_grad():
            text = encoder()
            p = torch.softmax(_logits(real, text, scale), dim=1).double().cpu().numpy()
            val = _accuracy(data.val_emb, data.val_labels, text, dev)
        record = {
            "iteration": it + 1,
            "loss_first": losses[0],
            "loss_last": losses[-1],
            "pseudo_acc": label_accuracy(labels, data.true_labels),
            "selected_acc": label_accuracy(labels, data.true_labels, rows),
            "refreshed_acc": label_accuracy(
                np.argmax(fuse(p, p_hat, cfg.lam), axis=1), data.true_labels
            ),
            "val_acc": val,
        }
        history.append(record)
        log.info("prompt learning %s", record)
        if on_iteration is not None:
            on_iteration(record)
    return PromptResult(
        ctx=encoder.ctx.detach().cpu().clone(),
        class_names=list(encoder.class_names),
        config=cfg,
        history=history,
        pseudo_labels=np.argmax(fuse(p, p_hat, cfg.lam), axis=1).astype(np.int64),
        probs=p,
    )


def _steps(
    encoder: PromptTextEncoder,
    opt: torch.optim.Optimizer,
    real: tuple[torch.Tensor, torch.Tensor],
    synthetic: tuple[torch.Tensor, torch.Tensor] | None,
    cfg: PromptConfig,
    scale: float,
) -> list[float]:
    """``cfg.steps`` optimiser steps on ``CE(x, ỹ*) [+ β CE(x̂, y)]``; the loss of each step."""
    losses = []
    for _ in range(cfg.steps):
        text = encoder()
        loss = F.cross_entropy(_logits(real[0], text, scale), real[1])
        if synthetic is not None:
            loss = loss + cfg.beta * F.cross_entropy(
                _logits(synthetic[0], text, scale), synthetic[1]
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def _accuracy(emb, labels, text: torch.Tensor, dev) -> float:
    if emb is None or len(emb) == 0:
        return float("nan")
    e = torch.from_numpy(normalize(emb).astype(np.float32)).to(dev)
    pred = (e @ text.T).argmax(dim=1).cpu().numpy()
    return float(np.mean(pred == np.asarray(labels)))


# -- save / load ---------------------------------------------------------------------------


def save_context(
    folder: str | Path,
    ctx: torch.Tensor,
    class_names: Sequence[str],
    cfg: PromptConfig,
    model_name: str = "",
    history: Sequence[dict[str, float]] = (),
) -> Path:
    """Write ``context.safetensors`` (``ctx: [n_ctx, width]`` float32) and ``prompt.json``
    (format, model, class names, settings, per-iteration history) to ``folder``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"ctx": ctx.detach().float().cpu().contiguous()}, str(folder / CONTEXT_FILE))
    meta = {
        "format": FORMAT,
        "model": model_name,
        "n_ctx": int(ctx.shape[0]),
        "width": int(ctx.shape[1]),
        "class_names": list(class_names),
        "config": dataclasses.asdict(cfg),
        "history": [{k: float(v) for k, v in h.items()} for h in history],
    }
    (folder / PROMPT_JSON).write_text(json.dumps(meta, indent=2, allow_nan=True))
    return folder


def load_context(folder: str | Path) -> tuple[torch.Tensor, dict[str, Any]]:
    """``(ctx, meta)`` from a folder written by :func:`save_context`."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / CONTEXT_FILE).is_file() or not (folder / PROMPT_JSON).is_file():
        raise RunDirError(
            f"{folder} has no {CONTEXT_FILE} and {PROMPT_JSON}; give a folder written by "
            "PromptResult.save / save_context"
        )
    meta = json.loads((folder / PROMPT_JSON).read_text())
    if meta.get("format") != FORMAT:
        raise RunDirError(f"{folder / PROMPT_JSON} is not a {FORMAT} file ({meta.get('format')!r})")
    return load_file(str(folder / CONTEXT_FILE))["ctx"], meta


# -- Ray Tune (Ray imported only inside these functions) -------------------------------------


@dataclass(frozen=True)
class PromptTrialSpec:
    """What a trial builds its model from (never captured from the driver): an open_clip model
    name and weights (tag or local file), the class names, the base settings, the device and the
    torch threads of a trial."""

    clip_model: str
    clip_pretrained: str
    class_names: tuple[str, ...]
    base: PromptConfig = PromptConfig()
    device: str = "cpu"
    threads: int = 1


def run_prompt_trial(
    config: dict[str, Any],
    data: PromptData,
    spec: PromptTrialSpec,
    report: Callable[[dict[str, Any]], None] | None = None,
) -> PromptResult:
    """One (λ, β) of ``config`` (keys ``lam``, ``beta``; missing ones keep ``spec.base``'s): loads
    the model by name, trains, and calls ``report(record)`` after every iteration."""
    from raysynth.filter.clip import ClipEmbedder

    if data.val_emb is None:
        raise ConfigError(
            "tuning λ and β needs a labelled validation split: set PromptData.val_emb and "
            "val_labels (the objective is the learned prompt's validation accuracy)"
        )
    cfg = dataclasses.replace(
        spec.base,
        lam=float(config.get("lam", spec.base.lam)),
        beta=float(config.get("beta", spec.base.beta)),
    )
    clip = ClipEmbedder(spec.clip_model, spec.clip_pretrained, device=spec.device)
    encoder = PromptTextEncoder(
        clip.model, clip.tokenizer, spec.class_names, cfg.n_ctx, cfg.init_std, cfg.seed
    )
    return train_prompt(encoder, data, cfg, on_iteration=report)


def prompt_learning_trainable(
    config: dict[str, Any], data: PromptData, spec: PromptTrialSpec
) -> None:
    """Ray Tune function trainable: :func:`run_prompt_trial` reporting ``val_acc`` (and the rest
    of each iteration's record) with ``ray.tune.report``. Use it as
    ``tune.with_parameters(prompt_learning_trainable, data=…, spec=…)``."""
    import ray.tune

    torch.set_num_threads(spec.threads)
    run_prompt_trial(config, data, spec, report=ray.tune.report)


def search_prompt_params(
    data: PromptData,
    spec: PromptTrialSpec,
    cfg: RunConfig,
    tune_root: str | Path,
    lam_range: tuple[float, float] = (0.0, 2.0),
    beta_range: tuple[float, float] = (0.0, 2.0),
    resume: bool = False,
) -> dict[str, Any]:
    """Search (λ, β) with Ray Tune + HyperOpt under ``cfg.tune`` (samples, random points,
    concurrency, resources per trial) in ``tune_root/prompt``; with ``tune.warm_start`` the
    text-only point (0, 0) and the paper's (1, 1) go first. Returns ``{"lam", "beta", "val_acc",
    "trials"}`` of the best trial (its last report); needs a connected Ray."""
    from ray import tune

    from raysynth.tune.search import build_search_tuner

    points = [{"lam": 0.0, "beta": 0.0}, {"lam": 1.0, "beta": 1.0}]
    points = [
        p
        for p in points
        if lam_range[0] <= p["lam"] <= lam_range[1] and beta_range[0] <= p["beta"] <= beta_range[1]
    ]
    spec = dataclasses.replace(spec, threads=max(int(cfg.tune.cpus_per_trial), 1))
    tuner = build_search_tuner(
        tune.with_parameters(prompt_learning_trainable, data=data, spec=spec),
        {"lam": tune.uniform(*lam_range), "beta": tune.uniform(*beta_range)},
        cfg,
        tune_root,
        points=points if cfg.tune.warm_start else None,
        metric=METRIC,
        name=EXPERIMENT,
        resume=resume,
    )
    grid = tuner.fit()
    done = [r for r in grid if r.error is None and r.metrics and METRIC in r.metrics]
    if not done:
        errors = [str(r.error) for r in grid if r.error is not None][:3]
        raise RuntimeError(f"no trial of the prompt search finished; first errors: {errors}")
    best = max(done, key=lambda r: r.metrics[METRIC])
    return {
        "lam": float(best.config["lam"]),
        "beta": float(best.config["beta"]),
        "val_acc": float(best.metrics[METRIC]),
        "trials": len(done),
    }
