"""Tokens-to-target, wall-clock-to-target, speedups and their bootstrap intervals.

Pure Python + NumPy (pandas only inside :func:`summarize`, imported lazily), so the runner can
import this module on its hot path without pulling in MLflow or matplotlib.

Definitions (see DESIGN.md, "Tokens-to-target"):

* **Curve mode** (one training run per arm and seed): walk the validation curve in order of tokens
  and take the first evaluation whose loss is ``<= target``; the crossing point is linearly
  interpolated between that evaluation and the previous one. If the very first evaluation already
  satisfies the target, its own x value is returned (no extrapolation before it). Never reached ->
  ``None``.
* **Budget mode** (the nGPT paper's method): every arm is trained at several token budgets, each
  with its own full learning-rate schedule. The final validation loss of each budget is interpolated
  linearly in ``log(tokens)`` between the two budgets that bracket the target. Targets that no
  budget reaches give ``None`` (no extrapolation beyond the largest budget); if the smallest budget
  already reaches the target, the smallest budget is returned (an upper bound, as in curve mode).
* **Speedup** = baseline tokens / other tokens (> 1 means the other arm needs fewer tokens).
* **Bootstrap CI**: seeds are resampled *in pairs* (the same seed gives both arms the same data
  order and the same validation tokens, so the arms' results are correlated through the seed); the
  statistic is the ratio of the mean baseline tokens to the mean other tokens, matching the point
  estimate; percentile interval, fixed RNG seed.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from analysis.errors import AnalysisWarning

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = [
    "x_to_target",
    "tokens_to_target",
    "seconds_to_target",
    "budget_tokens_to_target",
    "speedup",
    "bootstrap_ci",
    "summarize",
    "SUMMARY_COLUMNS",
]

VAL_LOSS = "val/loss"


def _clean_xy(xs: Sequence[float], ys: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Float arrays with non-finite pairs dropped, stably sorted by x."""
    x = np.asarray(xs, dtype=float).ravel()
    y = np.asarray(ys, dtype=float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"x and loss sequences differ in length ({x.size} vs {y.size})")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    order = np.argsort(x, kind="stable")
    return x[order], y[order]


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return not math.isfinite(float(value))
    except (TypeError, ValueError):
        return True


def x_to_target(xs: Sequence[float], losses: Sequence[float], target: float) -> float | None:
    """First x at which ``losses`` reaches ``target`` (``loss <= target``), linearly interpolated.

    ``xs`` may be tokens, seconds or anything monotone in training progress. Input need not be
    sorted (it is sorted by x); pairs with a NaN/inf in either value are ignored. Returns ``None``
    when the target is never reached (or there is no finite data).
    """
    if _is_missing(target):
        return None
    target = float(target)
    x, y = _clean_xy(xs, losses)
    if x.size == 0:
        return None
    hits = np.flatnonzero(y <= target)
    if hits.size == 0:
        return None
    i = int(hits[0])
    if i == 0:
        return float(x[0])
    x0, x1, y0, y1 = x[i - 1], x[i], y[i - 1], y[i]
    # y0 > target >= y1, so y0 - y1 > 0
    frac = (y0 - target) / (y0 - y1)
    return float(x0 + frac * (x1 - x0))


def tokens_to_target(
    tokens: Sequence[float], losses: Sequence[float], target: float
) -> float | None:
    """Curve mode: tokens at which the validation loss first reaches ``target``.

    See :func:`x_to_target` for the exact rule (linear interpolation, ``None`` if never reached).
    """
    return x_to_target(tokens, losses, target)


def seconds_to_target(
    seconds: Sequence[float], losses: Sequence[float], target: float
) -> float | None:
    """Curve mode on wall-clock: training seconds at which the val loss first reaches ``target``."""
    return x_to_target(seconds, losses, target)


