"""Helpers to turn the tidy frame into per-arm curves (pandas/numpy only; no plotting)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from analysis import record

__all__ = ["curve_runs", "mean_over_seeds", "final_losses", "context_lengths", "select_context"]


def context_lengths(frame: pd.DataFrame) -> list[int | None]:
    """Distinct context lengths in the frame (``None`` stands for unknown), ascending."""
    if "context_length" not in frame.columns:
        return [None]
    vals = pd.to_numeric(frame["context_length"], errors="coerce")
    out: list[int | None] = sorted(int(v) for v in vals.dropna().unique())
    if vals.isna().any() or not out:
        out.append(None)
    return out


def select_context(frame: pd.DataFrame, context_length: int | None) -> pd.DataFrame:
    """Rows of one context length (``None`` = rows with unknown context length)."""
    if "context_length" not in frame.columns:
        return frame
    vals = pd.to_numeric(frame["context_length"], errors="coerce")
    mask = vals.isna() if context_length is None else vals == context_length
    return frame[mask.to_numpy(dtype=bool)]


def curve_runs(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows of the runs drawn as curves: per (arm, seed, context) the largest budget's run."""
    if frame.empty:
        return frame
    runs = frame[["run_id", "arm", "seed", "budget", "context_length"]].drop_duplicates("run_id")
    runs = runs.assign(_b=pd.to_numeric(runs["budget"], errors="coerce").fillna(-1).astype(float))
    runs = runs.sort_values(["_b", "run_id"], kind="stable")
    chosen = runs.groupby(["arm", "seed", "context_length"], dropna=False, sort=False).tail(1)
    return frame[frame["run_id"].isin(set(chosen["run_id"]))]


def mean_over_seeds(frame: pd.DataFrame, metric: str, x: str = "tokens") -> pd.DataFrame:
    """Mean, min and max of ``metric`` over runs (seeds) of each arm, on a common x grid.

    Runs are taken as given (call :func:`curve_runs` first to keep one run per seed). When the runs
    of an arm share their x values they are averaged point by point; otherwise each run is linearly
    interpolated onto the union of x values inside its own range. Columns: ``arm, x, mean, min, max,
    n`` (``n`` = number of runs covering that x).
    """
    sub = frame[(frame["metric"] == metric)].dropna(subset=[x, "value"])
    rows = []
    for arm, a in sub.groupby("arm", sort=False):
        per_run = [(r[x].to_numpy(float), r["value"].to_numpy(float))
                   for _, r in a.sort_values(x, kind="stable").groupby("run_id", sort=False)]
        grid = np.unique(np.concatenate([xs for xs, _ in per_run]))
        mat = np.full((len(per_run), grid.size), np.nan)
        for i, (xs, ys) in enumerate(per_run):
            xs_u, idx = np.unique(xs, return_index=True)
            ys_u = ys[idx]
            inside = (grid >= xs_u[0]) & (grid <= xs_u[-1])
            mat[i, inside] = np.interp(grid[inside], xs_u, ys_u)
        n = np.sum(np.isfinite(mat), axis=0)
        with warnings.catch_warnings():  # all-NaN columns are dropped below
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(mat, axis=0)
            lo = np.nanmin(mat, axis=0)
            hi = np.nanmax(mat, axis=0)
        keep = n > 0
        rows.append(pd.DataFrame({"arm": arm, "x": grid[keep], "mean": mean[keep],
                                  "min": lo[keep], "max": hi[keep], "n": n[keep]}))
    if not rows:
        return pd.DataFrame(columns=["arm", "x", "mean", "min", "max", "n"])
    return pd.concat(rows, ignore_index=True)


def final_losses(frame: pd.DataFrame, metric: str = record.VAL_LOSS) -> pd.DataFrame:
    """Last value of ``metric`` of every run, with its arm, seed, budget and context length; a run that
    diverged has no final value and is left out (the summary counts it, analysis/summary.py)."""
    sub = frame[frame["metric"] == metric]
    if "diverged" in sub.columns:
        sub = sub[~sub["diverged"].eq(True)]
    sub = sub.sort_values(["run_id", "step"], kind="stable")
    last = sub.groupby("run_id", sort=False).tail(1)
    return last[["run_id", "arm", "seed", "budget", "context_length", "step", "tokens",
                 "elapsed_s", "value"]].reset_index(drop=True)
