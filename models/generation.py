"""Generation: the KV cache of incremental decoding, sampling one token, and the decoding loop
(:func:`generate`, which :meth:`models.base.LanguageModel.generate` runs) shared by GPT and nGPT."""

from __future__ import annotations

import torch


class LayerKV:
    """The cached keys and values of one attention layer: ``[B, max_len, H, head_dim]`` buffers,
    allocated on the first :meth:`update` in the dtype and device of the keys."""

    def __init__(self, cache: "KVCache") -> None:
        self.cache = cache
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the keys/values ``[B, T, H, head_dim]`` of the T new positions after the cached
        ones; return all keys and values so far, ``[B, cached + T, H, head_dim]``."""
        start, T = self.cache.length, k.shape[1]
        if self.k is None:
            shape = (k.shape[0], self.cache.max_len, *k.shape[2:])
            self.k = torch.empty(shape, dtype=k.dtype, device=k.device)
            self.v = torch.empty(shape, dtype=v.dtype, device=v.device)
        self.k[:, start:start + T] = k
        self.v[:, start:start + T] = v
        return self.k[:, :start + T], self.v[:, :start + T]


class KVCache:
    """Keys and values of the positions seen so far, for incremental decoding
    (:meth:`LanguageModel.generate`).

    ``length`` positions are cached (the same in every layer); a model's ``logits(idx, cache)``
    treats ``idx`` as the positions ``length .. length + T - 1``, stores their keys and values in
    ``layers[i]`` and advances ``length``. Keys are cached as the attention uses them (after RoPE,
    and for nGPT after the per-token normalization and ``s_qk``), so decoding with the cache
    computes the same function as running the whole sequence again.
    """

    def __init__(self, n_layers: int, max_len: int) -> None:
        self.max_len = max_len
        self.length = 0
        self.layers = [LayerKV(self) for _ in range(n_layers)]


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    vocab_size: int | None = None,
) -> torch.Tensor:
    """One token id per row of ``logits`` ``[B, vocab]`` -> ``[B, 1]``.

    ``temperature`` 0 takes the argmax; otherwise ``torch.multinomial`` (with ``generator``) draws
    from ``softmax(logits / temperature)`` over the ``top_k`` largest logits (all when ``top_k`` is
    None or 0). Computed in float32; ``vocab_size`` keeps only the first ``vocab_size`` ids.
    """
    if temperature < 0:
        raise ValueError(f"temperature: must be >= 0, got {temperature}")
    logits = logits.float()
    if vocab_size is not None:
        logits = logits[:, :vocab_size]
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k:
        kth = torch.topk(logits, min(int(top_k), logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)


@torch.no_grad()
def generate(model, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
             generator: torch.Generator | None = None, vocab_size: int | None = None,
             use_cache: bool = True) -> torch.Tensor:
    """:meth:`models.base.LanguageModel.generate` (see there): continue the prompts ``idx`` of ``model``."""
    if idx.ndim != 2 or idx.shape[1] < 1:
        raise ValueError(f"idx: expected prompts of shape [batch, time >= 1], got shape {tuple(idx.shape)}")
    window = model.config.context_length
    was_training = model.training
    model.eval()
    try:
        cache = KVCache(model.config.n_layers, window) if use_cache else None
        out = idx
        logits = model.logits(out[:, -window:], cache)[:, -1]
        for i in range(max_new_tokens):
            token = sample_next(logits, temperature, top_k, generator, vocab_size)
            out = torch.cat([out, token], dim=1)
            if i == max_new_tokens - 1:
                break
            if cache is not None and cache.length < window:
                logits = model.logits(token, cache)[:, -1]
            else:  # past the window: no cached position keeps its context, recompute the window
                cache = None
                logits = model.logits(out[:, -window:])[:, -1]
        return out
    finally:
        model.train(was_training)