def budget_tokens_to_target(
    budgets: Sequence[float], final_losses: Sequence[float], target: float
) -> float | None:
    """Budget mode: tokens to ``target`` from final losses of runs trained at several budgets.

    Runs at the same budget (e.g. several seeds passed together) are averaged first. Budgets are
    walked in increasing order; between the last budget above the target and the first one at or
    below it the crossing is interpolated linearly in ``log(tokens)``. ``None`` when no budget
    reaches the target (no extrapolation). Non-positive budgets and non-finite values are ignored.
    """
    if _is_missing(target):
        return None
    target = float(target)
    b, loss = _clean_xy(budgets, final_losses)
    keep = b > 0
    b, loss = b[keep], loss[keep]
    if b.size == 0:
        return None
    uniq, inverse = np.unique(b, return_inverse=True)
    sums = np.zeros(uniq.size)
    counts = np.zeros(uniq.size)
    np.add.at(sums, inverse, loss)
    np.add.at(counts, inverse, 1.0)
    mean_loss = sums / counts
    hits = np.flatnonzero(mean_loss <= target)
    if hits.size == 0:
        return None
    i = int(hits[0])
    if i == 0:
        return float(uniq[0])
    lx0, lx1 = math.log(uniq[i - 1]), math.log(uniq[i])
    y0, y1 = mean_loss[i - 1], mean_loss[i]
    frac = (y0 - target) / (y0 - y1)
    return float(math.exp(lx0 + frac * (lx1 - lx0)))


def speedup(baseline_tokens: float | None, other_tokens: float | None) -> float | None:
    """``baseline_tokens / other_tokens``; ``None`` if either is missing/NaN or other is <= 0."""
    if _is_missing(baseline_tokens) or _is_missing(other_tokens):
        return None
    other = float(other_tokens)  # type: ignore[arg-type]
    if other <= 0:
        return None
    return float(baseline_tokens) / other  # type: ignore[arg-type]


def _finite(values: Sequence[float]) -> np.ndarray:
    a = np.asarray([np.nan if v is None else v for v in values], dtype=float).ravel()
    return a[np.isfinite(a)]


def bootstrap_ci(
    baseline: Sequence[float] | Mapping[Any, float],
    other: Sequence[float] | Mapping[Any, float],
    *,
    level: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
    paired: bool = True,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the speedup ``mean(baseline) / mean(other)`` over seeds.

    ``baseline`` and ``other`` hold per-seed tokens (or seconds) to target, either as sequences or
    as mappings ``seed -> value``.

    * ``paired=True`` (default, recommended here): seeds are resampled with replacement and each
      drawn seed contributes both arms' values. Mappings are paired by key (seeds present in both
      with finite values); sequences by position (they must have equal length). Needs at least 2
      complete pairs.
    * ``paired=False``: each arm's seeds are resampled independently (use when the seeds of the two
      arms are unrelated). Needs at least 2 finite values per arm.

    The RNG is ``numpy.random.default_rng(seed)``, so results are reproducible. Returns
    ``(low, high)`` or ``None`` when there is not enough data. With identical values for every seed
    the interval collapses to the point estimate.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if int(n_resamples) < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    n_resamples = int(n_resamples)
    rng = np.random.default_rng(seed)
    alpha = (1.0 - level) / 2.0

    if paired:
        if isinstance(baseline, Mapping) or isinstance(other, Mapping):
            if not (isinstance(baseline, Mapping) and isinstance(other, Mapping)):
                raise TypeError("paired bootstrap needs two mappings or two sequences")
            keys = [k for k in baseline if k in other]
            b = np.asarray([_nan_if_none(baseline[k]) for k in keys], dtype=float)
            o = np.asarray([_nan_if_none(other[k]) for k in keys], dtype=float)
        else:
            b = np.asarray([_nan_if_none(v) for v in baseline], dtype=float).ravel()
            o = np.asarray([_nan_if_none(v) for v in other], dtype=float).ravel()
            if b.shape != o.shape:
                raise ValueError(
                    f"paired bootstrap needs equal-length sequences ({b.size} vs {o.size}); "
                    "pass mappings seed -> value or paired=False"
                )
        keep = np.isfinite(b) & np.isfinite(o) & (o > 0)
        b, o = b[keep], o[keep]
        n = b.size
        if n < 2:
            return None
        idx = rng.integers(0, n, size=(n_resamples, n))
        stats = b[idx].mean(axis=1) / o[idx].mean(axis=1)
    else:
        bv = _finite(list(baseline.values()) if isinstance(baseline, Mapping) else list(baseline))
        ov = _finite(list(other.values()) if isinstance(other, Mapping) else list(other))
        ov = ov[ov > 0]
        if bv.size < 2 or ov.size < 2:
            return None
        bi = rng.integers(0, bv.size, size=(n_resamples, bv.size))
        oi = rng.integers(0, ov.size, size=(n_resamples, ov.size))
        stats = bv[bi].mean(axis=1) / ov[oi].mean(axis=1)
    low, high = np.quantile(stats, [alpha, 1.0 - alpha])
    return float(low), float(high)


