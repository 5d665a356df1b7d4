"""Baseline GPT: a pre-norm decoder-only transformer (the comparison arm for nGPT).

Per block (read side by side with :mod:`models.ngpt`)::

    h <- h + Attn(RMSNorm(h))
    h <- h + MLP(RMSNorm(h))

followed by a final RMSNorm and the output head. Positions enter only through rotary embeddings
(no learned position table). Attention can optionally RMS-normalize q and k per head before RoPE
(``qk_norm``, the "GPT+" strong baseline). No biases anywhere; RMSNorm has a learnable weight.

Init: every matrix and the embedding ~ N(0, init_std); the two residual output projections of each
block (attention ``proj`` and MLP ``proj``) ~ N(0, init_std / sqrt(2 * n_layers)); norm weights 1.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from .base import LanguageModel
from .config import ModelConfig
from .generation import KVCache, LayerKV
from .layers import (
    GeluMLP,
    RotaryEmbedding,
    SwiGLU,
    apply_rotary,
    causal_attention,
    rms_norm_as_input,
    split_qkv,
)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with RoPE; q/k RMSNorm per head if ``config.qk_norm``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.head_dim = config.head_dim
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=False)  # rows [W_q; W_k; W_v]
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=False)
        if config.qk_norm:
            self.q_norm: nn.Module | None = nn.RMSNorm(config.head_dim, eps=config.norm_eps)
            self.k_norm: nn.Module | None = nn.RMSNorm(config.head_dim, eps=config.norm_eps)
        else:
            self.q_norm = self.k_norm = None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: LayerKV | None = None) -> torch.Tensor:
        q, k, v = split_qkv(self.qkv(x), self.n_heads)  # each [B, T, H, head_dim]
        if self.q_norm is not None:
            q, k = rms_norm_as_input(q, self.q_norm), rms_norm_as_input(k, self.k_norm)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:  # decoding: attend to the cached positions too
            k, v = cache.update(k, v)
        y = causal_attention(q, k, v, scale=1.0 / math.sqrt(self.head_dim))
        return self.proj(y)


class Block(nn.Module):
    """Pre-norm transformer block: ``h + Attn(Norm(h))`` then ``h + MLP(Norm(h))``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.norm_attn = nn.RMSNorm(config.n_embd, eps=config.norm_eps)
        self.attn = CausalSelfAttention(config)
        self.norm_mlp = nn.RMSNorm(config.n_embd, eps=config.norm_eps)
        mlp_cls = SwiGLU if config.mlp == "swiglu" else GeluMLP
        self.mlp = mlp_cls(config.n_embd, config.hidden_dim)

    def forward(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: LayerKV | None = None) -> torch.Tensor:
        h = h + self.attn(self.norm_attn(h), cos, sin, cache)
        h = h + self.mlp(self.norm_mlp(h))
        return h


class GPT(LanguageModel):
    """Baseline GPT. See the module docstring for the architecture and init."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        config.validate()
        if config.kind != "gpt":
            raise ValueError(f"kind: GPT needs kind='gpt', got {config.kind!r}")
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.rotary = RotaryEmbedding(config.head_dim, config.context_length, config.rope_base)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm_f = nn.RMSNorm(config.n_embd, eps=config.norm_eps)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tied_embeddings:
            self.lm_head.weight = self.wte.weight
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        std = self.config.init_std
        residual_std = std / math.sqrt(2 * self.config.n_layers)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, nn.RMSNorm):
                nn.init.ones_(module.weight)
        for block in self.blocks:
            nn.init.normal_(block.attn.proj.weight, mean=0.0, std=residual_std)
            nn.init.normal_(block.mlp.proj.weight, mean=0.0, std=residual_std)

    def logits(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        h = self.wte(idx)
        start = cache.length if cache is not None else 0
        cos, sin = self.rotary(idx.shape[1], start)
        for i, block in enumerate(self.blocks):
            h = block(h, cos, sin, cache.layers[i] if cache is not None else None)
        if cache is not None:
            cache.length += idx.shape[1]
        return self.lm_head(self.norm_f(h))

    def optimizer_groups(self, weight_decay: float) -> list[dict]:
        """``[{matrices and embeddings, weight_decay}, {norm weights, 0.0}]``: 2-D parameters decay,
        1-D ones (RMSNorm weights) do not. A tied matrix appears once."""
        params = list(self.parameters())
        return [
            {"params": [p for p in params if p.ndim >= 2], "weight_decay": float(weight_decay)},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ]

    def hidden_matrices(self) -> list[tuple[str, nn.Parameter, int]]:
        """Per block: the fused ``[W_q; W_k; W_v]`` (3 matrices), the attention output, the MLP's input
        matrix (SwiGLU: the fused ``[W_u; W_v]``, 2 matrices) and its output. Embeddings, the head and the
        RMSNorm weights (QK-norm's included) are not hidden matrices."""
        out = []
        for i, block in enumerate(self.blocks):
            fc_parts = 2 if isinstance(block.mlp, SwiGLU) else 1
            for name, linear, parts in (("attn.qkv", block.attn.qkv, 3), ("attn.proj", block.attn.proj, 1),
                                        ("mlp.fc", block.mlp.fc, fc_parts), ("mlp.proj", block.mlp.proj, 1)):
                out.append((f"blocks.{i}.{name}.weight", linear.weight, parts))
        return out

    def post_step(self) -> None:
        """Nothing to do for the baseline (kept so the trainer treats both models alike)."""
