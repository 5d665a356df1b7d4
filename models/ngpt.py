"""nGPT: the normalized transformer of Loshchilov et al., "nGPT: Normalized Transformer with
Representation Learning on the Hypersphere" (arXiv 2410.01131). Section numbers below refer to it.

Read side by side with :mod:`models.gpt` (same module names: ``wte``, ``blocks[i].attn.qkv``,
``attn.proj``, ``mlp.fc``, ``mlp.proj``, ``lm_head``). The differences, as the paper lists them in
its summary (Sec. 2.6):

1. No normalization layers at all (no RMSNorm before attention, MLP or the head). Instead hidden
   states live on the unit hypersphere: ``h_0`` is a row of the (row-normalized) embedding, and every
   block ends in an L2 normalization (Sec. 2.2.2).
2. The residual update is a step towards the block's (normalized) output with a learned
   per-dimension step size, the "eigen learning rate" (Sec. 2.2.2)::

       h_A = Norm(Attn(h));  h <- Norm(h + alpha_A * (h_A - h))
       h_M = Norm(MLP(h));   h <- Norm(h + alpha_M * (h_M - h))

3. Attention (Sec. 2.3.2): after RoPE, q and k are normalized per head and multiplied by ``s_qk``
   (``q <- Norm(q) s_qk``, ``k <- Norm(k) s_qk``); the softmax scale is ``sqrt(d_k)`` instead of
   ``1/sqrt(d_k)``.
4. MLP (Sec. 2.4.2), SwiGLU with ``u = W_u h``, ``v = W_v h``::

       u <- u * s_u;   v <- v * s_v * sqrt(d_model);   h_M = W_o (u * SiLU(v))

5. Logits (Sec. 2.1): ``z = E_out h`` then ``z <- z * s_z``.
6. Every matrix is unit-norm along its embedding (d_model) axis at init and after every optimizer
   step (Sec. 2.1 and 2.6): see :attr:`NGPT.MATRIX_NORM_DIMS` and :meth:`NGPT.post_step`.
7. The learned vectors (alpha_A, alpha_M, s_qk, s_u, s_v, s_z) are "scaled parameters"
   (Sec. 2.5): stored as ``scale * ones`` and used as ``param * init / scale``, so the scale sets
   their effective Adam learning rate. Defaults come from :class:`~models.config.ModelConfig`.
8. No weight decay (:meth:`NGPT.optimizer_groups`); the LR schedule is the trainer's business.

``Norm(x) = x / max(||x||_2, eps)`` (``eps = config.ngpt_eps``): exact for ordinary vectors, and a
zero vector maps to zero instead of NaN.

Tied embeddings are allowed: the input embedding and the output head are both ``V x d`` matrices
normalized along ``d`` (dim 1), so one shared matrix satisfies both constraints. The paper uses
separate matrices (the default ``tied_embeddings: false``).

Precision: all normalizations run in the dtype of their input. Under bf16 autocast the matmul
outputs are bf16 while the residual stream ``h`` stays float32 (embeddings and alpha are float32);
the scale vectors are cast to the activation dtype before multiplying so no float32 copies of
activations are made. :meth:`post_step` always normalizes the weights in float32.

Memory: the residual update and the q/k normalization are autograd functions
(:mod:`models.ngpt_ops`) that compute the forward exactly as written above but recompute the
normalized intermediates in the backward pass instead of saving them, with float32 gradient math.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import LanguageModel
from .config import ModelConfig
from .generation import KVCache, LayerKV
from .layers import RotaryEmbedding, causal_attention, silu_gate
from .ngpt_ops import (
    l2_normalize,
    normalized_step,
    normalized_step_reference,
    rotary_normalize_scale,
    rotary_normalize_scale_reference,
)


class ScaledVector(nn.Module):
    """A learned vector with the paper's (init, scale) parameterization (Sec. 2.5).

    ``weight`` is stored as ``scale * ones(size)``; its effective value, :meth:`forward`, is
    ``weight * (init / scale)``, which equals ``init`` at initialization. ``weight`` is the name the
    optimizer sees.
    """

    def __init__(self, size: int, init: float, scale: float) -> None:
        super().__init__()
        self.init = float(init)
        self.scale = float(scale)
        self.weight = nn.Parameter(torch.full((size,), self.scale))

    @torch.no_grad()
    def reset_parameters(self) -> None:
        self.weight.fill_(self.scale)

    def forward(self) -> torch.Tensor:
        return self.weight * (self.init / self.scale)

    def extra_repr(self) -> str:
        return f"size={self.weight.numel()}, init={self.init}, scale={self.scale:.6g}"


class NormalizedAttention(nn.Module):
    """Causal self-attention of Sec. 2.3.2.

    ``qkv`` is one ``d -> 3d`` Linear with rows ``[W_q; W_k; W_v]``; normalizing its rows along ``d``
    is exactly normalizing W_q, W_k and W_v separately, since rows are independent.
    ``s_qk`` is one ``d``-vector viewed as ``(n_heads, head_dim)``: each head has its own slice, and
    the same vector scales q and k.
    """

    def __init__(self, config: ModelConfig, fused_norms: bool = True) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.head_dim = config.head_dim
        self.eps = config.ngpt_eps
        self.rotary_normalize_scale = rotary_normalize_scale if fused_norms else rotary_normalize_scale_reference
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=False)  # rows [W_q; W_k; W_v]
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=False)  # W_o, columns unit-norm
        self.s_qk = ScaledVector(config.n_embd, config.s_qk_init, config.resolved_scale("s_qk"))

    def forward(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: LayerKV | None = None) -> torch.Tensor:
        B, T, C = h.shape
        qkv = self.qkv(h).view(B, T, 3, self.n_heads, self.head_dim)
        qk, v = qkv[:, :, :2], qkv[:, :, 2]  # q and k handled together: same RoPE, Norm and s_qk
        # q <- Norm(RoPE(q)) s_qk and k <- Norm(RoPE(k)) s_qk, per head (Sec. 2.3.2)
        s_qk = self.s_qk().view(self.n_heads, self.head_dim).to(qk.dtype)
        qk = self.rotary_normalize_scale(qk, cos, sin, s_qk, self.eps)
        q, k = qk.unbind(dim=2)
        if cache is not None:  # decoding: k is cached after Norm and s_qk (both per token), so exact
            k, v = cache.update(k, v)
        # softmax scale sqrt(d_k) instead of 1/sqrt(d_k): q.k is a cosine times s_qk^2 (Sec. 2.3.2)
        y = causal_attention(q, k, v, scale=math.sqrt(self.head_dim))
        return self.proj(y)


class NormalizedSwiGLU(nn.Module):
    """SwiGLU MLP of Sec. 2.4.2.

    ``fc`` fuses the two input matrices: weight rows ``[:hidden]`` are ``W_u`` ("up"), rows
    ``[hidden:]`` are ``W_v`` (the gate that goes through SiLU).

    The paper multiplies only ``v`` by ``sqrt(d_model)`` (so that SiLU sees inputs of order one
    rather than cosines); NVIDIA's reference code also rescales ``u``. We follow the paper.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        hidden = config.hidden_dim
        self.fc = nn.Linear(config.n_embd, 2 * hidden, bias=False)  # rows [W_u; W_v]
        self.proj = nn.Linear(hidden, config.n_embd, bias=False)  # W_o, columns unit-norm
        self.s_u = ScaledVector(hidden, config.s_u_init, config.resolved_scale("s_u"))
        self.s_v = ScaledVector(hidden, config.s_v_init, config.resolved_scale("s_v"))
        self.sqrt_d = math.sqrt(config.n_embd)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        u, v = self.fc(h).chunk(2, dim=-1)
        u = u * self.s_u().to(u.dtype)  # u <- u s_u
        v = v * (self.s_v() * self.sqrt_d).to(v.dtype)  # v <- v s_v sqrt(d_model)
        return self.proj(silu_gate(u, v))  # W_o (u * SiLU(v))


