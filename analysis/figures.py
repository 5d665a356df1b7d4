"""Thesis figures from the tidy frame and the summary table (matplotlib, no GUI backend).

Every figure is written twice, as ``<name>.png`` (300 dpi) and ``<name>.pdf`` (vector, TrueType
fonts embedded, no creation date so reruns give identical files). All figures share one style
(:data:`analysis.style.STYLE`) and one per-arm style (:func:`analysis.style.arm_styles`): colour *and* line style *and* marker, so
they stay readable in black and white. The baseline arm is always black and solid.

Figures (``<sfx>`` is ``_ctx<L>`` when the experiment spans several context lengths, else empty):

* ``val_loss_vs_tokens<sfx>``: validation loss vs tokens, mean over seeds, band = min..max over
  seeds, dotted target lines (each arm's largest-budget runs); a marker at every evaluation (one in k
  beyond 41 evaluations, as the caption says);
* ``val_loss_vs_time<sfx>``: the same against training wall-clock seconds;
* ``tokens_to_target<sfx>``: tokens to each target per arm (error bars +-1 s.d. over seeds) and
  speedup vs the baseline per target (error bars = Fieller interval, paired by seed);
* ``final_loss_vs_budget<sfx>``: budget mode only: final validation loss vs token budget (log x),
  error bars = min..max over seeds, ``|`` marks = interpolated tokens to target;
* ``speedup_vs_context_length``: only when several context lengths were run;
* ``train_loss_lr_vs_tokens<sfx>``: training loss (moving average when dense) and learning rate, mean over
  seeds (the caption says how many), no band.

The two figures of the answer itself, ``tokens_to_target`` and ``speedup_vs_context_length``, are drawn from
the summary table in :mod:`analysis.answer_figures`; the curves here, and :func:`make_figures` writes all.

Each figure says on itself what its bands and bars are (a legend entry or a caption-like note under
it, :func:`caption`); a one-seed arm is labelled "n = 1" and gets no error bar. Targets are a
categorical axis (one slot per target, labelled by its value).

Figures that do not apply are skipped, with the reason, in :attr:`FigureOutput.skipped`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator, ScalarFormatter

from analysis import record
from analysis.curves import (
    context_lengths,
    curve_runs,
    final_losses,
    mean_over_seeds,
    select_context,
)
from analysis.answer_figures import fig_speedup_vs_context, fig_tokens_to_target
from analysis.errors import AnalysisWarning
from analysis.style import (TOKENS_LABEL, ArmStyle, NotApplicable, arm_styles, caption, format_tokens, loss_label,
                            markevery, ordered_arms, save_figure, style_context, target_lines, thin, tokens_axis)

__all__ = ["FigureOutput", "make_figures"]


@dataclass
class FigureOutput:
    """Files written (PNG and PDF of every figure) and figures skipped with the reason."""

    written: list[Path] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------
# small drawing helpers
# --------------------------------------------------------------------------------------------------


def _n_seeds(runs: pd.DataFrame, arm: str) -> int:
    return int(runs.loc[runs["arm"] == arm, "run_id"].nunique())


#: a validation curve marks every evaluation up to this many points, else one evaluation in k
_MAX_MARKERS = 41


def _evaluation_markers(n_points: int) -> int:
    """Mark every k-th point of a validation curve (its points are evaluations): k = 1 for up to
    `_MAX_MARKERS` evaluations, so the markers show where the loss was measured."""
    return max(1, -(-n_points // _MAX_MARKERS))


def _seeds_note(counts: dict[str, int]) -> str:
    """How many seeds each arm's lines average, said once for the figure."""
    values = set(counts.values())
    if values == {1}:
        return "One seed per arm (n = 1)"
    if len(values) == 1:
        return f"Mean over {values.pop()} seeds per arm"
    return "Mean over seeds (" + ", ".join(f"{arm}: n = {n}" for arm, n in counts.items()) + ")"


# --------------------------------------------------------------------------------------------------
# figure builders (each returns a Figure or raises NotApplicable)
# --------------------------------------------------------------------------------------------------


