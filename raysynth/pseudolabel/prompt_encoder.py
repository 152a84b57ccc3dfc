"""The CoOp prompt (paper 001 Eq. 8–9, METHODS §4): ``[SOT, ctx_1 … ctx_M, class tokens, '.',
EOT]`` through a frozen open_clip text tower, with ``M = n_ctx`` learnable context vectors shared
by every class (CoOp's unified context), initialised from N(0, init_std²) with a seed
(:class:`PromptTextEncoder`; :func:`text_tower` reaches the tower's pieces, plain causal
CLIP / CustomTextCLIP towers only). Everything of the open_clip model stays frozen — token
embedding, text transformer, image tower, logit scale; only ``ctx`` is a parameter."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from raysynth.errors import ConfigError
from raysynth.filter.threshold import normalize

PLACEHOLDER = "X"  # CoOp's stand-in word for a context slot; its embedding is replaced by ctx


def unit_rows(emb: np.ndarray, device: Any) -> torch.Tensor:
    """``emb`` with unit rows, as a float32 tensor on ``device``."""
    return torch.from_numpy(normalize(emb).astype(np.float32)).to(device)


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
        """Load a learned context (e.g. from
        :func:`~raysynth.pseudolabel.prompt.load_context`)."""
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
        e = unit_rows(image_emb, self.ctx.device)
        return torch.softmax(e @ self().T * scale, dim=1).double().cpu().numpy()


__all__ = ["PLACEHOLDER", "PromptTextEncoder", "text_tower", "unit_rows"]
