"""The answer's figures, drawn from the summary table: tokens to each target per arm with the speedup vs the
baseline (``tokens_to_target``), and the speedup vs context length (``speedup_vs_context_length``). A bound
(a censored seed, analysis/censoring.py) is drawn hollow and marked ``≥`` or ``≤``; analysis/figures.py
writes them with the curves."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter, NullLocator

from analysis.style import ArmStyle, NotApplicable, caption, loss_label, ordered_arms, tokens_axis
from analysis.tables import INTERVAL_NAME, format_target

__all__ = ["fig_tokens_to_target", "fig_speedup_vs_context", "mark_bounds"]

_BOUND_NOTE = ("hollow marker = a bound (\u2265 lower, \u2264 upper): some seeds never reached the target "
               "(or met it at the smallest budget), see the table")


def fig_tokens_to_target(summary: pd.DataFrame, styles: dict[str, ArmStyle],
                         baseline_arm: str) -> Figure:
    """Tokens to each target per arm, and speedup vs the baseline per target."""
    if summary.empty:
        raise NotApplicable("the summary is empty (no targets or no val/loss)")
    if not summary["reached"].any():
        raise NotApplicable("no arm reached any target")
    targets = list(dict.fromkeys(summary["target"].tolist()))
    unit = summary.attrs.get("loss_unit", "token")
    arms = ordered_arms(summary["arm"].unique(), styles)
    others = [a for a in arms if a != baseline_arm]
    has_speedup = bool(np.isfinite(summary.loc[summary["arm"] != baseline_arm, "speedup"]).any())
    ncols = 2 if has_speedup else 1
    fig = Figure(figsize=(7.0 if has_speedup else 4.2, 3.0))
    axes = np.atleast_1d(fig.subplots(1, ncols))
    xpos = np.arange(len(targets), dtype=float)
    width = 0.6

    ax = axes[0]
    n_by_arm = {arm: _summary_seeds(summary, arm) for arm in arms}
    for i, arm in enumerate(arms):
        off = (i - (len(arms) - 1) / 2) * width / max(len(arms), 1)
        rows = summary[summary["arm"] == arm].set_index("target").reindex(targets)
        # an arm no seed of which reached a target has no point ("n.r."), only the table's censoring bound
        y = np.where(rows["n_reached"].to_numpy(float) > 0, rows["tokens_to_target"].to_numpy(float), np.nan)
        err = np.nan_to_num(rows["tokens_to_target_std"].to_numpy(float), nan=0.0)
        st = styles[arm]
        n = n_by_arm[arm]
        label = f"{arm} (n = {n} seed{'s' if n != 1 else ''})"
        if n > 1:
            ax.errorbar(xpos + off, y, yerr=err, fmt=st.marker, color=st.color, label=label,
                        linestyle="none", markersize=5)
        else:  # one seed: a plain marker, so the legend does not show an error bar that is not there
            ax.plot(xpos + off, y, st.marker, color=st.color, label=label, linestyle="none", markersize=5)
        for xp, yy in zip(xpos + off, y):
            if not np.isfinite(yy):
                ax.annotate("n.r.", xy=(xp, 0.02), xycoords=("data", "axes fraction"),
                            ha="center", va="bottom", fontsize=7, color=st.color, rotation=90)
        mark_bounds(ax, xpos + off, y, rows["tokens_to_target_bound"], st)
    _categorical_targets(ax, targets, unit)
    ax.set_ylabel("tokens to target")
    tokens_axis(ax.yaxis)
    ax.set_ylim(bottom=0)

    if has_speedup:
        ax = axes[1]
        tops = [1.0]
        for j, arm in enumerate(others):
            off = (j - (len(others) - 1) / 2) * width / max(len(arms), 1)
            rows = summary[summary["arm"] == arm].set_index("target").reindex(targets)
            sp = rows["speedup"].to_numpy(float)
            yerr, has_bar = _speedup_bars(rows)
            st = styles[arm]
            tops += [v for v in np.r_[sp, sp + yerr[1]] if np.isfinite(v) and v < _OFF_TOP]
            if has_bar.any():
                ax.errorbar(xpos + off, sp, yerr=yerr, fmt=st.marker, color=st.color, label=arm,
                            linestyle="none", markersize=5)
            else:  # no interval (fewer than 2 paired seeds): no bar in the plot nor in the legend
                ax.plot(xpos + off, sp, st.marker, color=st.color, label=arm, linestyle="none",
                        markersize=5)
            for xp, yy in zip(xpos + off, sp):
                if not np.isfinite(yy):
                    ax.annotate("\u221e" if yy == np.inf else "n.r.", xy=(xp, 0.02),
                                xycoords=("data", "axes fraction"), ha="center", va="bottom", fontsize=7,
                                color=st.color, rotation=0 if yy == np.inf else 90)
            mark_bounds(ax, xpos + off, sp, rows["speedup_bound"], st)
        ax.axhline(1.0, color="0.3", linewidth=0.8, linestyle="--", zorder=1)
        _categorical_targets(ax, targets, unit)
        ax.set_ylabel(f"speedup in tokens vs {baseline_arm} (\u00d7)")
        ax.set_ylim(0, 1.1 * max(tops))  # room above the highest marker or bar
    fig.subplots_adjust(wspace=0.35)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 0.89),
               ncol=min(len(arms), 6), handletextpad=0.3, columnspacing=1.2)
    notes = []
    if any(n > 1 for n in n_by_arm.values()):
        notes.append("tokens: mean over all seeds, bars = \u00b11 s.d. over them")
    else:
        notes.append("tokens: one seed per arm (n = 1), so no error bars")
    if has_speedup:
        level = float(summary.attrs.get("ci_level", 0.95))
        bars = any(isinstance(c, ErrorbarContainer) for c in axes[1].containers)
        notes.append(f"speedup: ratio of the mean tokens, dashed line = no speedup;\n"
                     + _bar_note(summary, level) if bars
                     else "speedup: ratio of the tokens, no interval with one seed; dashed line = no speedup")
    if any(t.get_text() == "n.r." for ax in axes for t in ax.texts):
        notes.append("n.r. = not reached within the run")
    if any(t.get_text() in ("\u2265", "\u2264") for ax in axes for t in ax.texts):
        notes.append(_BOUND_NOTE)
    caption(fig, ";\n".join(notes) + ".")
    return fig


def mark_bounds(ax: Any, x: np.ndarray, y: np.ndarray, bounds: pd.Series, st: ArmStyle) -> None:
    """Draw the points that are bounds (censored seeds, analysis.censoring) hollow, with \u2265 or \u2264 beside."""
    symbol = {"lower": "\u2265", "upper": "\u2264"}
    for xp, yy, bound in zip(x, y, bounds.fillna("").astype(str)):
        if bound in symbol and np.isfinite(yy):
            ax.plot([xp], [yy], st.marker, color=st.color, markerfacecolor="white", markersize=5, zorder=3)
            ax.annotate(symbol[bound], xy=(xp, yy), xytext=(4, 0), textcoords="offset points", ha="left",
                        va="center", fontsize=8, color=st.color)


def _summary_seeds(summary: pd.DataFrame, arm: str) -> int:
    """The number of seeds behind an arm's rows of the summary (its largest `n_seeds`; 1 if unknown)."""
    if "n_seeds" not in summary:
        return 1
    n = pd.to_numeric(summary.loc[summary["arm"] == arm, "n_seeds"], errors="coerce").max()
    return int(n) if np.isfinite(n) else 1


