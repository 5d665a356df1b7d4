"""Sweeps: choosing each arm's learning rate from a grid, and comparing cooldown branches with full runs.

:func:`select_lr` is the one rule both the runner (choosing mid-invocation from its own results) and
the analysis (re-deriving the choice from MLflow) use: per arm (and per budget when the grid was
searched at several), the learning rate with the lowest **mean final validation loss over the search
seeds**. A seed that diverged (NaN, or no result) counts as an infinite loss, so a learning rate that
diverged on any seed is chosen only when every rate did; ties go to the smaller learning rate. A choice
at either end of the grid is flagged (`at_edge`): the optimum may lie outside it.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

__all__ = ["LR_COLUMNS", "select_lr", "chosen_lrs", "edge_warnings", "compare_methods"]

LR_COLUMNS = ["arm", "budget", "lr", "n_seeds", "n_failed", "final_val_loss", "final_val_loss_std",
              "chosen", "at_edge"]


def select_lr(rows: Iterable[Mapping[str, Any]] | pd.DataFrame) -> pd.DataFrame:
    """One row per (arm, budget, lr) of a grid search, with the chosen learning rate marked.

    ``rows``: one per search run with ``arm``, ``budget``, ``lr``, ``seed`` and ``final_val_loss``
    (NaN or None for a run that diverged or failed). Returns :data:`LR_COLUMNS`, sorted by arm,
    budget and lr; ``final_val_loss`` is the mean over the seeds that finished (NaN if none did).
    Rows with a ``context_length`` (the analysis of an experiment that may hold several) are searches
    of their own per context length: the result then starts with a ``context_length`` column and is
    sorted by it first.
    """
    frame = pd.DataFrame(list(rows) if not isinstance(rows, pd.DataFrame) else rows)
    by_ctx = "context_length" in frame.columns
    columns = (["context_length"] if by_ctx else []) + LR_COLUMNS
    if frame.empty:
        return pd.DataFrame(columns=columns)
    frame = frame.copy()
    frame["final_val_loss"] = pd.to_numeric(frame["final_val_loss"], errors="coerce").astype(float)
    if not by_ctx:
        frame["context_length"] = 0  # one group
    out = []
    for (ctx, arm, budget), group in frame.groupby(["context_length", "arm", "budget"], sort=True, dropna=False):
        lrs = sorted(group["lr"].astype(float).unique())
        scores = []
        for lr in lrs:
            losses = group.loc[group["lr"].astype(float) == lr, "final_val_loss"].to_numpy(float)
            finite = losses[np.isfinite(losses)]
            failed = int(losses.size - finite.size)
            score = math.inf if failed or finite.size == 0 else float(finite.mean())
            scores.append(score)
            out.append({"context_length": ctx, "arm": arm, "budget": budget, "lr": lr, "n_seeds": int(losses.size), "n_failed": failed,
                        "final_val_loss": float(finite.mean()) if finite.size else math.nan,
                        "final_val_loss_std": float(finite.std(ddof=1)) if finite.size >= 2 else math.nan,
                        "chosen": False, "at_edge": False})
        if all(math.isinf(s) for s in scores):  # every rate diverged somewhere: the best mean of what finished
            fallback = [r["final_val_loss"] for r in out[-len(lrs):]]
            scores = [v if math.isfinite(v) else math.inf for v in fallback]
        if all(math.isinf(s) for s in scores):
            continue  # nothing finished: no choice for this arm
        best = int(np.argmin(scores))  # first minimum = the smaller learning rate on ties
        row = out[-len(lrs) + best]
        row["chosen"] = True
        row["at_edge"] = len(lrs) > 1 and best in (0, len(lrs) - 1)
    table = pd.DataFrame(out, columns=["context_length"] + LR_COLUMNS)
    if by_ctx:
        table["context_length"] = pd.array(table["context_length"].tolist(), dtype="Int64")
        return table
    return table.drop(columns="context_length")


def chosen_lrs(table: pd.DataFrame) -> dict[tuple[str, Any], float]:
    """{(arm, budget): chosen lr} from :func:`select_lr`'s table."""
    picked = table[table["chosen"].astype(bool)]
    return {(row.arm, row.budget): float(row.lr) for row in picked.itertuples()}


def edge_warnings(table: pd.DataFrame) -> list[str]:
    """One sentence per choice at the end of its grid."""
    out = []
    by_ctx = "context_length" in table.columns
    for row in table[table["chosen"].astype(bool) & table["at_edge"].astype(bool)].itertuples():
        same = (table["arm"] == row.arm) & (table["budget"] == row.budget)
        if by_ctx:
            same &= (table["context_length"] == row.context_length).fillna(pd.isna(row.context_length))
        grid = sorted(table.loc[same.to_numpy(dtype=bool), "lr"])
        side = "smallest" if row.lr == grid[0] else "largest"
        where = f" at context length {row.context_length}" if by_ctx and not pd.isna(row.context_length) else ""
        out.append(f"the best learning rate of {row.arm}{where} ({row.lr:g}) is the {side} of its grid "
                   f"{[float(f'{v:g}') for v in grid]}: the optimum may lie outside it; extend sweep.lr.{row.arm}")
    return out


def compare_methods(full: pd.DataFrame, cooldown: pd.DataFrame) -> pd.DataFrame:
    """Tokens to target from cooldown branches next to those from full runs, per (target, arm).

    Both inputs are :func:`analysis.summary.summarize` tables (budget mode). ``difference`` is
    cooldown / full - 1 (0.05 = the cooldown estimate needs 5 % more tokens), NaN where either is a bound (a
    censored seed: ``tokens_to_target_bound``); speedups of each are kept, with their bounds.
    """
    keys = ["context_length", "target", "arm"]
    cols = ["tokens_to_target", "tokens_to_target_bound", "speedup", "speedup_bound", "final_val_loss", "mode",
            "n_budgets"]
    full, cooldown = (f.reindex(columns=list(f.columns) + [c for c in cols if c not in f.columns])
                      for f in (full, cooldown))
    left = full[keys + cols].rename(columns={c: f"{c}_full" for c in cols})
    right = cooldown[keys + cols].rename(columns={c: f"{c}_cooldown" for c in cols})
    merged = left.merge(right, on=keys, how="outer")
    exact = ~(_bounded(merged["tokens_to_target_bound_full"]) | _bounded(merged["tokens_to_target_bound_cooldown"]))
    merged["difference"] = (merged["tokens_to_target_cooldown"] / merged["tokens_to_target_full"] - 1.0).where(exact)
    return merged.sort_values(keys, ascending=[True, False, True], kind="stable", ignore_index=True)


def _bounded(bounds: pd.Series) -> pd.Series:
    return bounds.fillna("").astype(str).ne("")
