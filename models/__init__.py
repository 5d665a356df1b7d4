"""Model definitions for datgpt: a baseline GPT and the normalized transformer nGPT.

Both classes share one interface (see :class:`models.base.LanguageModel`): ``forward(idx,
targets=None) -> (logits, loss)``, ``optimizer_groups(weight_decay)``, ``post_step()``,
``hidden_matrices()`` (what Muon trains; GPT only), ``num_params(exclude_embedding=False)``,
``flops_per_token(context_length=None)`` and
``generate(idx, max_new_tokens, temperature, top_k, generator)`` (KV-cached decoding,
:class:`models.generation.KVCache`).
Models know nothing of YAML or MLflow; they are built from a :class:`ModelConfig`.
"""

from __future__ import annotations

import torch.nn as nn

from .config import ModelConfig
from .gpt import GPT
from .ngpt import NGPT

MODEL_CLASSES: dict[str, type[nn.Module]] = {"gpt": GPT, "ngpt": NGPT}


def build_model(config: ModelConfig, fused_norms: bool = True) -> nn.Module:
    """Build the model its ``kind`` names (initialized, on the default device and dtype); the model's
    constructor validates ``config``, once. ``fused_norms=False`` builds nGPT with plain-autograd
    normalizations (see :class:`NGPT`; for benchmarks and tests); the baseline ignores it."""
    cls = MODEL_CLASSES.get(config.kind) if isinstance(config.kind, str) else None
    if cls is None:
        config.validate()  # raises, naming the unknown kind
        raise ValueError(f"kind: no model class for {config.kind!r}")  # pragma: no cover - KINDS and MODEL_CLASSES agree
    if cls is NGPT:
        return NGPT(config, fused_norms=fused_norms)
    return cls(config)


__all__ = ["GPT", "NGPT", "ModelConfig", "build_model", "MODEL_CLASSES"]
