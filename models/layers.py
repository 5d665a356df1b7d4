"""Pieces shared by the baseline GPT (:mod:`models.gpt`) and nGPT (:mod:`models.ngpt`).

Tensor layout conventions used throughout:

* activations are ``[B, T, C]`` (batch, time, channels);
* a fused QKV projection is one ``nn.Linear(n_embd, 3 * n_embd)`` whose weight rows are
  ``[W_q; W_k; W_v]``, and inside each block of ``n_embd`` rows head ``h`` owns rows
  ``h * head_dim : (h + 1) * head_dim``;
* per-head tensors are ``[B, T, H, head_dim]`` (time before heads) and are transposed to the
  ``[B, H, T, head_dim]`` layout of ``F.scaled_dot_product_attention`` only at the attention call;
* rotary embeddings use the "half split" convention: frequency ``i`` rotates the pair
  ``(x[i], x[i + head_dim / 2])`` of each head by the angle ``t * base ** (-2 i / head_dim)``.

Nothing here loops over heads in Python.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig


# ---------------------------------------------------------------------------------------------
# Rotary position embedding
# ---------------------------------------------------------------------------------------------
class RotaryEmbedding(nn.Module):
    """Cos/sin tables of rotary position embeddings for positions ``0 .. max_len - 1``.

    The tables are non-persistent buffers (not in the ``state_dict``). They are computed in float64
    and stored in the module's floating dtype; when the module is moved or cast (``.to``,
    ``.double()``, ...) they are recomputed from float64 math on the new device and dtype, so a model
    cast to float64 gets exact tables rather than up-cast float32 ones.
    """

    def __init__(self, head_dim: int, max_len: int, base: float) -> None:
        super().__init__()
        if head_dim % 2 != 0:
            raise ValueError(f"head_dim: rotary embeddings need an even head size, got {head_dim}")
        self.head_dim = head_dim
        self.max_len = max_len
        self.base = float(base)
        cos, sin = self._tables(device=None, dtype=torch.get_default_dtype())
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def _tables(self, device: torch.device | None, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        exponent = torch.arange(0, self.head_dim, 2, dtype=torch.float64, device=device) / self.head_dim
        inv_freq = self.base**-exponent  # [head_dim / 2]
        positions = torch.arange(self.max_len, dtype=torch.float64, device=device)
        angles = torch.outer(positions, inv_freq)  # [max_len, head_dim / 2]
        return angles.cos().to(dtype), angles.sin().to(dtype)

    def _apply(self, fn, recurse=True):  # noqa: ANN001 - nn.Module signature
        super()._apply(fn, recurse)
        if self.cos.is_floating_point():
            self.cos, self.sin = self._tables(device=self.cos.device, dtype=self.cos.dtype)
        return self

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, max_len={self.max_len}, base={self.base:g}"

    def forward(self, seq_len: int, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cos, sin)`` of positions ``start .. start + seq_len - 1``, each ``[seq_len, head_dim / 2]``
        (``start`` > 0 when decoding after cached positions)."""
        if start + seq_len > self.max_len:
            raise ValueError(f"positions up to {start + seq_len} exceed the rotary table of {self.max_len}")
        return self.cos[start:start + seq_len], self.sin[start:start + seq_len]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` of shape ``[B, T, ..., head_dim]`` (time on dim 1, any number of head dims
    between time and ``head_dim``) by the tables ``cos``/``sin`` of shape ``[T, head_dim / 2]``.
    The tables are cast to ``x``'s dtype (a no-op in the common case)."""
    shape = (cos.shape[0],) + (1,) * (x.ndim - 3) + (cos.shape[1],)
    cos = cos.to(x.dtype).view(shape)
    sin = sin.to(x.dtype).view(shape)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


# ---------------------------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------------------------
def split_qkv(qkv: torch.Tensor, n_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split the output ``[B, T, 3 * C]`` of a fused QKV projection into q, k, v views, each
    ``[B, T, H, head_dim]``."""
    B, T, C3 = qkv.shape
    return qkv.view(B, T, 3, n_heads, C3 // (3 * n_heads)).unbind(dim=2)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal softmax attention of ``[B, T, H, head_dim]`` tensors through
    ``F.scaled_dot_product_attention``; returns the heads merged back, ``[B, T, H * head_dim]``.

    ``scale`` multiplies ``q @ k^T`` before the softmax (``1/sqrt(head_dim)`` in a standard
    transformer, ``sqrt(head_dim)`` in nGPT). q and k are cast to v's dtype so that mixed dtypes
    (e.g. float32 scale vectors times bf16 activations) never reach the kernel.

    k and v may be longer than q (``[B, S, H, head_dim]``, S >= T: cached positions followed by the
    T new ones, as in :class:`KVCache` decoding): query ``i`` is position ``S - T + i`` and attends
    to keys ``0 .. S - T + i``.
    """
    B, T, H, D = q.shape
    S = k.shape[1]
    mask, causal = None, S == T
    if T > 1 and S > T:  # a chunk after cached positions: causal within the chunk, all of the past
        offset = S - T
        mask = torch.arange(S, device=q.device) <= (offset + torch.arange(T, device=q.device))[:, None]
    y = F.scaled_dot_product_attention(
        q.to(v.dtype).transpose(1, 2),
        k.to(v.dtype).transpose(1, 2),
        v.transpose(1, 2),
        attn_mask=mask,
        is_causal=causal and T > 1,
        scale=scale,
    )
    return y.transpose(1, 2).reshape(B, T, H * D)


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


def rms_norm_as_input(x: torch.Tensor, norm: nn.RMSNorm) -> torch.Tensor:
    """Apply ``norm`` with its weight cast to ``x``'s dtype, so bf16 activations under autocast
    (e.g. q and k in QK-norm) take PyTorch's fused kernel instead of the mixed-dtype fallback."""
    return F.rms_norm(x, norm.normalized_shape, norm.weight.to(x.dtype), norm.eps)


# ---------------------------------------------------------------------------------------------
# MLP pieces
# ---------------------------------------------------------------------------------------------
def silu_gate(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The SwiGLU non-linearity ``u * silu(v)`` (``v`` is the gate)."""
    return u * F.silu(v)


class SwiGLU(nn.Module):
    """``proj(u * silu(v))`` with ``[u; v] = fc(x)``, i.e. ``down(silu(gate(x)) * up(x))``.

    ``fc`` fuses the "up" and "gate" matrices: weight rows ``[:hidden]`` are ``W_u`` (up),
    rows ``[hidden:]`` are ``W_v`` (gate). No biases.
    """

    def __init__(self, n_embd: int, hidden: int) -> None:
        super().__init__()
        self.fc = nn.Linear(n_embd, 2 * hidden, bias=False)
        self.proj = nn.Linear(hidden, n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u, v = self.fc(x).chunk(2, dim=-1)
        return self.proj(silu_gate(u, v))


class GeluMLP(nn.Module):
    """``proj(gelu(fc(x)))``, the GPT-2 MLP without biases."""

    def __init__(self, n_embd: int, hidden: int) -> None:
        super().__init__()
        self.fc = nn.Linear(n_embd, hidden, bias=False)
        self.proj = nn.Linear(hidden, n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


# ---------------------------------------------------------------------------------------------
# The interface both model classes share
# ---------------------------------------------------------------------------------------------
class LanguageModel(nn.Module):
    """Base class of :class:`~models.gpt.GPT` and :class:`~models.ngpt.NGPT`.

    Subclasses define ``wte`` (the input ``nn.Embedding``), ``lm_head`` (the output ``nn.Linear``,
    possibly sharing ``wte.weight``), ``blocks``, and implement :meth:`logits`,
    :meth:`optimizer_groups` and :meth:`post_step`.
    """

    config: ModelConfig
    wte: nn.Embedding
    lm_head: nn.Linear

    def logits(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:  # pragma: no cover
        """``[B, T]`` token ids -> ``[B, T, vocab]`` logits; with ``cache``, ``idx`` continues the
        cached positions (see :class:`KVCache`)."""
        raise NotImplementedError

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``idx`` ``[B, T]`` token ids -> ``(logits [B, T, vocab], loss or None)``.

        The loss is the mean cross-entropy over all tokens (targets of -100 are ignored), computed
        in float32 even when the logits are bf16 under autocast. ``T`` may not exceed
        ``config.context_length``.
        """
        if idx.ndim != 2:
            raise ValueError(f"idx: expected token ids of shape [batch, time], got shape {tuple(idx.shape)}")
        if idx.shape[1] > self.config.context_length:
            raise ValueError(
                f"idx: sequence length {idx.shape[1]} exceeds context_length={self.config.context_length}"
            )
        logits = self.logits(idx)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1))
        return logits, loss

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        vocab_size: int | None = None,
        use_cache: bool = True,
    ) -> torch.Tensor:
        """Continue the prompts ``idx`` ``[B, T]`` by ``max_new_tokens`` tokens; returns ``[B, T +
        max_new_tokens]`` (the prompts included).

        Each token is drawn from ``softmax(logits / temperature)`` restricted to the ``top_k`` most
        likely tokens (:func:`sample_next`); ``temperature`` 0 is greedy (argmax). ``generator``
        makes sampling deterministic (it must live on the model's device). ``vocab_size`` limits
        the choice to the first ids (the tokenizer's tokens, not the padded rows of the embedding).

        With ``use_cache`` the prompt is run once and each new token costs one position
        (:class:`KVCache`). Once the sequence is longer than ``config.context_length``, the model
        sees the last ``context_length`` tokens (a sliding window, as in training); every position's
        context then changes at each step, so the window is recomputed in full for each further token.
        ``use_cache=False`` recomputes the window at every step (the reference the tests compare to).
        The model is put in eval mode for the call and restored afterwards.
        """
        if idx.ndim != 2 or idx.shape[1] < 1:
            raise ValueError(f"idx: expected prompts of shape [batch, time >= 1], got shape {tuple(idx.shape)}")
        window = self.config.context_length
        was_training = self.training
        self.eval()
        try:
            cache = KVCache(self.config.n_layers, window) if use_cache else None
            out = idx
            logits = self.logits(out[:, -window:], cache)[:, -1]
            for i in range(max_new_tokens):
                token = sample_next(logits, temperature, top_k, generator, vocab_size)
                out = torch.cat([out, token], dim=1)
                if i == max_new_tokens - 1:
                    break
                if cache is not None and cache.length < window:
                    logits = self.logits(token, cache)[:, -1]
                else:  # past the window: no cached position keeps its context, recompute the window
                    cache = None
                    logits = self.logits(out[:, -window:])[:, -1]
            return out
        finally:
            self.train(was_training)

    def optimizer_groups(self, weight_decay: float) -> list[dict]:  # pragma: no cover - abstract
        raise NotImplementedError

    def post_step(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def embeddings_tied(self) -> bool:
        return self.lm_head.weight is self.wte.weight

    def num_params(self, exclude_embedding: bool = False) -> int:
        """Number of parameters, a shared (tied) matrix counted once.

        ``exclude_embedding=True`` leaves out the input token embedding, which is a lookup and costs
        no matmul FLOPs. With tied embeddings the shared matrix is *kept*, since it is also the output
        head (whose matmul does run).
        """
        n = sum(p.numel() for p in self.parameters())  # parameters() yields a tied matrix once
        if exclude_embedding and not self.embeddings_tied:
            n -= self.wte.weight.numel()
        return n

    def flops_per_token(self, context_length: int | None = None) -> int:
        """Training FLOPs per token (forward + backward), the PaLM/Chinchilla convention:

        ``6 * N + 12 * n_layers * n_embd * T``

        where ``N = num_params(exclude_embedding=True)`` (every parameter but the input embedding;
        with tied embeddings the shared matrix counts once, as the head matmul still runs), and the
        second term is the attention score/value matmuls at sequence length
        ``T = context_length`` (default ``config.context_length``). Element-wise work (norms,
        activations, softmax) is not counted.
        """
        T = self.config.context_length if context_length is None else int(context_length)
        c = self.config
        return 6 * self.num_params(exclude_embedding=True) + 12 * c.n_layers * c.n_embd * T


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