def _nan_if_none(v: Any) -> float:
    return float("nan") if v is None else float(v)


# --------------------------------------------------------------------------------------------------
# summary over a tidy frame
# --------------------------------------------------------------------------------------------------

SUMMARY_COLUMNS = [
    "context_length",
    "target",
    "arm",
    "is_baseline",
    "mode",
    "budget",
    "n_budgets",
    "n_seeds",
    "n_reached",
    "n_at_first",
    "reached",
    "final_val_loss",
    "best_val_loss",
    "tokens_to_target",
    "tokens_to_target_std",
    "seconds_to_target",
    "speedup",
    "speedup_ci_low",
    "speedup_ci_high",
    "time_speedup",
    "time_speedup_ci_low",
    "time_speedup_ci_high",
    "speedup_bound",
]


def _seed_key(seed: Any, run_id: Any) -> Any:
    try:
        import pandas as pd

        if pd.isna(seed):
            return f"run:{run_id}"
    except (TypeError, ValueError):
        pass
    return int(seed) if isinstance(seed, (int, np.integer, float)) else seed


def _mean(values: list[float]) -> float:
    a = _finite(values)
    return float(a.mean()) if a.size else float("nan")


def _std(values: list[float]) -> float:
    a = _finite(values)
    return float(a.std(ddof=1)) if a.size >= 2 else float("nan")


def _ratio_and_ci(
    base: dict[Any, float | None],
    other: dict[Any, float | None],
    *,
    level: float,
    n_resamples: int,
    seed: int,
) -> tuple[float, float, float]:
    """Speedup point estimate and CI from per-seed values (paired where seeds overlap)."""
    nan = float("nan")
    common = [k for k in base
              if k in other and not _is_missing(base[k]) and not _is_missing(other[k])]
    if common:
        b = [float(base[k]) for k in common]  # type: ignore[arg-type]
        o = [float(other[k]) for k in common]  # type: ignore[arg-type]
        point = speedup(float(np.mean(b)), float(np.mean(o)))
        ci = bootstrap_ci(b, o, level=level, n_resamples=n_resamples, seed=seed, paired=True)
    else:
        # no seed in common (e.g. disjoint seed lists): fall back to independent resampling
        b_all = _finite([v for v in base.values() if v is not None])
        o_all = _finite([v for v in other.values() if v is not None])
        if b_all.size == 0 or o_all.size == 0:
            return nan, nan, nan
        point = speedup(float(b_all.mean()), float(o_all.mean()))
        ci = bootstrap_ci(list(b_all), list(o_all), level=level, n_resamples=n_resamples, seed=seed,
                          paired=False)
    if point is None:
        return nan, nan, nan
    if ci is None:
        return point, nan, nan
    return point, ci[0], ci[1]


