"""The summary table as CSV (full precision), Markdown and LaTeX (booktabs), ready for a thesis.

The LaTeX is written directly (no jinja2 needed) and needs ``\\usepackage{booktabs}``.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["display_frame", "format_summary", "to_markdown", "to_latex", "write_tables", "format_lr_table",
           "write_lr_tables", "format_cooldown_table"]

NOT_REACHED = "n.r."
UNKNOWN = "< 1st budget"  # both arms met the target at the smallest budget: no ratio or bound can be formed
INFINITY = "\u221e"
#: the speedups' interval, as every footnote, caption and report.json names it (docs/analysis.md says why)
INTERVAL_NAME = "Fieller interval for the ratio of means, paired by seed"


def _f(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _sig3(v: float) -> str:
    """Three significant digits, keeping trailing zeros: 1.2 -> '1.20', 503.4 -> '503'."""
    if v == 0:
        return "0"
    decimals = max(0, 2 - int(math.floor(math.log10(abs(v)))))
    text = f"{v:.{decimals}f}"
    if abs(float(text)) >= 10 ** (3 - decimals) and decimals > 0:  # 9.996 rounded up to 10.00
        text = f"{v:.{decimals - 1}f}"
    return text


def _tokens(v: Any) -> str:
    v = _f(v)
    if not math.isfinite(v):
        return NOT_REACHED
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div * 0.9995:
            return f"{_sig3(v / div)}{suffix}"
    return _sig3(v)


def _seconds(v: Any) -> str:
    v = _f(v)
    if not math.isfinite(v):
        return NOT_REACHED
    return _sig3(v) if v < 1000 else f"{v:,.0f}"


def _loss(v: Any) -> str:
    v = _f(v)
    if v == math.inf:  # a seed's run at the largest budget diverged
        return "diverged"
    return f"{v:.3f}" if math.isfinite(v) else "--"


def _limit(v: float) -> str:
    return INFINITY if v == math.inf else f"{v:.2f}"


def _ratio(point: Any, low: Any, high: Any, bound: str = "") -> str:
    """``2.72 [1.93, 3.75]``; a lower bound with its one-sided limit ``≥ 2.62 [2.10, ∞)``, an upper
    bound ``≤ 1.50 (0, 1.90]``; ``2.25 [1.10, ∞)`` when the interval has no upper end."""
    p, lo, hi = _f(point), _f(low), _f(high)
    if math.isnan(p):
        return NOT_REACHED
    text = _bounded(_limit(p), bound)
    if bound == "upper" and math.isfinite(hi):
        return f"{text} (0, {_limit(hi)}]"
    if bound != "upper" and math.isfinite(lo) and not math.isnan(hi):
        return f"{text} [{_limit(lo)}, {_limit(hi)}{')' if hi == math.inf else ']'}"
    return text


def format_target(t: Any) -> str:
    """6.0 -> '6.0', 5.25 -> '5.25' (at least one decimal, as losses are usually written)."""
    text = f"{_f(t):g}"
    return text if any(c in text for c in ".en") else text + ".0"


def _bounded(text: str, bound: str) -> str:
    return {"lower": "\u2265 ", "upper": "\u2264 "}.get(bound, "") + text


def _to_target(value: Any, bound: str, n_reached: int, fmt, sd: Any = None, pm: str = "\u00b1") -> str:
    """Tokens or seconds to target with its bound; ``n.r. (≥ X)`` when no seed reached it."""
    if bound == "unknown" or not math.isfinite(_f(value)):
        return "?" if bound == "unknown" else NOT_REACHED
    if n_reached == 0:
        return f"{NOT_REACHED} (\u2265 {fmt(value)})"
    if bound:
        return _bounded(fmt(value), bound)
    return f"{fmt(value)} {pm} {fmt(sd)}" if math.isfinite(_f(sd)) else fmt(value)


def _speedup_cell(r: pd.Series, prefix: str, base: pd.Series | None) -> str:
    bound = str(r.get(f"{prefix}_bound", "") or "")
    if bound == "unknown":
        if int(r["n_reached"]) == 0:
            return NOT_REACHED
        return UNKNOWN if _both_at_first(r, base) else "?"
    return _ratio(r[prefix], r[f"{prefix}_ci_low"], r[f"{prefix}_ci_high"], bound)


def _both_at_first(r: pd.Series, base: pd.Series | None) -> bool:
    """Whether a speedup is unknown only because both arms met the target at their first budget (or
    evaluation): some seeds of each did, and no seed of either was censored."""
    if base is None:
        return False
    return all(int(x.get("n_at_first", 0) or 0) > 0 and int(x.get("n_censored", 0) or 0) == 0 for x in (r, base))


def _reached(r: pd.Series) -> str:
    n_diverged = int(r.get("n_diverged", 0) or 0)
    return f"{int(r['n_reached'])}/{int(r['n_seeds'])}" + (f" ({n_diverged} diverged)" if n_diverged else "")


def _row_key(r: pd.Series) -> tuple:
    return (None if pd.isna(r["context_length"]) else int(r["context_length"]), _f(r["target"]))


def display_frame(summary: pd.DataFrame, *, pm: str = "\u00b1") -> pd.DataFrame:
    """Human-readable strings of the key columns (what the terminal, Markdown and LaTeX tables show)."""
    multi_ctx = summary["context_length"].dropna().nunique() > 1 if not summary.empty else False
    multi_mode = summary["mode"].nunique() > 1 if not summary.empty else False
    no_targets = summary.empty or bool(summary["target"].isna().all())
    baselines = {_row_key(r): r for _, r in summary.iterrows() if bool(r["is_baseline"])} if not no_targets else {}
    rows = []
    for _, r in summary.iterrows():
        row: dict[str, str] = {}
        if multi_ctx:
            cl = r["context_length"]
            row["Context"] = "?" if pd.isna(cl) else str(int(cl))
        if not no_targets:
            row["Target"] = format_target(r["target"])
        row["Arm"] = str(r["arm"])
        if multi_mode:
            row["Mode"] = str(r["mode"])
        row["Final loss"] = _loss(r["final_val_loss"])
        row["Best loss"] = _loss(r["best_val_loss"])
        if no_targets:
            row["Seeds"] = str(int(r["n_seeds"]))
            rows.append(row)
            continue
        n_reached = int(r["n_reached"])
        row["Tokens to target"] = _to_target(r["tokens_to_target"], str(r["tokens_to_target_bound"] or ""),
                                             n_reached, _tokens, r["tokens_to_target_std"], pm)
        row["Time to target (s)"] = _to_target(r["seconds_to_target"],
                                               str(r["seconds_to_target_bound"] or ""), n_reached, _seconds)
        if bool(r["is_baseline"]):
            row["Speedup (tokens)"] = row["Speedup (time)"] = "baseline"
        else:
            base = baselines.get(_row_key(r))
            row["Speedup (tokens)"] = _speedup_cell(r, "speedup", base)
            row["Speedup (time)"] = _speedup_cell(r, "time_speedup", base)
        row["Reached"] = _reached(r)
        rows.append(row)
    return pd.DataFrame(rows)


#: the rule for censored seeds, as the tables' footnote states it (README and analysis.summary say the same)
CENSORING_NOTE = (
    "Every seed counts: a seed that never reached a target is censored at its largest budget (budget mode) or "
    "last evaluation (curve mode), so a mean or speedup it enters is a bound: \u2265 a lower bound, \u2264 an "
    "upper bound (the target was already met at the first budget or evaluation that could show it); ? = bounds "
    f"in both directions, no number can be formed; {NOT_REACHED} (\u2265 X) = no seed reached it, X being the mean "
    "censoring point."
)


def _notes(summary: pd.DataFrame, disp: pd.DataFrame) -> str:
    """The footnote of the table ``disp`` (:func:`display_frame` of ``summary``): what every number is."""
    baseline = summary.attrs.get("baseline_arm")
    if baseline is None and not summary.empty and summary["is_baseline"].any():
        baseline = summary.loc[summary["is_baseline"], "arm"].iloc[0]
    level = float(summary.attrs.get("ci_level", 0.95))
    unit = summary.attrs.get("loss_unit", "token")
    if summary.empty or summary["target"].isna().all():
        return f"Validation loss (nats/{unit}), mean over seeds: final = at the end of the largest budget, " \
               "best = lowest seen. No targets were set, so no tokens to target."
    modes = sorted(summary["mode"].unique())
    mode_txt = {
        "curve": "curve mode (first crossing of the validation curve, linear interpolation "
                 "between evaluations)",
        "budget": "budget mode (final loss of runs at several token budgets, interpolated "
                  "in log tokens)",
    }
    kinds = _interval_kinds(summary)
    parts = [
        f"Target: validation loss (nats/{unit})" + (" (one token = one UTF-8 byte)." if unit == "byte" else "."),
        "Tokens/time to target: " + "; ".join(mode_txt[m] for m in modes if m in mode_txt)
        + ", mean over all seeds (\u00b1 1 s.d. with several seeds).",
        f"Speedup = {baseline} / arm, in tokens and in training wall-clock time: the ratio of the two arms' "
        f"means over the seeds both ran; brackets: {level:.0%} {INTERVAL_NAME} (none with fewer than 2 "
        "paired seeds)" + ("; for a bound (\u2265, \u2264) only its one-sided limit, [L, \u221e) or (0, U]"
                          if "one-sided" in kinds else "") + ".",
    ]
    if "unbounded" in kinds:
        parts.append(f"[L, {INFINITY}) beside an exact ratio: no upper end at this level, the arm's mean is not "
                     f"significantly above 0 with these seeds.")
    if "infinite" in kinds:
        parts.append(f"{INFINITY} = the arm needed 0 tokens (it was at the target before training).")
    reached = "Reached = seeds that reached the target / seeds run"
    if "n_diverged" in summary.columns and (summary["n_diverged"] > 0).any():
        reached += ("; diverged = seeds whose run diverged (a non-finite training loss): each counts, as a seed "
                    "that did not reach what it had not reached by then")
    parts.append(reached + ".")
    bounded = summary[[c for c in summary.columns if c.endswith("_bound")]].astype(str).ne("").any().any()
    if bounded or (summary["n_censored"] > 0).any() or (summary["n_at_first"] > 0).any():
        parts.append(CENSORING_NOTE)
    if disp.isin([UNKNOWN]).any().any():
        parts.append(f"{UNKNOWN}: both arms met the target at the smallest budget; add a smaller budget to "
                     f"measure it.")
    return " ".join(parts)


def _interval_kinds(summary: pd.DataFrame) -> set[str]:
    """Which kinds of speedup cell the table has: ``one-sided`` limits of bounds, ``unbounded`` two-sided
    intervals (no upper end), ``infinite`` speedups (the arm at the target before training)."""
    kinds = set()
    for prefix in ("speedup", "time_speedup"):
        if f"{prefix}_bound" not in summary.columns:
            continue
        bound = summary[f"{prefix}_bound"].fillna("").astype(str)
        point, low, high = (pd.to_numeric(summary[c], errors="coerce").to_numpy(float)
                            for c in (prefix, f"{prefix}_ci_low", f"{prefix}_ci_high"))
        other = ~summary["is_baseline"].astype(bool).to_numpy()
        if (other & (((bound == "lower").to_numpy() & np.isfinite(low))
                     | ((bound == "upper").to_numpy() & np.isfinite(high)))).any():
            kinds.add("one-sided")
        if (other & (bound == "").to_numpy() & np.isfinite(low) & (high == np.inf)).any():
            kinds.add("unbounded")
        if (other & (point == np.inf)).any():
            kinds.add("infinite")
    return kinds


def to_markdown(summary: pd.DataFrame, *, notes: bool = True) -> str:
    """GitHub-flavoured Markdown table (plus a notes paragraph)."""
    disp = display_frame(summary)
    if disp.empty:
        return "(no results)\n"
    cols = list(disp.columns)
    text_cols = {"Arm", "Mode"}
    widths = {c: max(len(c), *(len(v) for v in disp[c])) for c in cols}

    def cell(c: str, v: str) -> str:
        return v.ljust(widths[c]) if c in text_cols else v.rjust(widths[c])

    lines = ["| " + " | ".join(cell(c, c) for c in cols) + " |"]
    lines.append("| " + " | ".join(
        (":" + "-" * (widths[c] - 1)) if c in text_cols else ("-" * (widths[c] - 1) + ":")
        for c in cols) + " |")
    for _, r in disp.iterrows():
        lines.append("| " + " | ".join(cell(c, r[c]) for c in cols) + " |")
    out = "\n".join(lines) + "\n"
    if notes:
        out += "\n" + _notes(summary, disp) + "\n"
    return out


def format_summary(summary: pd.DataFrame) -> str:
    """The table as printed on the terminal (the Markdown table and its notes)."""
    return to_markdown(summary)


_LATEX_SPECIALS = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIALS.get(ch, ch) for ch in str(text))


def tex_symbols(text: str) -> str:
    return (text.replace("\u00b1", r"$\pm$").replace("\u2264", r"$\le$").replace("\u2265", r"$\ge$")
            .replace(INFINITY, r"$\infty$"))


def to_latex(summary: pd.DataFrame, *, experiment: str | None = None,
             label: str | None = None) -> str:
    """A complete ``table`` environment using booktabs rules (``\\usepackage{booktabs}``).

    Two header rows (grouped with ``\\cmidrule``); repeated context/target values are left blank.
    """
    disp = display_frame(summary)
    name = experiment or "experiment"
    label = label or "tab:" + re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-") + "-summary"
    baseline = summary.attrs.get("baseline_arm") or "baseline"
    cols = list(disp.columns)
    align = "".join("l" if c in ("Arm", "Mode") else "r" for c in cols)

    def tex(v: str) -> str:
        return tex_symbols(latex_escape(v))

    groups = [("Final loss", "Best loss", "Validation loss"),
              ("Tokens to target", "Time to target (s)", "To target"),
              ("Speedup (tokens)", "Speedup (time)",
               f"Speedup vs \\texttt{{{latex_escape(baseline)}}}")]
    sub_names = {"Final loss": "final", "Best loss": "best", "Tokens to target": "tokens",
                 "Time to target (s)": "time (s)", "Speedup (tokens)": "tokens",
                 "Speedup (time)": "time"}
    top: list[str] = []
    rules: list[str] = []
    i = 0
    while i < len(cols):
        grp = next((g for g in groups if cols[i] == g[0] and i + 1 < len(cols)
                    and cols[i + 1] == g[1]), None)
        if grp:
            top.append(f"\\multicolumn{{2}}{{c}}{{{grp[2]}}}")
            rules.append(f"\\cmidrule(lr){{{i + 1}-{i + 2}}}")
            i += 2
        else:
            top.append("")
            i += 1
    second = [tex(sub_names.get(c, c)) for c in cols]

    caption = (f"Tokens and training time to reach each target validation loss, experiment "
               f"\\texttt{{{latex_escape(name)}}}. "
               + tex_symbols(latex_escape(_notes(summary, disp))))
    lines = [
        f"% Generated by `python -m analysis figures` from MLflow experiment {name}.",
        "% Requires \\usepackage{booktabs}.",
        "\\begin{table}[tbp]",
        "  \\centering",
        "  \\small",
        f"  \\caption{{{caption}}}",
        f"  \\label{{{label}}}",
        f"  \\begin{{tabular}}{{{align}}}",
        "    \\toprule",
        "    " + " & ".join(top) + " \\\\",
        "    " + "".join(rules),
        "    " + " & ".join(second) + " \\\\",
        "    \\midrule",
    ]
    prev: dict[str, str] = {}
    for _, r in disp.iterrows():
        group = (r.get("Context"), r.get("Target"))  # no Target column when there are no targets
        if prev and group != (prev.get("Context"), prev.get("Target")):
            lines.append("    \\addlinespace")
        same_ctx = bool(prev) and prev.get("Context") == r.get("Context")
        blank = {"Context"} if same_ctx else set()
        if same_ctx and "Target" in cols and prev.get("Target") == r["Target"]:
            blank.add("Target")
        cells = ["" if c in blank else tex(r[c]) for c in cols]
        prev = {c: r[c] for c in cols}
        lines.append("    " + " & ".join(cells) + " \\\\")
    lines += ["    \\bottomrule", "  \\end{tabular}", "\\end{table}", ""]
    return "\n".join(lines)


def write_tables(summary: pd.DataFrame, out_dir: Path, *, experiment: str | None = None,
                 stem: str = "summary") -> list[Path]:
    """Write ``<stem>.csv`` (every column, full precision), ``<stem>.md`` and ``<stem>.tex``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv, md, tex = (out_dir / f"{stem}.{ext}" for ext in ("csv", "md", "tex"))
    summary.to_csv(csv, index=False)
    md.write_text(to_markdown(summary), encoding="utf-8")
    tex.write_text(to_latex(summary, experiment=experiment), encoding="utf-8")
    return [csv, md, tex]