def _categorical_targets(ax: Any, targets: Sequence[float], unit: str) -> None:
    """The targets as a categorical x axis: one slot per target, labelled by its value, separated by
    thin lines; no numeric grid (the slots are evenly spaced whatever the values). `unit`: the loss's."""
    xpos = np.arange(len(targets), dtype=float)
    ax.set_xticks(xpos, [format_target(t) for t in targets])
    ax.tick_params(axis="x", length=0)
    ax.xaxis.set_minor_locator(NullLocator())
    ax.grid(False, axis="x")
    for k in range(1, len(targets)):
        ax.axvline(k - 0.5, color="0.85", linewidth=0.6, zorder=0)
    ax.set_xlim(-0.5, len(targets) - 0.5)
    ax.set_xlabel(loss_label(unit, "target val."))


def fig_speedup_vs_context(summary: pd.DataFrame, styles: dict[str, ArmStyle],
                           baseline_arm: str) -> Figure:
    """Speedup vs context length, one panel per target (only with several context lengths)."""
    s = summary[~summary["is_baseline"]] if not summary.empty else summary
    ctx = pd.to_numeric(s["context_length"], errors="coerce") if not s.empty else pd.Series([])
    s = s[ctx.notna().to_numpy(dtype=bool)] if not s.empty else s
    n_ctx = int(pd.to_numeric(summary["context_length"], errors="coerce").dropna().nunique()) \
        if not summary.empty else 0
    if n_ctx < 2:
        raise NotApplicable("the experiment has a single context length")
    if s.empty or not np.isfinite(s["speedup"].to_numpy(float)).any():
        raise NotApplicable("no speedup to plot (no non-baseline arm reached a target)")
    finite = np.isfinite(s["speedup"].to_numpy(float))
    # one panel per target that some arm reached (a panel with no point cannot be log-scaled)
    targets = list(dict.fromkeys(s.loc[finite, "target"].tolist()))
    ncols = min(len(targets), 3)
    nrows = math.ceil(len(targets) / ncols)
    fig = Figure(figsize=(2.6 * ncols + 0.8, 2.8 * nrows))
    axes = np.atleast_1d(fig.subplots(nrows, ncols, sharey=True, squeeze=False)).ravel()
    ctx_ticks = sorted(int(c) for c in pd.to_numeric(s["context_length"]).dropna().unique())
    tops = [1.0]
    for k, t in enumerate(targets):
        ax = axes[k]
        for arm in ordered_arms(s["arm"].unique(), styles):
            r = s[(s["arm"] == arm) & (s["target"] == t)].sort_values("context_length")
            x = r["context_length"].to_numpy(float)
            sp = r["speedup"].to_numpy(float)
            yerr, _ = _speedup_bars(r)
            tops += [v for v in np.r_[sp, sp + yerr[1]] if np.isfinite(v) and v < _OFF_TOP]
            ax.errorbar(x, sp, yerr=yerr, label=arm, **styles[arm].line_kwargs())
            mark_bounds(ax, x, sp, r["speedup_bound"], styles[arm])
        ax.axhline(1.0, color="0.3", linewidth=0.8, linestyle="--", zorder=1)
        ax.set_xscale("log", base=2)
        ax.set_xlim(ctx_ticks[0] / 1.3, ctx_ticks[-1] * 1.3)
        ax.set_xticks(ctx_ticks, [str(c) for c in ctx_ticks])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(f"target {format_target(t)}")
        ax.set_xlabel("context length (tokens)")
        if k % ncols == 0:
            ax.set_ylabel(f"speedup in tokens vs {baseline_arm} (\u00d7)")
    for ax in axes[len(targets):]:
        ax.set_visible(False)
    axes[0].set_ylim(0, 1.1 * max(tops))  # shared: room above the highest marker or bar
    axes[0].legend(loc="best")
    level = float(summary.attrs.get("ci_level", 0.95))
    notes = ["Speedup = ratio of the mean tokens to the target; dashed line = no speedup;\n"
             + _bar_note(summary, level)]
    if any(t.get_text() in ("\u2265", "\u2264") for ax in axes for t in ax.texts):
        notes.append(_BOUND_NOTE)
    caption(fig, ";\n".join(notes) + ".")
    return fig


