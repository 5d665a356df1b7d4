"""The L2 normalizations of nGPT (arXiv 2410.01131), written to save little for the backward pass.

nGPT normalizes far more than a pre-norm GPT: each block's two outputs, the hidden state after each
of its two residual updates, and q and k per head. Written with ordinary tensor ops, autograd keeps
the intermediates of these chains for the backward pass (at each residual update the block output,
and ``h_A - h`` and ``h + alpha (h_A - h)`` in float32; the rotated q/k and their normalized copies),
which is most of why nGPT needs more activation memory than the baseline. ``torch.compile``'s
partitioner recovers part of it, not all: at GPT-2-small shape the compiled plain version saves 674
KiB per token against 605 with the functions below and 534 for the baseline (docs/benchmarks.md).

The two :class:`torch.autograd.Function` classes here compute the same forward values with the
same ops, but save only their inputs (which the surrounding graph keeps anyway, or which are small),
their output and the norms (one number per vector), and recompute the rest in the backward pass:

* :func:`normalized_step`: ``Norm(h + alpha * (Norm(y) - h))``, the residual update of Sec. 2.2.2
  (Eq. 10 and 11), saving ``h``, ``y``, ``alpha`` and the output. Chained through a model, each
  hidden state is saved once, as the output of one step and the input of the next.
* :func:`rotary_normalize_scale`: ``Norm(RoPE(x)) * s`` for q and k (Sec. 2.3.2), saving the raw
  projection ``x`` (in eager mode a view of the q/k/v projection, whose storage attention keeps
  alive for v; compiled, Inductor keeps the rotated q/k instead, the same size).

The backward passes are written in float32 (or wider) whatever the activation dtype and cast to the
input's dtype once at the end, so under bf16 autocast the chained norms' gradients are not rounded to bf16
at every op. :func:`normalized_step_reference` and :func:`rotary_normalize_scale_reference` are the
plain-autograd versions, used by ``NGPT(fused_norms=False)`` and the tests.

``Norm(x) = x / max(||x||_2, eps)``; its derivative is ``(I - x̂ x̂ᵀ) / ||x||`` where ``||x|| > eps``
and ``I / eps`` where the norm is clamped, both reproduced exactly.
"""

from __future__ import annotations

import torch

from .layers import apply_rotary


def l2_normalize(x: torch.Tensor, eps: float, dim: int = -1) -> torch.Tensor:
    """The paper's ``Norm``: ``x / max(||x||_2, eps)`` along ``dim``, returned in ``x``'s dtype.

    Exact for vectors longer than ``eps``; a zero vector gives zeros (finite, with a finite gradient
    of ``1/eps``), not NaN."""
    return (x / torch.linalg.vector_norm(x, dim=dim, keepdim=True).clamp_min(eps)).to(x.dtype)


def _normalize_with_norm(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Norm(x), ||x||)`` along the last dim, the norm unclamped; the same ops as :func:`l2_normalize`."""
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    return (x / norm.clamp_min(eps)).to(x.dtype), norm


def _wide(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32, or in its own dtype if that is wider (float64 stays float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _normalize_backward(grad: torch.Tensor, unit: torch.Tensor, norm: torch.Tensor, eps: float) -> torch.Tensor:
    """The gradient through ``unit = Norm(x)`` given ``grad`` (d loss / d unit), ``unit`` and the
    unclamped ``norm = ||x||``, in float32 or wider: ``(grad - unit <grad, unit>) / ||x||`` where the
    norm is above ``eps``, ``grad / eps`` where it is clamped."""
    grad, unit, norm = _wide(grad), _wide(unit), _wide(norm)
    radial = (grad * unit).sum(dim=-1, keepdim=True) * (norm > eps)
    return (grad - unit * radial) / norm.clamp_min(eps)


def _reduce_to(grad: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Sum a broadcast gradient back to the shape and dtype of ``like``."""
    return grad.sum_to_size(like.shape).to(like.dtype)


