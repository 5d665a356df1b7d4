"""Figures of the hypersphere diagnostics (``training.model_diagnostics``), one JSON per arm.

Each child run of an experiment logs its final diagnostics as the artifact ``diagnostics/final.json``
(``{"scalars": ..., "distributions": ...}``); :func:`load_diagnostics` returns the
``distributions`` part, and the figure builders take ``{arm: distributions}``. Layout of a
``distributions`` dict (documented in full in ``training/model_diagnostics.py``; no torch here)::

    kind, n_layers, matrices, hidden_norm{mean, std}, weight_norm{<m>: {mean, std}},
    embedding_norm{embed, lm_head}, cond{<m>: [L]}, cond_heads{attn_*: [[H] * L]},
    alpha_A, alpha_M, s_qk, s_u, s_v: [[values] * L], s_z: [V]     (the last six: nGPT only)

Figures (the analyses of the nGPT paper, Loshchilov et al., arXiv 2410.01131, Sec. 4):

* ``diag_ngpt_scalars``: box plots per layer of the effective eigen learning rates alpha_A, alpha_M
  (Sec. 2.2.2) and the scaling vectors s_qk, s_u, s_v (Sec. 2.3.2, 2.4.2), histogram of s_z
  (Sec. 2.1); nGPT arms only;
* ``diag_condition_numbers``: condition number of each attention and MLP matrix per layer, one line
  per arm (log y): GPT vs nGPT conditioning;
* ``diag_condition_numbers_heads``: the same per attention head, median over heads with the
  min..max band;
* ``diag_norms``: hidden-state L2 norm after the embedding and after each block, and the mean row
  norm (along the embedding axis) of each layer's matrices, per arm.

Styles come from :func:`analysis.style.arm_styles` (readable in black and white); files are
written by :func:`analysis.style.save_figure` (PNG at 300 dpi and PDF).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from analysis.errors import AnalysisWarning
from analysis.style import ArmStyle, NotApplicable, arm_styles, caption, save_figure, style_context

__all__ = [
    "diagnostics_figures",
    "fig_condition_numbers",
    "fig_ngpt_scalars",
    "fig_norms",
    "load_diagnostics",
]

ATTN_MATRICES = ("attn_q", "attn_k", "attn_v", "attn_o")
MATRICES = ATTN_MATRICES + ("mlp_up", "mlp_gate", "mlp_down")
MATRIX_LABELS = {
    "attn_q": "attention $W_q$",
    "attn_k": "attention $W_k$",
    "attn_v": "attention $W_v$",
    "attn_o": "attention $W_o$",
    "mlp_up": "MLP $W_u$ (up)",
    "mlp_gate": "MLP $W_v$ (gate)",
    "mlp_down": "MLP $W_o$ (down)",
}
#: nGPT per-layer vectors (key, axis label) in panel order; s_z gets a histogram.
NGPT_PANELS = (
    ("alpha_A", r"$\alpha_A$ (attention eigen LR)"),
    ("alpha_M", r"$\alpha_M$ (MLP eigen LR)"),
    ("s_qk", r"$s_{qk}$"),
    ("s_u", r"$s_u$"),
    ("s_v", r"$s_v$"),
)
_HATCHES = ["", "////", "....", "xxxx", "\\\\\\\\", "++"]


def load_diagnostics(path: Path | str) -> dict[str, Any]:
    """The ``distributions`` dict of a diagnostics JSON file (a whole ``Diagnostics`` JSON, as the
    runner logs it, or a bare ``distributions`` dict)."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data["distributions"] if isinstance(data.get("distributions"), dict) else data


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def _styles(dists_by_arm: Mapping[str, Mapping[str, Any]],
            baseline_arm: str | None) -> dict[str, ArmStyle]:
    """One style per arm, the same in every diagnostics figure; by default the first GPT arm is the
    baseline (black, solid)."""
    if baseline_arm is None:
        baseline_arm = next((a for a, d in dists_by_arm.items() if d.get("kind") == "gpt"), None)
    return arm_styles(list(dists_by_arm), baseline_arm)


def _ordered(arms: list[str], styles: dict[str, ArmStyle]) -> list[str]:
    order = list(styles)
    return sorted(arms, key=lambda a: order.index(a) if a in order else len(order))


def _floats(values: Any) -> np.ndarray:
    """A float array with ``None`` (JSON null) as NaN."""
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def _layer_ticks(ax: Any, n_layers: int, with_embed: bool = False) -> None:
    step = max(1, math.ceil(n_layers / 12))
    ticks = list(range(0, n_layers, step))
    labels = [str(t) for t in ticks]
    if with_embed:
        ticks, labels = [-1] + ticks, ["emb"] + labels
    ax.set_xticks(ticks, labels)