def format_lr_table(table: pd.DataFrame) -> str:
    """A learning-rate search (:func:`analysis.sweeps.select_lr`) as Markdown: one row per (arm,
    budget, lr), the chosen rate marked ``*`` (``*!`` when it is at the end of its grid); with a
    ``context`` column first when the table spans several context lengths (a search per length)."""
    ctxs = table["context_length"].dropna().unique() if "context_length" in table.columns else []
    multi_ctx = len(ctxs) > 1
    lines = ["| " + ("context | " if multi_ctx else "") + "arm | budget | lr | final val loss | seeds | diverged | chosen |",
             "|" + ("---:|" if multi_ctx else "") + "---|---:|---:|---:|---:|---:|:---:|"]
    for row in table.itertuples():
        loss = _loss(row.final_val_loss)
        if math.isfinite(_f(row.final_val_loss_std)):
            loss += f" \u00b1 {_f(row.final_val_loss_std):.3f}"
        mark = ("*!" if row.at_edge else "*") if row.chosen else ""
        ctx = ("" if pd.isna(row.context_length) else f"{int(row.context_length):,}") if multi_ctx else None
        lines.append("| " + (f"{ctx} | " if multi_ctx else "") +
                     f"{row.arm} | {_tokens(row.budget)} | {_f(row.lr):g} | {loss} | {row.n_seeds} | "
                     f"{row.n_failed} | {mark} |")
    return "\n".join(lines)