class _NormalizedStep(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: torch.Tensor, y: torch.Tensor, alpha: torch.Tensor, eps: float) -> torch.Tensor:
        y_unit, y_norm = _normalize_with_norm(y, eps)
        out, s_norm = _normalize_with_norm(h + alpha * (y_unit - h), eps)
        ctx.save_for_backward(h, y, alpha, out, y_norm, s_norm)
        ctx.eps = eps
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        h, y, alpha, out, y_norm, s_norm = ctx.saved_tensors
        eps = ctx.eps
        y_unit = (y / y_norm.clamp_min(eps)).to(y.dtype)  # recomputed exactly as in the forward
        grad_s = _normalize_backward(grad_out, out, s_norm, eps)  # d loss / d (h + alpha (y_unit - h))
        alpha32 = _wide(alpha)
        grad_h = grad_alpha = grad_y = None
        if ctx.needs_input_grad[0]:
            grad_h = _reduce_to(grad_s * (1.0 - alpha32), h)
        if ctx.needs_input_grad[1]:
            grad_y = _normalize_backward(grad_s * alpha32, y_unit, y_norm, eps).to(y.dtype)
        if ctx.needs_input_grad[2]:
            grad_alpha = _reduce_to(grad_s * (_wide(y_unit) - _wide(h)), alpha)
        return grad_h, grad_y, grad_alpha, None


def normalized_step(h: torch.Tensor, y: torch.Tensor, alpha: torch.Tensor, eps: float) -> torch.Tensor:
    """``Norm(h + alpha * (Norm(y) - h))`` along the last dim: nGPT's residual update (Sec. 2.2.2,
    Eq. 10-11) with ``y`` the block's output, ``h_A = Norm(y)`` and ``alpha`` the eigen learning
    rate (broadcast against ``h``).

    Same forward values as :func:`normalized_step_reference`; the backward saves ``h``, ``y``,
    ``alpha``, the output and two norms per vector, instead of the four ``[B, T, C]`` intermediates
    autograd would keep."""
    return _NormalizedStep.apply(h, y, alpha, eps)


def normalized_step_reference(h: torch.Tensor, y: torch.Tensor, alpha: torch.Tensor, eps: float) -> torch.Tensor:
    """:func:`normalized_step` with plain autograd (the equations as written; used by the tests)."""
    h_y = l2_normalize(y, eps)
    return l2_normalize(h + alpha * (h_y - h), eps)


def _rotate_back(grad: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The transpose of :func:`~models.layers.apply_rotary` (a rotation by the opposite angle)."""
    return apply_rotary(grad, cos, -sin)


class _RotaryNormalizeScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, scale: torch.Tensor,
                eps: float) -> torch.Tensor:
        unit, norm = _normalize_with_norm(apply_rotary(x, cos, sin), eps)
        ctx.save_for_backward(x, cos, sin, scale, norm)
        ctx.eps = eps
        return unit * scale

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, cos, sin, scale, norm = ctx.saved_tensors
        eps = ctx.eps
        unit = (apply_rotary(x, cos, sin) / norm.clamp_min(eps)).to(x.dtype)  # as in the forward
        grad_x = grad_scale = None
        if ctx.needs_input_grad[0]:
            grad_unit = _wide(grad_out) * _wide(scale)
            grad_x = _rotate_back(_normalize_backward(grad_unit, unit, norm, eps), _wide(cos), _wide(sin))
            grad_x = grad_x.to(x.dtype)
        if ctx.needs_input_grad[3]:
            grad_scale = _reduce_to(_wide(grad_out) * _wide(unit), scale)
        return grad_x, None, None, grad_scale, None


def rotary_normalize_scale(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, scale: torch.Tensor,
                           eps: float) -> torch.Tensor:
    """``Norm(RoPE(x)) * scale`` per head: nGPT's q and k (Sec. 2.3.2), ``x`` of shape
    ``[B, T, ..., head_dim]`` as in :func:`~models.layers.apply_rotary`, ``scale`` broadcast against
    it (``s_qk``). No gradient flows to ``cos`` and ``sin``.

    Same forward values as :func:`rotary_normalize_scale_reference`; the backward saves ``x`` and
    one norm per head instead of the rotated and the normalized tensors."""
    return _RotaryNormalizeScale.apply(x, cos, sin, scale, eps)


def rotary_normalize_scale_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                                     scale: torch.Tensor, eps: float) -> torch.Tensor:
    """:func:`rotary_normalize_scale` with plain autograd (used by the tests)."""
    return l2_normalize(apply_rotary(x, cos, sin), eps) * scale