def _plain(value: float, _pos: Any = None) -> str:
    return f"{value:g}"


def log_ticks(lo: float, hi: float, min_ticks: int = 3) -> list[float]:
    """Tick values for a log axis spanning [lo, hi], at least `min_ticks` of them: over a factor 10 or more,
    decades (1, 10, 100) if there are enough, else 1-3-10, else 1-2-5; on a narrower range (where a log
    axis looks almost linear) or when those are too few, 3 to 6 evenly spaced round values."""
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo <= 0 or hi <= lo:
        return []
    if hi / lo >= 10:
        for subs in ((1.0,), (1.0, 3.0), (1.0, 2.0, 5.0)):
            ticks = [float(t) for t in LogLocator(base=10, subs=subs, numticks=50).tick_values(lo, hi)
                     if lo <= t <= hi]
            if len(ticks) >= min_ticks:
                return ticks
    for nbins in (4, 6, 9):
        ticks = [float(t) for t in MaxNLocator(nbins=nbins, steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi)
                 if lo <= t <= hi and t > 0]
        if len(ticks) >= min_ticks:
            break
    return [float(f"{t:.12g}") for t in ticks]  # 5.000000000000001 -> 5.0


def _log_y(ax: Any) -> None:
    """Log y with several labelled ticks in plain numbers ("300", "2.5") whatever the range (matplotlib's
    default log locator labels only decades: one label, or none, on the narrow ranges seen here);
    unlabelled minor ticks at the integer multiples of each decade."""
    ax.set_yscale("log")
    lo, hi = ax.get_ylim()
    ticks = log_ticks(lo, hi)
    if ticks:
        ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_major_formatter(FuncFormatter(_plain))
    ax.yaxis.set_minor_locator(LogLocator(base=10, subs=tuple(float(k) for k in range(1, 10)), numticks=50))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_ylim(lo, hi)


def _log_if_spread(ax: Any, values: list[np.ndarray]) -> None:
    """Log y when the positive finite values span more than a factor 10."""
    v = np.concatenate([x[np.isfinite(x)] for x in values]) if values else np.array([])
    v = v[v > 0]
    if v.size and v.max() / v.min() > 10:
        _log_y(ax)