_OFF_TOP = 1e12  # where a bar with no upper end is drawn to: off the top of every speedup axis


def _speedup_bars(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Error bars (2 x n, below and above the point) of the speedups in ``rows``, and which rows have one.

    An exact speedup's bar is its two-sided interval (one with no upper end runs off the top of the axis);
    a bound's bar is its one-sided limit only: from the lower limit up to a ``\u2265`` point, from a
    ``\u2264`` point up to its upper limit."""
    sp, lo, hi = (rows[c].to_numpy(float) for c in ("speedup", "speedup_ci_low", "speedup_ci_high"))
    bound = rows["speedup_bound"].fillna("").astype(str).to_numpy()
    below = np.where(bound == "upper", 0.0, sp - lo)
    above = np.where(bound == "lower", 0.0, np.minimum(hi, _OFF_TOP) - sp)
    yerr = np.clip(np.nan_to_num(np.vstack([below, above]), nan=0.0, posinf=0.0), 0, None)
    has = np.isfinite(sp) & ((bound == "upper") & np.isfinite(hi) | (bound != "upper") & np.isfinite(lo))
    return yerr, has


def _bar_note(summary: pd.DataFrame, level: float) -> str:
    """What the speedup bars are, as a caption says it."""
    text = f"bars = {level:.0%} {INTERVAL_NAME} (none with fewer than 2 paired seeds)"
    rows = summary[~summary["is_baseline"].astype(bool)]
    bound = rows["speedup_bound"].fillna("").astype(str)
    if bound.isin(["lower", "upper"]).any():
        text += ";\na bound's bar is its one-sided limit only"
    if ((bound == "") & (rows["speedup_ci_high"].to_numpy(float) == np.inf)).any():
        text += ";\na bar running off the top has no upper end at this level"
    return text
