"""Hypersphere diagnostics of a GPT or nGPT model: what the analysis of the nGPT paper (Loshchilov
et al., arXiv 2410.01131, Sec. 4 "inspection of network parameters") looks at, for both arms.

:func:`compute_diagnostics` runs one forward pass of a small fixed batch and inspects the weights.
It returns :class:`Diagnostics`: flat ``scalars`` (name -> float, one per layer and quantity: the
table training logs as an MLflow artifact at every evaluation), ``distributions`` (plain JSON data, per
quantity and layer, for the figures of :mod:`analysis.diagnostics`) and :meth:`Diagnostics.summary`
(the handful of numbers logged as MLflow metrics). Torch only: nothing here knows MLflow or YAML.

What is measured (``L`` layers, width ``d``, ``H`` heads of size ``d_h``; layer ``i`` is ``blocks[i]``):

* **Hidden-state norms**: the L2 norm of every token's hidden state at the embedding output and at
  the output of each block, mean and std over the batch's tokens. GPT's residual stream grows with
  depth; nGPT's lies on the unit sphere (Sec. 2.2.2), so its norms are 1.
* **Weight norms along the embedding axis**: each matrix is viewed as ``[n, d]`` rows along the
  embedding (d_model) axis, the axis nGPT keeps unit-norm (:attr:`models.ngpt.NGPT.MATRIX_NORM_DIMS`):
  W_q, W_k, W_v (the thirds of the fused ``attn.qkv``), W_o^T (``attn.proj``), W_u and W_v of the
  SwiGLU (the halves of ``mlp.fc``; GELU has one ``fc``), W_o^T of the MLP (``mlp.proj``), the
  input embedding and the output head. Mean and std of the row norms per matrix. ~1 for nGPT.
* **Condition numbers** ``sigma_max / sigma_min`` of the same matrices, whole (``cond``), and per
  attention head (``cond_heads``: the ``d_h x d`` slice of W_q, W_k, W_v owned by a head, and the
  ``d x d_h`` columns of W_o it feeds; the scalars keep the median over heads). The paper's
  parameter analysis (Sec. 4) compares these per layer and finds GPT's attention matrices much worse
  conditioned (closer to rank-deficient) than nGPT's, whose unit-norm rows keep them well spread.
* **nGPT only**: the effective values (``param * init / scale``, Sec. 2.5) of the eigen learning
  rates alpha_A and alpha_M (Sec. 2.2.2), s_qk (Sec. 2.3.2), s_u and s_v ("s_uv", Sec. 2.4.2) per
  layer, and s_z (Sec. 2.1, one vector over the vocabulary, padding rows included), from
  :meth:`models.ngpt.NGPT.effective_scalars`.

Scalar names (``XX`` is the zero-padded layer index, ``layer_00`` = first block; ``<m>`` is one of
:data:`MATRICES` present in the model, ``attn_*`` for ``<a>``; ``<stat>`` is mean/std/min/max)::

    diag/hidden_norm/embed/{mean,std}          diag/hidden_norm/layer_XX/{mean,std}
    diag/weight_norm/embed/{mean,std}          diag/weight_norm/lm_head/{mean,std}  (untied only)
    diag/weight_norm/<m>/layer_XX/{mean,std}
    diag/cond/<m>/layer_XX                     diag/cond_heads/<a>/layer_XX  (median over heads)
    diag/ngpt/{alpha_A,alpha_M,s_qk,s_u,s_v}/layer_XX/<stat>      diag/ngpt/s_z/<stat>

Count: ``47 L + 10`` values for nGPT with SwiGLU (574 at 12 layers), ``27 L + 6`` for GPT with
SwiGLU (330), ``24 L + 6`` for GPT with GELU. ``condition_numbers=False`` drops ``11 L`` of them.
So many metrics would bury the losses in MLflow's charts, so training logs them as a table artifact
per evaluation (:meth:`Diagnostics.table_json`) and only :meth:`Diagnostics.summary` as metrics:
the mean token norm after the last block (1 for nGPT), the mean row norm of the layer matrices (1 for
nGPT), the largest condition number of a layer matrix, and for nGPT the mean effective alpha_A and
alpha_M (names in :data:`analysis.record.DIAG_SUMMARY`).

``distributions`` layout (lists of floats; absent keys: see ``kind`` and ``condition_numbers``)::

    {"format_version": 1, "kind": "gpt"|"ngpt", "n_layers": L, "n_embd": d, "n_heads": H,
     "mlp": "swiglu"|"gelu", "tokens": B*T, "matrices": [names of the layer matrices],
     "hidden_norm": {"layers": ["embed", "layer_00", ...], "mean": [L+1], "std": [L+1]},
     "weight_norm": {<m>: {"mean": [L], "std": [L]}, ...},
     "embedding_norm": {"embed": {"mean": x, "std": y}, "lm_head": {...} (untied only)},
     "cond": {<m>: [L]}, "cond_heads": {<a>: [[H] * L]},
     "alpha_A", "alpha_M", "s_qk", "s_u", "s_v": [[values of layer 0], [layer 1], ...],
     "s_z": [V]}

``s_qk`` is flattened per layer to ``d`` values (head-major, as stored). ``tokens`` is the number
of tokens the hidden-state norms average over.

Numerics: condition numbers are ``sqrt(lambda_max / lambda_min)`` of the smaller Gram matrix
(``M M^T`` or ``M^T M``) in float64 via ``torch.linalg.eigvalsh``. That is the exact singular value
ratio to float64 accuracy for ratios up to ~1e6; ``lambda_min`` is floored at ``lambda_max * eps64``,
so a singular matrix reports the finite cap ``1 / sqrt(eps64)`` ~ 6.7e7 instead of ``inf``, and an
all-zero matrix reports NaN. Norms are float32.

Cost (``condition_numbers=True``, which dominates): per layer 7 float64 Gram matrices (~14 GFLOP
at d=768 with SwiGLU, 4d hidden) and their eigenvalues: 7 problems of size ``min(n, d)`` (768 at
GPT-2 small scale) and ``4 H`` of size ``d_h``. Measured on one busy CPU core at d=768, H=12: 1.5 s
per layer with condition numbers, 0.08 s without (the forward of a 2 x 16 batch included). On a
GPU the matmuls are negligible (fp64 tensor cores) and cuSOLVER solves each eigenproblem larger than
32 as its own call (a few ms at 768, well under 1 ms at 64): an estimated 0.3-0.8 s per evaluation
at 12 layers, d=768, **not yet measured on a GPU**. ``condition_numbers=False`` skips all of it
(one forward of ``idx`` plus norms: milliseconds), e.g. for frequent evaluations with the full set
at the end of a run. Weights are read in place; the only copies are one layer's float64 Grams at a
time (7 x 4.7 MB at d=768).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn as nn

from analysis import record
from analysis.record import diag_metric
from models.gpt import GPT
from models.ngpt import NGPT

__all__ = [
    "ATTN_MATRICES",
    "MATRICES",
    "NGPT_SCALARS",
    "Diagnostics",
    "compute_diagnostics",
    "condition_number",
    "layer_label",
]

FORMAT_VERSION = 1

#: Attention matrices, each viewed as ``[n, d]`` rows along the embedding axis.
ATTN_MATRICES: tuple[str, ...] = ("attn_q", "attn_k", "attn_v", "attn_o")
#: Every per-layer matrix name, in plotting order (``mlp_gate`` exists for SwiGLU only).
MATRICES: tuple[str, ...] = ATTN_MATRICES + ("mlp_up", "mlp_gate", "mlp_down")
#: Diagnostics name -> key of :meth:`models.ngpt.NGPT.effective_scalars` (per-layer vectors).
NGPT_SCALARS: dict[str, str] = {
    "alpha_A": "alpha_attn",
    "alpha_M": "alpha_mlp",
    "s_qk": "s_qk",
    "s_u": "s_u",
    "s_v": "s_v",
}

_EPS64 = torch.finfo(torch.float64).eps


@dataclass
class Diagnostics:
    """The result of :func:`compute_diagnostics`.

    ``scalars``: flat metric name -> value (names use ``[A-Za-z0-9_/]`` only).
    ``distributions``: JSON-serializable per-quantity, per-layer data (layout in the module docstring).
    """

    scalars: dict[str, float] = field(default_factory=dict)
    distributions: dict[str, Any] = field(default_factory=dict)

    def to_json(self, indent: int | None = None) -> str:
        """``{"scalars": ..., "distributions": ...}`` as JSON text (NaN written as ``NaN``)."""
        return json.dumps(asdict(self), indent=indent)

    def summary(self) -> dict[str, float]:
        """The few numbers logged as metrics at every evaluation (names in ``analysis.record``): the
        mean token norm after the last block, the mean row norm over every layer matrix, the largest
        condition number of a layer matrix (when computed) and, for nGPT, the mean effective alpha_A
        and alpha_M over layers and dimensions."""
        d = self.distributions
        out = {record.DIAG_HIDDEN_NORM_LAST: float(d["hidden_norm"]["mean"][-1])}
        means = [m for stats in d["weight_norm"].values() for m in stats["mean"]]
        out[record.DIAG_WEIGHT_NORM_MEAN] = float(sum(means) / len(means))
        conds = [c for values in d.get("cond", {}).values() for c in values if not math.isnan(c)]
        if conds:
            out[record.DIAG_COND_MAX] = float(max(conds))
        for name, key in (("alpha_A", record.DIAG_ALPHA_A_MEAN), ("alpha_M", record.DIAG_ALPHA_M_MEAN)):
            if name in d:
                values = [v for layer in d[name] for v in layer]
                out[key] = float(sum(values) / len(values))
        return out

    def table_json(self, step: int, tokens: int) -> str:
        """The per-layer scalars of the evaluation at ``step`` as the artifact training logs:
        ``{"format_version", "step", "tokens", "scalars": {name: value}}``."""
        return json.dumps({"format_version": FORMAT_VERSION, "step": int(step), "tokens": int(tokens),
                           "scalars": self.scalars}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Diagnostics":
        data = json.loads(text)
        return cls(scalars={k: float(v) for k, v in data["scalars"].items()},
                   distributions=data["distributions"])


def layer_label(i: int, n_layers: int) -> str:
    """``layer_00``-style label of block ``i`` (at least two digits, more for >= 100 layers)."""
    return f"layer_{i:0{max(2, len(str(n_layers - 1)))}d}"


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _unwrap(model: nn.Module) -> nn.Module:
    """The plain GPT/NGPT inside ``torch.compile`` (``_orig_mod``) and DDP (``module``) wrappers,
    so hooks fire and no collective runs (only rank 0 needs to call this)."""
    while not isinstance(model, (GPT, NGPT)):
        inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            raise TypeError(f"compute_diagnostics: expected a GPT or NGPT model, got {type(model).__name__}")
        model = inner
    return model


def _layer_matrices(block: nn.Module, d: int, swiglu: bool) -> dict[str, torch.Tensor]:
    """The block's matrices as ``[n, d]`` views whose rows lie along the embedding axis."""
    qkv = block.attn.qkv.weight  # [3d, d], rows [W_q; W_k; W_v]
    fc = block.mlp.fc.weight  # SwiGLU: [2h, d], rows [W_u; W_v]; GELU: [h, d]
    mats = {
        "attn_q": qkv[:d],
        "attn_k": qkv[d:2 * d],
        "attn_v": qkv[2 * d:],
        "attn_o": block.attn.proj.weight.t(),  # W_o is [d, d]: columns along the embedding axis
    }
    if swiglu:
        u, v = fc.chunk(2, dim=0)
        mats.update(mlp_up=u, mlp_gate=v)
    else:
        mats["mlp_up"] = fc
    mats["mlp_down"] = block.mlp.proj.weight.t()  # [d, h] -> [h, d]
    return mats