class NGPTBlock(nn.Module):
    """One nGPT layer (Sec. 2.2.2): two normalized "eigen learning rate" steps, no norm layers."""

    def __init__(self, config: ModelConfig, fused_norms: bool = True) -> None:
        super().__init__()
        self.eps = config.ngpt_eps
        self.normalized_step = normalized_step if fused_norms else normalized_step_reference
        self.attn = NormalizedAttention(config, fused_norms)
        self.mlp = NormalizedSwiGLU(config)
        self.alpha_attn = ScaledVector(config.n_embd, config.alpha_attn_init, config.resolved_scale("alpha_attn"))
        self.alpha_mlp = ScaledVector(config.n_embd, config.alpha_mlp_init, config.resolved_scale("alpha_mlp"))

    def forward(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: LayerKV | None = None) -> torch.Tensor:
        # h_A = Norm(Attn(h));  h <- Norm(h + alpha_A (h_A - h))   (Eq. 10)
        h = self.normalized_step(h, self.attn(h, cos, sin, cache), self.alpha_attn(), self.eps)
        # h_M = Norm(MLP(h));   h <- Norm(h + alpha_M (h_M - h))   (Eq. 11)
        h = self.normalized_step(h, self.mlp(h), self.alpha_mlp(), self.eps)
        return h