def fig_val_loss(frame: pd.DataFrame, targets: Sequence[float], styles: dict[str, ArmStyle],
                 x: str = "tokens", unit: str = "token") -> Figure:
    """Validation loss vs tokens (or vs ``elapsed_s``), mean over seeds with a min..max band."""
    runs = curve_runs(frame[frame["metric"] == record.VAL_LOSS])
    band = mean_over_seeds(runs, record.VAL_LOSS, x=x)
    if band.empty:
        what = record.TOKENS if x == "tokens" else record.ELAPSED_S
        raise NotApplicable(f"no {record.VAL_LOSS} values with a known {what}")
    fig = Figure(figsize=(5.0, 3.3))
    ax = fig.subplots()
    any_band = False
    every = _evaluation_markers(int(band.groupby("arm").size().max()))
    for arm in ordered_arms(band["arm"].unique(), styles):
        b = band[band["arm"] == arm]
        n = _n_seeds(runs, arm)
        label = arm if n <= 1 else f"{arm} (mean of {n} seeds)"
        xs, ys, lo, hi = (b[c].to_numpy() for c in ("x", "mean", "min", "max"))  # every evaluation, unthinned
        ax.plot(xs, ys, label=label, markevery=every, **styles[arm].line_kwargs())
        if n > 1:
            any_band = True
            ax.fill_between(xs, lo, hi, color=styles[arm].color, alpha=0.15, linewidth=0)
    target_lines(ax, targets)
    if x == "tokens":
        ax.set_xlabel(TOKENS_LABEL)
        tokens_axis(ax.xaxis)
    else:
        ax.set_xlabel("training time (s)")
    ax.set_ylabel(loss_label(unit))
    handles, labels = ax.get_legend_handles_labels()
    if any_band:
        from matplotlib.patches import Patch

        handles.append(Patch(facecolor="0.5", alpha=0.3, linewidth=0))
        labels.append("band: min..max over seeds")
    ax.legend(handles, labels, loc="upper right")
    per_run = runs.dropna(subset=[x]).groupby(["arm", "run_id"]).size().groupby("arm").max()
    shared = bool((band.groupby("arm").size() <= per_run.reindex(band["arm"].unique())).all())
    which = "the evaluations" if shared else "the evaluations of every seed (the mean is interpolated between them)"
    marks = f"Markers: {which}." if every == 1 else f"Markers: one in {every} of {which}."
    caption(fig, marks if any_band else f"One seed per arm (n = 1): no band. {marks}")
    return fig


def fig_final_loss_vs_budget(frame: pd.DataFrame, summary: pd.DataFrame,
                             targets: Sequence[float], styles: dict[str, ArmStyle], unit: str = "token") -> Figure:
    """Budget mode: final validation loss vs token budget per arm (log x)."""
    fl = final_losses(frame)
    fl = fl[pd.to_numeric(fl["budget"], errors="coerce").notna()]
    multi = fl.groupby("arm")["budget"].nunique()
    multi = multi[multi >= 2]
    if multi.empty:
        raise NotApplicable("every arm was trained at a single token budget (curve mode)")
    fig = Figure(figsize=(5.0, 3.3))
    ax = fig.subplots()
    most_seeds = 1
    for arm in ordered_arms(multi.index.tolist(), styles):
        g = fl[fl["arm"] == arm].groupby("budget")["value"].agg(["mean", "min", "max", "count"])
        g = g.sort_index()
        b = g.index.to_numpy(dtype=float)
        yerr = np.vstack([g["mean"] - g["min"], g["max"] - g["mean"]])
        st = styles[arm]
        n = int(g["count"].max())
        most_seeds = max(most_seeds, n)
        label = f"{arm} (n = {n} seed{'s' if n != 1 else ''})"
        if n > 1:
            ax.errorbar(b, g["mean"], yerr=yerr, label=label, **st.line_kwargs())
        else:  # one seed per budget: no bar, in the plot or the legend
            ax.plot(b, g["mean"], label=label, **st.line_kwargs())
        if not summary.empty:
            s = summary[(summary["arm"] == arm) & (summary["mode"] == "budget")]
            s = s[np.isfinite(s["tokens_to_target"].to_numpy(float))]
            if not s.empty:
                ax.plot(s["tokens_to_target"], s["target"], linestyle="none", marker="|",
                        markersize=10, markeredgewidth=1.5, color=st.color)
    ax.set_xscale("log")
    tokens_axis(ax.xaxis, log=True)
    budgets = np.unique(pd.to_numeric(fl["budget"], errors="coerce").dropna().to_numpy(float))
    if budgets.size <= 8:  # label exactly the budgets that were run
        ax.set_xticks(budgets, [format_tokens(b) for b in budgets])
        ax.xaxis.set_minor_locator(NullLocator())
    target_lines(ax, targets, where="right")
    ax.set_xlabel("token budget (tokens, log scale)")
    ax.set_ylabel("final " + loss_label(unit))
    ax.legend(loc="best")
    caption(fig, ("Mean over seeds at each budget, bars = min..max over seeds" if most_seeds > 1 else
                  "One seed per budget (n = 1), so no bars") +
            ";\n| = tokens to the target, interpolated in log-tokens.")
    return fig