def write_lr_tables(table: pd.DataFrame, out_dir: Path) -> list[Path]:
    """``lr_search.csv`` (every column) and ``lr_search.md``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv, md = out_dir / "lr_search.csv", out_dir / "lr_search.md"
    table.to_csv(csv, index=False)
    md.write_text(format_lr_table(table) + "\n\n`*` chosen (lowest mean final validation loss); `*!` chosen at the "
                  "end of its grid: the optimum may lie outside it.\n", encoding="utf-8")
    return [csv, md]


def format_cooldown_table(table: pd.DataFrame) -> str:
    """:func:`analysis.sweeps.compare_methods` as Markdown: tokens to target from full runs and from
    cooldown branches, their difference and each method's speedup; a bound (a censored seed) is marked
    ``\u2265``/``\u2264`` and has no difference."""
    lines = ["| Target | Arm | Tokens (full) | Tokens (cooldown) | Difference | Speedup (full) | Speedup (cooldown) |",
             "| -----: | :-- | ------------: | ----------------: | ---------: | -------------: | -----------------: |"]

    def bound(v: Any) -> str:
        return "" if not isinstance(v, str) else v

    for row in table.itertuples():
        diff = _f(row.difference)
        diff_text = f"{diff:+.1%}" if math.isfinite(diff) else "--"
        speed = [_bounded(f"{_f(v):.2f}", bound(b)) if math.isfinite(_f(v)) else NOT_REACHED
                 for v, b in ((row.speedup_full, row.speedup_bound_full),
                              (row.speedup_cooldown, row.speedup_bound_cooldown))]
        tokens = [_bounded(_tokens(v), bound(b))
                  for v, b in ((row.tokens_to_target_full, row.tokens_to_target_bound_full),
                               (row.tokens_to_target_cooldown, row.tokens_to_target_bound_cooldown))]
        lines.append(f"| {format_target(row.target)} | {row.arm} | {tokens[0]} | {tokens[1]} | {diff_text} | "
                     f"{speed[0]} | {speed[1]} |")
    return "\n".join(lines)