class NGPT(LanguageModel):
    """The normalized transformer. See the module docstring for the architecture.

    ``fused_norms=False`` runs the residual updates and the q/k normalization with plain autograd
    (:func:`~models.ngpt_ops.normalized_step_reference`, ...): the same model and forward values,
    more memory saved for the backward pass. Training uses the default; the benchmark's
    ``ngpt-plain`` arm measures the difference.
    """

    #: Which matrices are kept unit-norm, and along which dim of the ``weight`` tensor (PyTorch
    #: stores Linear weights as ``[out, in]``): keys are parameter-name suffixes. Embedding and head
    #: (``V x d``), W_q/W_k/W_v (``qkv``) and W_u/W_v (``mlp.fc``) are ``[*, d]``: dim 1. The output
    #: projections W_o (``attn.proj``, ``mlp.proj``) are ``[d, *]``: dim 0.
    MATRIX_NORM_DIMS: dict[str, int] = {
        "wte.weight": 1,
        "lm_head.weight": 1,
        "attn.qkv.weight": 1,
        "attn.proj.weight": 0,
        "mlp.fc.weight": 1,
        "mlp.proj.weight": 0,
    }

    def __init__(self, config: ModelConfig, fused_norms: bool = True) -> None:
        super().__init__()
        config.validate()
        if config.kind != "ngpt":
            raise ValueError(f"kind: NGPT needs kind='ngpt', got {config.kind!r}")
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)  # E_input, rows unit-norm
        self.rotary = RotaryEmbedding(config.head_dim, config.context_length, config.rope_base)
        self.blocks = nn.ModuleList(NGPTBlock(config, fused_norms) for _ in range(config.n_layers))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)  # E_output, rows unit-norm
        if config.tied_embeddings:
            self.lm_head.weight = self.wte.weight
        self.s_z = ScaledVector(config.vocab_size, config.s_z_init, config.resolved_scale("s_z"))

        # Every matrix must be covered by MATRIX_NORM_DIMS, and nothing else (guards future edits).
        covered = {name for name, _, _ in self.normalized_matrices()}
        matrices = {name for name, p in self.named_parameters() if p.ndim >= 2}
        if covered != matrices:  # pragma: no cover - a programming error
            raise AssertionError(f"normalized matrices {sorted(covered)} != all matrices {sorted(matrices)}")
        # (owning module, dim) pairs for post_step, resolved once: name matching costs ~0.4 ms per call
        # at 12 layers. The parameter itself is looked up at call time, so a reassigned weight (e.g.
        # load_state_dict(assign=True)) is still the one normalized.
        self._matrix_owners: tuple[tuple[nn.Module, int], ...] = tuple(
            (self.get_submodule(name.rsplit(".", 1)[0]), dim) for name, _, dim in self.normalized_matrices()
        )
        self.reset_parameters()

    # ------------------------------------------------------------------------------------------
    def normalized_matrices(self) -> list[tuple[str, nn.Parameter, int]]:
        """``(name, parameter, dim)`` for every matrix kept unit-norm along ``dim``; a tied matrix
        appears once (as ``wte.weight``)."""
        out = []
        for name, p in self.named_parameters():
            for suffix, dim in self.MATRIX_NORM_DIMS.items():
                if name == suffix or name.endswith("." + suffix):
                    out.append((name, p, dim))
                    break
        return out

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Matrices ~ N(0, 1/sqrt(d)) then normalized; scaled vectors to ``scale * ones``."""
        std = 1.0 / math.sqrt(self.config.n_embd)
        for _, p, _ in self.normalized_matrices():
            nn.init.normal_(p, mean=0.0, std=std)
        for module in self.modules():
            if isinstance(module, ScaledVector):
                module.reset_parameters()
        self.post_step()

    @torch.no_grad()
    def post_step(self) -> None:
        """Re-project every matrix onto the unit sphere along its embedding axis (Sec. 2.6); the
        trainer calls this after every optimizer step.

        The math is float32. Float32 matrices are updated in place: one norm reduction per matrix,
        then a single ``torch._foreach_clamp_min_`` over all the norms and a ``torch._foreach_div_``
        (PyTorch runs that one per tensor, as the shapes differ), i.e. about two kernels per matrix.
        Matrices stored in another dtype are normalized in float32 and written back in their own
        dtype. The method is safe to wrap in ``torch.compile`` (``torch.compile(model.post_step)``)
        for a fused version; the tests check it gives the same weights.
        """
        eps = self.config.ngpt_eps
        by_dim: dict[int, list[torch.Tensor]] = {}
        for owner, dim in self._matrix_owners:
            p = owner.weight
            if p.dtype == torch.float32:
                by_dim.setdefault(dim, []).append(p)
            else:
                p.copy_(l2_normalize(p.float(), eps, dim=dim))
        for dim, params in by_dim.items():
            norms = [torch.linalg.vector_norm(p, dim=dim, keepdim=True) for p in params]
            torch._foreach_clamp_min_(norms, eps)
            torch._foreach_div_(params, norms)

    # ------------------------------------------------------------------------------------------
    def logits(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        h = self.wte(idx)  # h_0: rows of E_input, already unit-norm
        start = cache.length if cache is not None else 0
        cos, sin = self.rotary(idx.shape[1], start)
        for i, block in enumerate(self.blocks):
            h = block(h, cos, sin, cache.layers[i] if cache is not None else None)
        if cache is not None:
            cache.length += idx.shape[1]
        # z = E_output h, then z <- z s_z (Sec. 2.1); no final norm layer (h is unit-norm). With
        # gradients on (training) it is computed as (s_z E_output) h, the same product: scaling the
        # V x d matrix instead of the [B, T, V] logits saves a pass over the logits and a second copy of
        # them kept for the backward pass. Without (evaluation, decoding a token at a time) the logits
        # are scaled, which costs less than rescaling the matrix for a few positions.
        if torch.is_grad_enabled():
            return F.linear(h, self.lm_head.weight * self.s_z()[:, None])
        z = self.lm_head(h)
        return z * self.s_z().to(z.dtype)

    def optimizer_groups(self, weight_decay: float) -> list[dict]:
        """One group with every parameter and ``weight_decay=0.0``, whatever ``weight_decay`` says:
        nGPT uses no weight decay (Sec. 2.6); the norm constraint replaces it."""
        del weight_decay
        return [{"params": list(self.parameters()), "weight_decay": 0.0}]

    @torch.no_grad()
    def effective_scalars(self) -> dict[str, torch.Tensor]:
        """The effective (``param * init / scale``) learned vectors, detached:
        ``alpha_attn``, ``alpha_mlp``: ``[n_layers, n_embd]``; ``s_qk``: ``[n_layers, n_heads,
        head_dim]``; ``s_u``, ``s_v``: ``[n_layers, hidden]``; ``s_z``: ``[vocab_size]``."""
        c = self.config
        return {
            "alpha_attn": torch.stack([b.alpha_attn() for b in self.blocks]),
            "alpha_mlp": torch.stack([b.alpha_mlp() for b in self.blocks]),
            "s_qk": torch.stack([b.attn.s_qk().view(c.n_heads, c.head_dim) for b in self.blocks]),
            "s_u": torch.stack([b.mlp.s_u() for b in self.blocks]),
            "s_v": torch.stack([b.mlp.s_v() for b in self.blocks]),
            "s_z": self.s_z(),
        }