def _gram(m: torch.Tensor) -> torch.Tensor:
    """The smaller Gram matrix of ``m`` (``[..., n, k]``) in float64: same nonzero eigenvalues as
    the squared singular values of ``m``."""
    m = m.detach().to(torch.float64)
    return m @ m.mT if m.shape[-2] <= m.shape[-1] else m.mT @ m


def _cond_of_grams(grams: torch.Tensor) -> torch.Tensor:
    """``sigma_max / sigma_min`` from Gram matrices ``[..., n, n]`` (float64); see the module
    docstring for the cap on singular matrices."""
    lam = torch.linalg.eigvalsh(grams)  # ascending
    lam_max = lam[..., -1]
    lam_min = torch.maximum(lam[..., 0], lam_max * _EPS64)
    return torch.sqrt(lam_max / lam_min)  # 0/0 -> NaN for an all-zero matrix


def condition_number(matrix: torch.Tensor) -> float:
    """``sigma_max / sigma_min`` of one matrix (any shape ``[n, k]``), as :func:`compute_diagnostics`
    computes it."""
    return float(_cond_of_grams(_gram(matrix)))


def _mean_std(x: torch.Tensor) -> torch.Tensor:
    """``[mean, std]`` (population std, so one value gives 0) of ``x`` in float32."""
    x = x.float()
    return torch.stack([x.mean(), x.std(correction=0)])


