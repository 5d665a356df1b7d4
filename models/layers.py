"""Layers shared by the baseline GPT (:mod:`models.gpt`) and nGPT (:mod:`models.ngpt`): rotary embeddings,
attention, MLPs. The model interface is :mod:`models.base`, generation :mod:`models.generation`.

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
    T new ones, as in :class:`models.generation.KVCache` decoding): query ``i`` is position ``S - T + i`` and attends
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


