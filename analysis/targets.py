"""Tokens-to-target on one curve, speedups and their bootstrap intervals.

Pure Python + NumPy. How these rules make the summary over arms and seeds (every seed counted, censored
seeds as bounds) is in :mod:`analysis.summary`.

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
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "x_to_target",
    "tokens_to_target",
    "seconds_to_target",
    "budget_tokens_to_target",
    "speedup",
    "bootstrap_ci",
    "clean_xy",
]


def clean_xy(xs: Sequence[float], ys: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
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
    x, y = clean_xy(xs, losses)
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
    b, loss = clean_xy(budgets, final_losses)
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