def summarize(
    frame: "pd.DataFrame",
    targets: Sequence[float],
    baseline_arm: str,
    *,
    mode: str = "auto",
    level: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> "pd.DataFrame":
    """One row per (context length, target, arm) summarising tokens/seconds to target and speedups.

    ``frame`` is the tidy frame of :func:`analysis.load.load_experiment` (columns ``arm, seed,
    budget, context_length, run_id, step, tokens, elapsed_s, metric, value``; ``budget`` and
    ``context_length`` may be absent). Only ``metric == "val/loss"`` rows are used.

    Mode rule (per context length): ``mode="auto"`` uses **budget mode** when *every* arm has runs
    at two or more distinct budgets (``train.tokens``), otherwise **curve mode** on each arm's
    largest budget (with a warning if only some arms have several budgets).
    ``mode="curve"``/``"budget"`` force one.

    Per seed, the arm's tokens (seconds) to target are computed, then averaged over the seeds that
    reached the target (``n_reached`` of ``n_seeds``; ``reached`` is True when at least one seed
    did; ``tokens_to_target`` is NaN when none did). ``speedup`` = mean baseline tokens / mean arm
    tokens over the seeds where *both* reached (pairs by seed; independent resampling if the two
    arms share no seed), with a paired bootstrap CI when there are >= 2 such seeds. ``time_speedup``
    is the same on training seconds. ``final_val_loss`` is the last validation loss of the largest
    budget (mean over seeds), ``best_val_loss`` the lowest validation loss seen (mean over seeds).
    """
    import pandas as pd

    if mode not in ("auto", "curve", "budget"):
        raise ValueError(f"mode must be 'auto', 'curve' or 'budget', got {mode!r}")
    target_list = [float(t) for t in targets]
    empty = pd.DataFrame({c: pd.Series(dtype=object) for c in SUMMARY_COLUMNS})
    empty.attrs.update(baseline_arm=baseline_arm, targets=target_list, ci_level=level)
    if frame is None or len(frame) == 0 or not target_list:
        return empty

    val = frame[frame["metric"] == VAL_LOSS].copy()
    if val.empty:
        return empty
    for col in ("budget", "context_length", "tokens", "elapsed_s", "seed"):
        if col not in val.columns:
            val[col] = pd.NA
    val["_budget"] = pd.to_numeric(val["budget"], errors="coerce").astype(float)
    val["_ctx"] = pd.to_numeric(val["context_length"], errors="coerce").astype(float)
    val["_key"] = [_seed_key(s, r) for s, r in zip(val["seed"], val["run_id"])]
    val["tokens"] = pd.to_numeric(val["tokens"], errors="coerce").astype(float)
    val["elapsed_s"] = pd.to_numeric(val["elapsed_s"], errors="coerce").astype(float)

    rows: list[dict[str, Any]] = []
    ctx_values = sorted(val["_ctx"].dropna().unique().tolist())
    if val["_ctx"].isna().any():
        ctx_values.append(float("nan"))

    for ctx in ctx_values:
        g = val[val["_ctx"].isna()] if math.isnan(ctx) else val[val["_ctx"] == ctx]
        arms = sorted(g["arm"].unique().tolist(), key=lambda a: (a != baseline_arm, str(a)))
        n_budgets = {a: int(g.loc[g["arm"] == a, "_budget"].dropna().nunique()) for a in arms}
        if mode == "auto":
            use_budget = all(n >= 2 for n in n_budgets.values())
            if not use_budget and any(n >= 2 for n in n_budgets.values()):
                warnings.warn(
                    "budget mode needs every arm at >= 2 token budgets "
                    f"({', '.join(f'{a}: {n}' for a, n in n_budgets.items())}); "
                    "using curve mode on each arm's largest budget",
                    AnalysisWarning,
                    stacklevel=2,
                )
        else:
            use_budget = mode == "budget"
        if baseline_arm not in arms:
            ctx_txt = "" if math.isnan(ctx) else f" at context length {int(ctx)}"
            warnings.warn(
                f"baseline arm {baseline_arm!r} has no runs{ctx_txt}; speedups are NaN",
                AnalysisWarning,
                stacklevel=2,
            )

        # per arm -> per seed: results per target
        per_arm: dict[str, dict[str, Any]] = {}
        for arm in arms:
            a = g[g["arm"] == arm]
            per_seed_tokens: dict[float, dict[Any, float | None]] = {t: {} for t in target_list}
            per_seed_secs: dict[float, dict[Any, float | None]] = {t: {} for t in target_list}
            at_first: dict[float, set] = {t: set() for t in target_list}  # seeds already at target at the first budget
            finals: list[float] = []
            bests: list[float] = []
            budget_used = a["_budget"].max()
            for key, s in a.groupby("_key", sort=False):
                runs = s.groupby("run_id", sort=False)
                run_info = []
                for run_id, r in runs:
                    r = r.sort_values("step", kind="stable")
                    last = r.iloc[-1]
                    b = r["_budget"].iloc[0]
                    if math.isnan(b):
                        b = float(r["tokens"].max()) if r["tokens"].notna().any() else float("nan")
                    run_info.append((b, run_id, r, float(last["value"]), float(last["elapsed_s"])))
                run_info.sort(key=lambda t: (-math.inf if math.isnan(t[0]) else t[0]))
                bests.append(float(np.nanmin(s["value"].to_numpy(dtype=float))))
                largest = run_info[-1]
                finals.append(largest[3])
                if use_budget:
                    budgets_ = [ri[0] for ri in run_info]
                    losses_ = [ri[3] for ri in run_info]
                    secs_ = [ri[4] for ri in run_info]
                    smallest = min(b_ for b_ in budgets_ if b_ > 0) if any(b_ > 0 for b_ in budgets_) else None
                    for t in target_list:
                        per_seed_tokens[t][key] = budget_tokens_to_target(budgets_, losses_, t)
                        per_seed_secs[t][key] = budget_tokens_to_target(secs_, losses_, t)
                        if per_seed_tokens[t][key] is not None and per_seed_tokens[t][key] == smallest:
                            at_first[t].add(key)  # only an upper bound: the crossing is below the smallest budget
                else:
                    same = [ri for ri in run_info if ri[0] == largest[0] or
                            (math.isnan(ri[0]) and math.isnan(largest[0]))]
                    if len(same) > 1:
                        warnings.warn(
                            f"arm {arm!r} seed {key}: {len(same)} runs at the same budget; "
                            f"using run {largest[1]}",
                            AnalysisWarning,
                            stacklevel=2,
                        )
                    r = largest[2]
                    for t in target_list:
                        per_seed_tokens[t][key] = tokens_to_target(r["tokens"], r["value"], t)
                        per_seed_secs[t][key] = seconds_to_target(r["elapsed_s"], r["value"], t)
            per_arm[arm] = dict(
                tokens=per_seed_tokens,
                secs=per_seed_secs,
                at_first=at_first,
                final=_mean(finals),
                best=_mean(bests),
                budget=budget_used,
                n_seeds=len(finals),
                n_budgets=n_budgets[arm],
            )

        for t in target_list:
            for arm in arms:
                d = per_arm[arm]
                toks = d["tokens"][t]
                secs = d["secs"][t]
                reached_vals = [v for v in toks.values() if v is not None]
                row: dict[str, Any] = dict(
                    context_length=pd.NA if math.isnan(ctx) else int(ctx),
                    target=t,
                    arm=arm,
                    is_baseline=arm == baseline_arm,
                    mode="budget" if use_budget else "curve",
                    budget=pd.NA if _is_missing(d["budget"]) else int(d["budget"]),
                    n_budgets=d["n_budgets"],
                    n_seeds=d["n_seeds"],
                    n_reached=len(reached_vals),
                    n_at_first=len(d["at_first"][t]),
                    reached=len(reached_vals) > 0,
                    final_val_loss=d["final"],
                    best_val_loss=d["best"],
                    tokens_to_target=_mean(reached_vals),
                    tokens_to_target_std=_std(reached_vals),
                    seconds_to_target=_mean([v for v in secs.values() if v is not None]),
                )
                nan = float("nan")
                bound = ""
                if baseline_arm in per_arm:
                    bd = per_arm[baseline_arm]
                    sp = _ratio_and_ci(bd["tokens"][t], toks, level=level,
                                       n_resamples=n_resamples, seed=seed)
                    tsp = _ratio_and_ci(bd["secs"][t], secs, level=level,
                                        n_resamples=n_resamples, seed=seed)
                    # budget mode, target reached at the smallest budget: that budget is an upper bound of
                    # the tokens. Baseline there: the ratio is unknown; only the arm there: a lower bound.
                    if arm != baseline_arm and bd["at_first"][t]:
                        sp = tsp = (nan, nan, nan)
                        bound = "unknown"
                    elif arm != baseline_arm and d["at_first"][t]:
                        bound = "lower"
                else:
                    sp = tsp = (nan, nan, nan)
                row.update(
                    speedup=sp[0], speedup_ci_low=sp[1], speedup_ci_high=sp[2],
                    time_speedup=tsp[0], time_speedup_ci_low=tsp[1], time_speedup_ci_high=tsp[2],
                    speedup_bound=bound,
                )
                rows.append(row)

    out = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    for col in ("context_length", "budget"):
        out[col] = out[col].astype("Int64")
    for col in ("n_budgets", "n_seeds", "n_reached", "n_at_first"):
        out[col] = out[col].astype(int)
    out["reached"] = out["reached"].astype(bool)
    out["is_baseline"] = out["is_baseline"].astype(bool)
    float_cols = [c for c in SUMMARY_COLUMNS if c not in (
        "context_length", "arm", "is_baseline", "mode", "budget", "n_budgets", "n_seeds",
        "n_reached", "n_at_first", "reached", "speedup_bound")]
    for col in float_cols:
        out[col] = out[col].astype(float)
    out.attrs.update(baseline_arm=baseline_arm, targets=target_list, ci_level=level)
    return out