def fig_train_loss_lr(frame: pd.DataFrame, styles: dict[str, ArmStyle], unit: str = "token") -> Figure:
    """Training loss (top) and learning rate (bottom) vs tokens."""
    runs = curve_runs(frame[frame["metric"].isin([record.TRAIN_LOSS, record.LR])])
    tl = mean_over_seeds(runs, record.TRAIN_LOSS) if not runs.empty else pd.DataFrame()
    lr = mean_over_seeds(runs, record.LR) if not runs.empty else pd.DataFrame()
    panels = [(name, d) for name, d in ((record.TRAIN_LOSS, tl), (record.LR, lr)) if not d.empty]
    if not panels:
        raise NotApplicable("no train/loss or lr metric with tokens")
    fig = Figure(figsize=(5.0, 2.1 * len(panels) + 0.5))
    axes = np.atleast_1d(fig.subplots(len(panels), 1, sharex=True, squeeze=False)).ravel()
    arms = ordered_arms(runs["arm"].unique(), styles)
    seeds = {arm: _n_seeds(runs, arm) for arm in arms}
    for ax, (name, d) in zip(axes, panels):
        window = 1
        for i, arm in enumerate(ordered_arms(d["arm"].unique(), styles)):
            b = d[d["arm"] == arm]
            y = b["mean"]
            if name == record.TRAIN_LOSS and len(b) > 200:
                window = max(window, len(b) // 100)
                y = y.rolling(len(b) // 100, center=True, min_periods=1).mean()
            xs, ys = thin(b["x"].to_numpy(), y.to_numpy())
            label = arm if seeds[arm] <= 1 else f"{arm} (mean of {seeds[arm]} seeds)"
            ax.plot(xs, ys, label=label, markevery=markevery(i), **styles[arm].line_kwargs())
        if name == record.TRAIN_LOSS:
            ax.set_ylabel(loss_label(unit, "training"))
            if window > 1:
                ax.annotate(f"moving average over {window} logged steps", xy=(0.99, 0.97),
                            xycoords="axes fraction", ha="right", va="top", fontsize=7,
                            color="0.3")
            ax.legend(loc="upper right" if window == 1 else "center right")
        else:
            ax.set_ylabel("learning rate")
            fmt = ScalarFormatter(useMathText=True)
            fmt.set_powerlimits((-2, 3))
            ax.yaxis.set_major_formatter(fmt)
            if len(panels) == 1:
                ax.legend(loc="best")
    axes[-1].set_xlabel(TOKENS_LABEL)
    tokens_axis(axes[-1].xaxis)
    caption(fig, f"{_seeds_note(seeds)}: no band.\nLines: the logged steps; markers only tell the arms apart.")
    return fig


# --------------------------------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------------------------------


def make_figures(frame: pd.DataFrame, summary: pd.DataFrame, targets: Sequence[float],
                 baseline_arm: str, out_dir: Path) -> FigureOutput:
    """Write every figure that applies into ``out_dir`` (PNG + PDF); never raises for a figure.

    A figure that does not apply is recorded in ``skipped``; one that fails unexpectedly is recorded
    there too and reported with an :class:`~analysis.errors.AnalysisWarning`. Loss axes are labelled in the
    summary's ``loss_unit`` (nats per token or per byte).
    """
    out = FigureOutput()
    unit = summary.attrs.get("loss_unit", "token")
    out_dir = Path(out_dir)
    targets = [float(t) for t in targets]
    styles = arm_styles(frame["arm"].dropna().unique().tolist(), baseline_arm)
    ctxs = context_lengths(frame)
    multi = len(ctxs) > 1

    def attempt(stem: str, build: Callable[[], Figure]) -> None:
        try:
            with style_context():
                fig = build()
            out.written.extend(save_figure(fig, out_dir, stem))
        except NotApplicable as exc:
            out.skipped.append((stem, str(exc)))
        except Exception as exc:  # noqa: BLE001 - one broken figure must not stop the others
            out.skipped.append((stem, f"failed: {type(exc).__name__}: {exc}"))
            warnings.warn(f"figure {stem} failed: {type(exc).__name__}: {exc}", AnalysisWarning,
                          stacklevel=2)

    for ctx in ctxs:
        sfx = "" if not multi else (f"_ctx{ctx}" if ctx is not None else "_ctx_unknown")
        sub = select_context(frame, ctx)
        if summary.empty:
            summ = summary
        else:
            c = pd.to_numeric(summary["context_length"], errors="coerce")
            summ = summary[(c.isna() if ctx is None else c == ctx).to_numpy(dtype=bool)]
        attempt(f"val_loss_vs_tokens{sfx}", lambda: fig_val_loss(sub, targets, styles, "tokens", unit))
        attempt(f"val_loss_vs_time{sfx}", lambda: fig_val_loss(sub, targets, styles, "elapsed_s", unit))
        attempt(f"tokens_to_target{sfx}", lambda: fig_tokens_to_target(summ, styles, baseline_arm))
        attempt(f"final_loss_vs_budget{sfx}",
                lambda: fig_final_loss_vs_budget(sub, summ, targets, styles, unit))
        attempt(f"train_loss_lr_vs_tokens{sfx}", lambda: fig_train_loss_lr(sub, styles, unit))
    attempt("speedup_vs_context_length",
            lambda: fig_speedup_vs_context(summary, styles, baseline_arm))
    return out
