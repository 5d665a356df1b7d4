"""Downstream accuracy from the record: accuracy vs tokens per task and arm, and the paper's table.

Reads the ``eval/<task>/<metric>`` metrics (names in :mod:`analysis.record`) of the tidy frame
(:func:`analysis.load.load_experiment`); pandas, numpy, scipy and matplotlib only, no torch.

* Each task is shown by one metric, its first of :data:`PRIMARY_METRICS` that was logged
  (``acc`` for the local tasks and the paper's five: ARC-Easy, HellaSwag, WinoGrande, WSC273,
  LAMBADA).
* ``accuracy_vs_tokens`` (PNG + PDF): one panel per task, the metric against training tokens,
  mean over seeds with the min..max band, one line per arm (the runs of each seed's largest budget).
* ``accuracy`` table (CSV, MD, TEX): task x arm, the value at each run's last evaluation (its largest
  budget), mean over seeds with a Student-t interval (``ci_level``, default 95%) when there are
  at least two seeds; with one seed, the interval is lm-eval's own standard error over the task's
  documents (``<metric>_stderr`` at that step, times the normal quantile), marked as such. An
  ``average`` row is the mean of the task means (no interval), as in the paper's tables.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from analysis.record import STDERR_SUFFIX, eval_metric, parse_eval_metric

PRIMARY_METRICS = ("acc", "acc_norm", "exact_match", "f1", "mcc", "bleu")
TABLE_COLUMNS = ["task", "metric", "arm", "tokens", "n_seeds", "mean", "ci_low", "ci_high", "interval"]

__all__ = ["PRIMARY_METRICS", "eval_tasks", "accuracy_table", "format_accuracy_table", "accuracy_to_latex",
           "fig_accuracy_vs_tokens", "write_accuracy_outputs"]


def eval_tasks(frame: pd.DataFrame) -> dict[str, str]:
    """``{task: metric}``: every task with an ``eval/`` metric and the metric that shows it."""
    logged: dict[str, set[str]] = {}
    for name in frame["metric"].unique():
        parsed = parse_eval_metric(str(name))
        if parsed is not None:
            logged.setdefault(parsed[0], set()).add(parsed[1])
    chosen = {}
    for task in sorted(logged):
        metrics = logged[task]
        primary = next((m for m in PRIMARY_METRICS if m in metrics), None)
        if primary is None:  # e.g. only perplexity: the first metric that is not a standard error
            primary = next((m for m in sorted(metrics) if not m.endswith(STDERR_SUFFIX)), None)
        if primary is not None:
            chosen[task] = primary
    return chosen


def _final_rows(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    """Per run (each seed's largest budget), the last logged value of metric ``name``."""
    from analysis.curves import curve_runs

    sub = curve_runs(frame[frame["metric"] == name]).dropna(subset=["value"])
    if sub.empty:
        return sub
    return sub.sort_values(["run_id", "step"], kind="stable").groupby("run_id", sort=False).tail(1)


def accuracy_table(frame: pd.DataFrame, arms: Sequence[str] | None = None, level: float = 0.95) -> pd.DataFrame:
    """The long table (columns :data:`TABLE_COLUMNS`): one row per task and arm, then ``average``
    rows (one per arm, over the tasks it has)."""
    from scipy import stats

    tasks = eval_tasks(frame)
    rows = []
    for task, metric in tasks.items():
        final = _final_rows(frame, eval_metric(task, metric))
        if final.empty:
            continue
        stderr = _final_rows(frame, eval_metric(task, metric + STDERR_SUFFIX)).set_index("run_id")["value"]
        order = list(arms) if arms is not None else sorted(final["arm"].unique())
        for arm in [a for a in order if a in set(final["arm"])]:
            runs = final[final["arm"] == arm]
            values = runs["value"].to_numpy(float)
            n, mean = len(values), float(np.mean(values))
            if n >= 2:
                half = float(stats.t.ppf(0.5 + level / 2, n - 1) * np.std(values, ddof=1) / math.sqrt(n))
                interval = f"t over {n} seeds"
            else:
                se = stderr.get(runs["run_id"].iloc[0], math.nan)
                half = float(stats.norm.ppf(0.5 + level / 2) * se) if se == se else math.nan
                interval = "lm-eval stderr (1 seed)" if half == half else "none (1 seed)"
            rows.append({"task": task, "metric": metric, "arm": arm, "tokens": float(runs["tokens"].mean()),
                         "n_seeds": n, "mean": mean, "ci_low": mean - half, "ci_high": mean + half,
                         "interval": interval})
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    if table.empty:
        return table
    averages = [{"task": "average", "metric": "mean of tasks", "arm": arm, "tokens": float(g["tokens"].mean()),
                 "n_seeds": int(g["n_seeds"].min()), "mean": float(g["mean"].mean()), "ci_low": math.nan,
                 "ci_high": math.nan, "interval": f"mean of {len(g)} tasks"}
                for arm, g in table.groupby("arm", sort=False)]
    table = pd.concat([table, pd.DataFrame(averages, columns=TABLE_COLUMNS)], ignore_index=True)
    table.attrs["ci_level"] = level
    return table


def _cell(row: pd.Series, pm: str = "\u00b1") -> str:
    if not math.isfinite(row["mean"]):
        return "n/a"
    half = (row["ci_high"] - row["ci_low"]) / 2
    return f"{row['mean']:.3f}" + (f" {pm} {half:.3f}" if math.isfinite(half) else "")


def _wide(table: pd.DataFrame, pm: str = "\u00b1") -> pd.DataFrame:
    """Task x arm cells ``mean ± half-width``; the tasks' metric in the first column."""
    arms = list(dict.fromkeys(table["arm"]))
    tasks = list(dict.fromkeys(table["task"]))
    out = []
    for task in tasks:
        t = table[table["task"] == task]
        row = {"Task": task, "Metric": t["metric"].iloc[0]}
        for arm in arms:
            match = t[t["arm"] == arm]
            row[arm] = _cell(match.iloc[0], pm) if not match.empty else "-"
        out.append(row)
    return pd.DataFrame(out)


def _note(table: pd.DataFrame) -> str:
    level = table.attrs.get("ci_level", 0.95)
    kinds = sorted(set(table.loc[table["task"] != "average", "interval"]))
    tokens = sorted({f"{int(round(t)):,}" for t in table["tokens"] if t == t})
    return (f"Value at each run's last evaluation ({', '.join(tokens)} tokens), mean over seeds \u00b1 half-width of "
            f"the {level:.0%} interval ({'; '.join(kinds)}). Average: mean of the task means.")


def format_accuracy_table(table: pd.DataFrame) -> str:
    """A Markdown table (task x arm) with a note on the intervals."""
    wide = _wide(table)
    cols = list(wide.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" if c in ("Task", "Metric") else "---:" for c in cols) + "|"]
    lines += ["| " + " | ".join(str(v) for v in r) + " |" for r in wide.itertuples(index=False)]
    return "\n".join(lines) + "\n\n" + _note(table) + "\n"


def accuracy_to_latex(table: pd.DataFrame, experiment: str = "experiment") -> str:
    """A booktabs ``table`` (task x arm), as the other tables of the report."""
    from analysis.tables import latex_escape, tex_symbols

    wide = _wide(table)
    cols = list(wide.columns)

    def tex(v: str) -> str:
        return tex_symbols(latex_escape(v))

    lines = [f"% Generated by `python -m analysis figures` from MLflow experiment {experiment}.",
             "% Requires \\usepackage{booktabs}.", "\\begin{table}[tbp]", "  \\centering", "  \\small",
             f"  \\caption{{Downstream accuracy, experiment \\texttt{{{latex_escape(experiment)}}}. "
             f"{tex(_note(table))}}}",
             "  \\label{tab:" + "".join(c if c.isalnum() else "-" for c in experiment) + "-accuracy}",
             "  \\begin{tabular}{ll" + "r" * (len(cols) - 2) + "}", "    \\toprule",
             "    " + " & ".join(tex(c) if i < 2 else f"\\texttt{{{latex_escape(c)}}}" for i, c in enumerate(cols))
             + " \\\\", "    \\midrule"]
    for r in wide.itertuples(index=False):
        if r[0] == "average":
            lines.append("    \\midrule")
        lines.append("    " + " & ".join(tex(str(v)) for v in r) + " \\\\")
    lines += ["    \\bottomrule", "  \\end{tabular}", "\\end{table}", ""]
    return "\n".join(lines)


def fig_accuracy_vs_tokens(frame: pd.DataFrame, styles: dict):
    """One panel per task: its metric vs training tokens, per arm (mean over seeds, min..max band)."""
    from matplotlib.figure import Figure

    from analysis.curves import curve_runs, mean_over_seeds
    from analysis.style import TOKENS_LABEL, NotApplicable, ordered_arms, tokens_axis

    tasks = eval_tasks(frame)
    if not tasks:
        raise NotApplicable("no eval/<task>/<metric> metrics (add an `eval` section or run python -m training.evaluate)")
    ncols = min(3, len(tasks))
    nrows = math.ceil(len(tasks) / ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.0 * nrows))
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, (task, metric) in zip(axes, tasks.items()):
        name = eval_metric(task, metric)
        runs = curve_runs(frame[frame["metric"] == name])
        band = mean_over_seeds(runs, name)
        for arm in ordered_arms(band["arm"].unique(), styles):
            b = band[band["arm"] == arm]
            n = int(runs.loc[runs["arm"] == arm, "run_id"].nunique())
            ax.plot(b["x"], b["mean"], label=arm if n <= 1 else f"{arm} ({n} seeds)", **styles[arm].line_kwargs())
            if n > 1:
                ax.fill_between(b["x"], b["min"], b["max"], color=styles[arm].color, alpha=0.15, linewidth=0)
        ax.set_title(task)
        ax.set_xlabel(TOKENS_LABEL)
        ax.set_ylabel(metric)
        tokens_axis(ax.xaxis)
        ax.legend(loc="best")
    for ax in axes[len(tasks):]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def write_accuracy_outputs(frame: pd.DataFrame, arms: Sequence[str], baseline_arm: str, out_dir: Path, *,
                           experiment: str = "experiment", figures: bool = True,
                           level: float = 0.95) -> tuple[list[Path], list[tuple[str, str]]]:
    """``accuracy.{csv,md,tex}`` and ``accuracy_vs_tokens.{png,pdf}`` in ``out_dir`` when the frame
    has eval metrics; returns the files written and ``(figure, reason)`` of figures skipped."""
    if not eval_tasks(frame):
        return [], []
    out_dir = Path(out_dir)
    table = accuracy_table(frame, arms, level)
    csv, md, tex = (out_dir / f"accuracy.{ext}" for ext in ("csv", "md", "tex"))
    table.to_csv(csv, index=False)
    md.write_text(format_accuracy_table(table), encoding="utf-8")
    tex.write_text(accuracy_to_latex(table, experiment), encoding="utf-8")
    written, skipped = [csv, md, tex], []
    if figures:
        from analysis.style import NotApplicable, arm_styles, save_figure, style_context

        try:
            with style_context():
                fig = fig_accuracy_vs_tokens(frame, arm_styles(arms, baseline_arm))
            written += save_figure(fig, out_dir, "accuracy_vs_tokens")
        except NotApplicable as exc:
            skipped.append(("accuracy_vs_tokens", str(exc)))
    return written, skipped