def _legend(fig: Figure, arms: list[str], styles: dict[str, ArmStyle], top: float = 0.99,
            band: str | None = None) -> None:
    """One entry per arm, and with `band` one grey patch saying what the shaded bands are."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], label=a, **styles[a].line_kwargs()) for a in arms]
    if band:
        handles.append(Patch(facecolor="0.5", alpha=0.3, linewidth=0, label=f"band: {band}"))
    fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, top),
               ncol=min(len(handles), 6), handletextpad=0.4, columnspacing=1.2)


# --------------------------------------------------------------------------------------------------
# figure builders (each returns a Figure or raises NotApplicable)
# --------------------------------------------------------------------------------------------------


def fig_ngpt_scalars(dists_by_arm: Mapping[str, Mapping[str, Any]],
                     baseline_arm: str | None = None) -> Figure:
    """Box plots per layer of alpha_A, alpha_M, s_qk, s_u, s_v (boxes: quartiles, whiskers: 5th to
    95th percentile over the vector's entries) and a histogram of s_z, one colour/hatch per nGPT arm.
    Arms without these keys (GPT) are skipped."""
    styles = _styles(dists_by_arm, baseline_arm)
    arms = _ordered([a for a, d in dists_by_arm.items() if any(k in d for k, _ in NGPT_PANELS)], styles)
    if not arms:
        raise NotApplicable("no nGPT arm (no alpha_A/alpha_M/s_qk/s_u/s_v in the diagnostics)")
    fig = Figure(figsize=(7.2, 4.8))
    axes = fig.subplots(2, 3).ravel()
    width = 0.8 / len(arms)
    for ax, (key, label) in zip(axes, NGPT_PANELS):
        n_layers = 0
        for k, arm in enumerate(arms):
            per_layer = dists_by_arm[arm].get(key)
            if not per_layer:
                continue
            data = [_floats(v) for v in per_layer]
            data = [x[np.isfinite(x)] for x in data]
            n_layers = max(n_layers, len(data))
            pos = np.arange(len(data)) + (k - (len(arms) - 1) / 2) * width
            color = styles[arm].color
            ax.boxplot(data, positions=pos, widths=width * 0.85, whis=(5, 95), showfliers=False,
                             patch_artist=True, manage_ticks=False,
                             boxprops=dict(facecolor="white", edgecolor=color, linewidth=0.8,
                                           hatch=_HATCHES[k % len(_HATCHES)]),
                             medianprops=dict(color=color, linewidth=1.2),
                             whiskerprops=dict(color=color, linewidth=0.8),
                             capprops=dict(color=color, linewidth=0.8))
        ax.set_ylabel(label)
        ax.set_xlabel("layer")
        if n_layers:
            _layer_ticks(ax, n_layers)
            ax.set_xlim(-0.6, n_layers - 0.4)
        else:
            ax.set_visible(False)
    ax = axes[len(NGPT_PANELS)]
    drawn = False
    for k, arm in enumerate(arms):
        s_z = dists_by_arm[arm].get("s_z")
        if not s_z:
            continue
        x = _floats(s_z)
        x = x[np.isfinite(x)]
        st = styles[arm]
        ax.hist(x, bins=60, histtype="step", color=st.color, linestyle=st.linestyle, linewidth=1.1)
        drawn = True
    if drawn:
        ax.set_xlabel(r"$s_z$ (logit scale, all vocabulary rows)")
        ax.set_ylabel("count")
    else:
        ax.set_visible(False)
    fig.subplots_adjust(wspace=0.45, hspace=0.45)
    handles = [Patch(facecolor="white", edgecolor=styles[a].color, hatch=_HATCHES[k % len(_HATCHES)],
                     label=a) for k, a in enumerate(arms)]
    fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 0.93),
               ncol=min(len(arms), 6), handletextpad=0.4, columnspacing=1.2)
    caption(fig, "One box per layer over the vector's entries: box = quartiles, line = median, whiskers = "
                 "5th to 95th percentile (no outliers drawn).\n"
                 r"$s_z$: histogram over the vocabulary rows. Values as used in the forward pass.")
    return fig


def fig_condition_numbers(dists_by_arm: Mapping[str, Mapping[str, Any]],
                          baseline_arm: str | None = None, per_head: bool = False) -> Figure:
    """Condition number (sigma_max / sigma_min) per layer of each attention and MLP matrix, one
    line per arm, log y. ``per_head``: the attention matrices per head instead (median over heads,
    band = min..max over heads)."""
    styles = _styles(dists_by_arm, baseline_arm)
    key = "cond_heads" if per_head else "cond"
    arms = _ordered([a for a, d in dists_by_arm.items() if d.get(key)], styles)
    if not arms:
        raise NotApplicable(f"no {'per-head ' if per_head else ''}condition numbers in the diagnostics")
    present = {m for a in arms for m in dists_by_arm[a][key]}
    names = [m for m in MATRICES if m in present]
    ncols = min(len(names), 4)
    nrows = math.ceil(len(names) / ncols)
    fig = Figure(figsize=(1.9 * ncols + 0.6, 2.1 * nrows + 0.3))
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, name in zip(axes, names):
        n_layers = 0
        for arm in arms:
            values = dists_by_arm[arm][key].get(name)
            if not values:
                continue
            st = styles[arm]
            if per_head:
                heads = [_floats(h) for h in values]
                mid = np.array([np.nanmedian(h) if np.isfinite(h).any() else np.nan for h in heads])
                lo = np.array([np.nanmin(h) if np.isfinite(h).any() else np.nan for h in heads])
                hi = np.array([np.nanmax(h) if np.isfinite(h).any() else np.nan for h in heads])
                x = np.arange(len(mid))
                ax.fill_between(x, lo, hi, color=st.color, alpha=0.15, linewidth=0)
                ax.plot(x, mid, label=arm, **st.line_kwargs())
            else:
                y = _floats(values)
                x = np.arange(len(y))
                ax.plot(x, y, label=arm, **st.line_kwargs())
            n_layers = max(n_layers, len(x))
        _log_y(ax)
        ax.set_title(MATRIX_LABELS.get(name, name) + (" per head" if per_head else ""))
        ax.set_xlabel("layer")
        _layer_ticks(ax, max(n_layers, 1))
    for k in range(0, len(names), ncols):
        axes[k].set_ylabel("median over heads of\ncondition number" if per_head else "condition number")
    for ax in axes[len(names):]:
        ax.set_visible(False)
    fig.subplots_adjust(wspace=0.5, hspace=0.6)
    if per_head:
        _legend(fig, arms, styles, band="min..max over heads")
        caption(fig, r"Condition number $\sigma_{max}/\sigma_{min}$ of each head's block of the matrix (log "
                     "scale): line = median over the heads of the layer, band = min..max over them.")
    else:
        _legend(fig, arms, styles)
        caption(fig, r"Condition number $\sigma_{max}/\sigma_{min}$ of each matrix, per layer (log scale); "
                     "one value per layer and arm (no band).")
    return fig


def fig_norms(dists_by_arm: Mapping[str, Mapping[str, Any]], baseline_arm: str | None = None) -> Figure:
    """Left: hidden-state L2 norm after the embedding ("emb") and after each block, mean over
    tokens with a +-1 std band. Right: mean row norm along the embedding axis of each layer's
    matrices (averaged over the layer's matrices, band = min..max over them), with the input
    embedding at "emb". nGPT keeps both at 1; GPT's grow."""
    styles = _styles(dists_by_arm, baseline_arm)
    arms = _ordered([a for a, d in dists_by_arm.items() if d.get("hidden_norm") or d.get("weight_norm")],
                    styles)
    if not arms:
        raise NotApplicable("no hidden_norm or weight_norm in the diagnostics")
    fig = Figure(figsize=(7.0, 2.9))
    ax_h, ax_w = fig.subplots(1, 2)
    hidden_vals: list[np.ndarray] = []
    weight_vals: list[np.ndarray] = []
    n_h = n_w = 0
    for arm in arms:
        d = dists_by_arm[arm]
        st = styles[arm]
        hn = d.get("hidden_norm")
        if hn and hn.get("mean"):
            mean, std = _floats(hn["mean"]), _floats(hn.get("std") or [0.0] * len(hn["mean"]))
            x = np.arange(len(mean)) - 1  # entry 0 is the embedding output
            ax_h.fill_between(x, mean - std, mean + std, color=st.color, alpha=0.15, linewidth=0)
            ax_h.plot(x, mean, label=arm, **st.line_kwargs())
            hidden_vals.append(mean)
            n_h = max(n_h, len(mean) - 1)
        wn = d.get("weight_norm")
        if wn:
            per_matrix = np.array([_floats(v["mean"]) for v in wn.values()])  # [M, L]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN layers stay NaN
                mean = np.nanmean(per_matrix, axis=0)
                lo, hi = np.nanmin(per_matrix, axis=0), np.nanmax(per_matrix, axis=0)
            x = np.arange(mean.size)
            emb = (d.get("embedding_norm") or {}).get("embed")
            if emb is not None and emb.get("mean") is not None:
                e = float(emb["mean"])
                x, mean = np.r_[-1, x], np.r_[e, mean]
                lo, hi = np.r_[e, lo], np.r_[e, hi]
            ax_w.fill_between(x, lo, hi, color=st.color, alpha=0.15, linewidth=0)
            ax_w.plot(x, mean, label=arm, **st.line_kwargs())
            weight_vals.append(np.r_[lo, hi])
            n_w = max(n_w, per_matrix.shape[1])
    for ax, vals, n, ylabel in ((ax_h, hidden_vals, n_h, "hidden-state L2 norm"),
                                (ax_w, weight_vals, n_w, "mean row norm of the\nlayer's matrices")):
        if not vals:
            ax.set_visible(False)
            continue
        _log_if_spread(ax, vals)
        _layer_ticks(ax, max(n, 1), with_embed=True)
        ax.set_xlabel("layer (output of block)" if ax is ax_h else "layer")
        ax.set_ylabel(ylabel)
    fig.subplots_adjust(wspace=0.4)
    _legend(fig, arms, styles, top=0.97)
    caption(fig, "Left: mean over the validation tokens, band = \u00b11 s.d. over the tokens. Right: mean over "
                 "the layer's matrices, band = min..max over them;\n'emb' = the input embedding. "
                 "One run per arm, its final model.")
    return fig


# --------------------------------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------------------------------


def diagnostics_figures(dists_by_arm: Mapping[str, Mapping[str, Any]], out_dir: Path,
                        baseline_arm: str | None = None) -> list[Path]:
    """Write every diagnostics figure that applies into ``out_dir`` (``<stem>.png`` at 300 dpi and
    ``<stem>.pdf``); returns the files written. A figure that does not apply is skipped silently;
    one that fails unexpectedly is skipped with an :class:`~analysis.errors.AnalysisWarning`."""
    builders: list[tuple[str, Callable[[], Figure]]] = [
        ("diag_ngpt_scalars", lambda: fig_ngpt_scalars(dists_by_arm, baseline_arm)),
        ("diag_condition_numbers", lambda: fig_condition_numbers(dists_by_arm, baseline_arm)),
        ("diag_condition_numbers_heads",
         lambda: fig_condition_numbers(dists_by_arm, baseline_arm, per_head=True)),
        ("diag_norms", lambda: fig_norms(dists_by_arm, baseline_arm)),
    ]
    written: list[Path] = []
    for stem, build in builders:
        try:
            with style_context():
                fig = build()
            written.extend(save_figure(fig, Path(out_dir), stem))
        except NotApplicable:
            continue
        except Exception as exc:  # noqa: BLE001 - one broken figure must not stop the others
            warnings.warn(f"figure {stem} failed: {type(exc).__name__}: {exc}", AnalysisWarning,
                          stacklevel=2)
    return written
