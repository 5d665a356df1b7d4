"""Figures of a sweep: the learning-rate search, and cooldown branches against full runs."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from analysis.curves import final_losses
from analysis.style import ArmStyle, NotApplicable, format_tokens, loss_label, ordered_arms, target_lines, tokens_axis

__all__ = ["fig_lr_search", "fig_cooldown_vs_full"]


def fig_lr_search(table: pd.DataFrame, styles: dict[str, ArmStyle], unit: str = "token") -> Figure:
    """Mean final validation loss against the learning rate (log x), one line per arm and search
    budget (and context length, when the table spans several: each length has its own search, drawn
    with its own line style); the chosen rate is circled, diverged rates are marked x at the top of the axes."""
    if table is None or table.empty:
        raise NotApplicable("no learning-rate search in these runs")
    fig = Figure(figsize=(5.0, 3.3))
    ax = fig.subplots()
    budgets = sorted(table["budget"].dropna().unique())
    has_ctx = "context_length" in table.columns and table["context_length"].notna().any()
    ctxs = sorted(int(c) for c in table["context_length"].dropna().unique()) if has_ctx else [None]
    dashes = ["-", "--", ":", "-."]
    for arm in ordered_arms(table["arm"].unique().tolist(), styles):
        st = styles.get(arm) or ArmStyle("0.3", "-", "o")
        for (i, ctx), budget in ((c, b) for c in enumerate(ctxs) for b in budgets):
            sel = (table["arm"] == arm) & (table["budget"] == budget)
            if ctx is not None:
                sel &= (table["context_length"] == ctx).fillna(False)
            g = table[sel.to_numpy(dtype=bool)].sort_values("lr")
            if g.empty:
                continue
            label = arm if len(budgets) == 1 else f"{arm}, {format_tokens(float(budget))} tokens"
            kwargs = st.line_kwargs()
            if len(ctxs) > 1:
                label += f", ctx {ctx}"
                kwargs["linestyle"] = dashes[i % len(dashes)]
            ok = np.isfinite(g["final_val_loss"].to_numpy(float))
            yerr = g["final_val_loss_std"].fillna(0.0).to_numpy(float)[ok]
            ax.errorbar(g["lr"][ok], g["final_val_loss"][ok], yerr=yerr, label=label, capsize=2, **kwargs)
            chosen = g[g["chosen"].astype(bool)]
            ax.plot(chosen["lr"], chosen["final_val_loss"], linestyle="none", marker="o", markersize=11,
                    markerfacecolor="none", markeredgecolor=st.color, markeredgewidth=1.2)
            failed = g[g["n_failed"] > 0]
            if not failed.empty:
                ax.plot(failed["lr"], [1.0] * len(failed), linestyle="none", marker="x", color=st.color,
                        transform=ax.get_xaxis_transform(), clip_on=False)
    ax.set_xscale("log")
    grid = sorted(table["lr"].astype(float).unique())
    ax.set_xticks(grid, [f"{v:g}" for v in grid], rotation=45 if len(grid) > 4 else 0)  # exactly the rates run
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("peak learning rate (log scale)")
    ax.set_ylabel("final " + loss_label(unit))
    ax.set_title("learning-rate search (circled: chosen; x: diverged)", fontsize=8)
    ax.legend(loc="best", fontsize=6 if len(ctxs) > 1 else None)
    return fig


def fig_cooldown_vs_full(frame: pd.DataFrame, cooldown_frame: pd.DataFrame | None, targets: Sequence[float],
                         styles: dict[str, ArmStyle], unit: str = "token") -> Figure:
    """Final validation loss against the budget: full runs (solid) and WSD cooldown branches (dotted,
    open markers), mean over seeds, per arm."""
    if cooldown_frame is None or cooldown_frame.empty:
        raise NotApplicable("no invocation trained both full runs and cooldown branches (sweep.method: both)")
    fig = Figure(figsize=(5.0, 3.3))
    ax = fig.subplots()
    full, cool = final_losses(frame), final_losses(cooldown_frame)
    for arm in ordered_arms(sorted(set(full["arm"]) | set(cool["arm"])), styles):
        st = styles.get(arm) or ArmStyle("0.3", "-", "o")
        for fl, name, kwargs in ((full, "full", {}),
                                 (cool, "cooldown", {"linestyle": ":", "markerfacecolor": "white"})):
            g = fl[fl["arm"] == arm].groupby("budget")["value"].mean().sort_index()
            if g.empty:
                continue
            ax.plot(g.index.to_numpy(float), g.to_numpy(float), label=f"{arm} ({name})",
                    **{**st.line_kwargs(), **kwargs})
    ax.set_xscale("log")
    tokens_axis(ax.xaxis, log=True)
    budgets = sorted(set(full["budget"].dropna().astype(float)) | set(cool["budget"].dropna().astype(float)))
    if len(budgets) <= 8:  # label exactly the budgets that were run
        ax.set_xticks(budgets, [format_tokens(b) for b in budgets])
        ax.xaxis.set_minor_locator(NullLocator())
    target_lines(ax, targets, where="right")
    ax.set_xlabel("token budget (tokens, log scale)")
    ax.set_ylabel("final " + loss_label(unit))
    ax.legend(loc="best", fontsize=7)
    return fig