def _summary(x: torch.Tensor) -> torch.Tensor:
    """``[mean, std, min, max]`` of ``x`` over its last dim (any leading dims)."""
    x = x.float()
    return torch.stack([x.mean(-1), x.std(-1, correction=0), x.amin(-1), x.amax(-1)], dim=-1)


def _token_norms(h: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(h.detach().float(), dim=-1)


# ---------------------------------------------------------------------------------------------
# the entry point
# ---------------------------------------------------------------------------------------------
def compute_diagnostics(model: nn.Module, idx: torch.Tensor, *,
                        condition_numbers: bool = True) -> Diagnostics:
    """Diagnostics of ``model`` (GPT, qk-norm GPT or NGPT; DDP/compile wrappers are looked through)
    on the token batch ``idx`` (``[B, T]``, on the model's device, ``T <= context_length``).

    Runs under ``torch.no_grad()`` with every module in eval mode, then restores each module's
    train/eval flag. Reads the parameters without changing them and draws no random numbers.
    Forward hooks on ``wte`` and on every block capture the hidden states, so the measured path is
    the model's own ``forward``. Under autocast the hidden states are measured in the dtype the
    model produces them in. ``condition_numbers=False`` skips the (dominant) eigenvalue cost.
    """
    net = _unwrap(model)
    modes = [(m, m.training) for m in model.modules()]
    hidden: list[torch.Tensor] = []  # [mean, std] of token norms: embedding output, then each block

    def capture(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        hidden.append(_mean_std(_token_norms(output)))

    handles = [net.wte.register_forward_hook(capture)]
    handles += [block.register_forward_hook(capture) for block in net.blocks]
    try:
        model.eval()
        with torch.no_grad():
            net(idx)
            return _collect(net, idx, hidden, condition_numbers)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes:
            module.training = training


def _collect(net: GPT | NGPT, idx: torch.Tensor, hidden: list[torch.Tensor],
             condition_numbers: bool) -> Diagnostics:
    c = net.config
    n_layers, d = c.n_layers, c.n_embd
    swiglu = c.mlp == "swiglu"
    if len(hidden) != n_layers + 1:  # pragma: no cover - would mean the forward skipped a block
        raise RuntimeError(f"captured {len(hidden)} hidden states, expected {n_layers + 1}")
    labels = [layer_label(i, n_layers) for i in range(n_layers)]

    # --- weights: row norms along the embedding axis and condition numbers, one layer at a time
    names: list[str] = []
    norm_stats: list[torch.Tensor] = []  # per layer [n_matrices, 2]
    conds: list[torch.Tensor] = []  # per layer [n_matrices]
    head_conds: list[torch.Tensor] = []  # per layer [4, H]
    for block in net.blocks:
        mats = _layer_matrices(block, d, swiglu)
        names = list(mats)
        norm_stats.append(torch.stack([_mean_std(torch.linalg.vector_norm(m.float(), dim=1))
                                       for m in mats.values()]))
        if condition_numbers:
            conds.append(_layer_conds(mats))
            heads = torch.stack([mats[a].reshape(c.n_heads, c.head_dim, d) for a in ATTN_MATRICES])
            head_conds.append(_cond_of_grams(_gram(heads)))  # [4, H]
    io = {"embed": net.wte.weight}
    if not net.embeddings_tied:
        io["lm_head"] = net.lm_head.weight
    io_stats = {k: _mean_std(torch.linalg.vector_norm(w.float(), dim=1)).tolist() for k, w in io.items()}

    hid = torch.stack(hidden).tolist()  # [L + 1, 2]
    norm_l = torch.stack(norm_stats).tolist()  # [L, M, 2]

    scalars: dict[str, float] = {}
    dists: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "kind": c.kind,
        "n_layers": n_layers,
        "n_embd": d,
        "n_heads": c.n_heads,
        "mlp": c.mlp,
        "tokens": int(idx.numel()),
        "matrices": names,
    }
    hidden_labels = ["embed"] + labels
    dists["hidden_norm"] = {"layers": hidden_labels, "mean": [m for m, _ in hid], "std": [s for _, s in hid]}
    for label, (mean, std) in zip(hidden_labels, hid):
        scalars[diag_metric("hidden_norm", label, "mean")] = mean
        scalars[diag_metric("hidden_norm", label, "std")] = std

    dists["embedding_norm"] = {k: {"mean": v[0], "std": v[1]} for k, v in io_stats.items()}
    for k, (mean, std) in io_stats.items():
        scalars[diag_metric("weight_norm", k, "mean")] = mean
        scalars[diag_metric("weight_norm", k, "std")] = std
    dists["weight_norm"] = {}
    for j, name in enumerate(names):
        means = [norm_l[i][j][0] for i in range(n_layers)]
        stds = [norm_l[i][j][1] for i in range(n_layers)]
        dists["weight_norm"][name] = {"mean": means, "std": stds}
        for label, mean, std in zip(labels, means, stds):
            scalars[diag_metric("weight_norm", name, label, "mean")] = mean
            scalars[diag_metric("weight_norm", name, label, "std")] = std

    if condition_numbers:
        cond_l = torch.stack(conds).tolist()  # [L, M]
        per_head = torch.stack(head_conds)  # [L, 4, H]
        medians = per_head.quantile(0.5, dim=-1).tolist()  # [L, 4], the mean of the middle two for even H
        heads_l = per_head.tolist()
        dists["cond"] = {name: [cond_l[i][j] for i in range(n_layers)] for j, name in enumerate(names)}
        dists["cond_heads"] = {a: [heads_l[i][j] for i in range(n_layers)]
                               for j, a in enumerate(ATTN_MATRICES)}
        for j, name in enumerate(names):
            for i, label in enumerate(labels):
                scalars[diag_metric("cond", name, label)] = cond_l[i][j]
        for j, a in enumerate(ATTN_MATRICES):
            for i, label in enumerate(labels):
                scalars[diag_metric("cond_heads", a, label)] = medians[i][j]

    if isinstance(net, NGPT):
        eff = net.effective_scalars()
        for name, key in NGPT_SCALARS.items():
            values = eff[key].reshape(n_layers, -1)  # s_qk: [L, H, d_h] -> [L, d]
            dists[name] = values.tolist()
            for label, stats in zip(labels, _summary(values).tolist()):
                for stat, v in zip(("mean", "std", "min", "max"), stats):
                    scalars[diag_metric("ngpt", name, label, stat)] = v
        dists["s_z"] = eff["s_z"].tolist()
        for stat, v in zip(("mean", "std", "min", "max"), _summary(eff["s_z"]).tolist()):
            scalars[diag_metric("ngpt", "s_z", stat)] = v

    return Diagnostics(scalars={k: float(v) for k, v in scalars.items()}, distributions=dists)


def _layer_conds(mats: dict[str, torch.Tensor]) -> torch.Tensor:
    """Condition numbers of one layer's matrices, in ``mats`` order; Grams of equal size share one
    batched ``eigvalsh``."""
    grams = {name: _gram(m) for name, m in mats.items()}
    out: dict[str, torch.Tensor] = {}
    for size in dict.fromkeys(g.shape[-1] for g in grams.values()):
        group = [name for name, g in grams.items() if g.shape[-1] == size]
        for name, value in zip(group, _cond_of_grams(torch.stack([grams[n] for n in group]))):
            out[name] = value
    return torch.stack([out[name] for name in mats])
