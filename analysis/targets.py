"""Tokens-to-target on one curve, speedups and their confidence intervals.

Pure Python + NumPy (and SciPy's t quantile). How these rules make the summary over arms and seeds
(every seed counted, censored seeds as bounds) is in :mod:`analysis.summary`.

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
* **Confidence interval** of a speedup: Fieller's interval for the ratio of the two arms' mean tokens
  over seeds run by both (:func:`fieller_interval`); the same seed gives both arms the same data order
  and validation tokens, so the arms' values are paired. docs/analysis.md says why this interval and
  not a bootstrap (whose percentile interval over 3 seeds is their [min, max]: about 75 % coverage).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "x_to_target",
    "tokens_to_target",
    "seconds_to_target",
    "budget_tokens_to_target",
    "speedup",
    "fieller_interval",
    "t_quantile",
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
    """``baseline_tokens / other_tokens``: ``inf`` when only the other arm needed 0 tokens (it was at the
    target before training); ``None`` if either is missing/NaN or negative, or both are 0."""
    if _is_missing(baseline_tokens) or _is_missing(other_tokens):
        return None
    base, other = float(baseline_tokens), float(other_tokens)  # type: ignore[arg-type]
    if base < 0 or other < 0 or (base == 0 and other == 0):
        return None
    return math.inf if other == 0 else base / other


def t_quantile(p: float, df: int) -> float:
    """Student's t quantile (scipy, imported on first use so that ``import analysis`` stays light)."""
    return _t_quantile(float(p), int(df))


@functools.lru_cache(maxsize=256)
def _t_quantile(p: float, df: int) -> float:
    from scipy import stats

    return float(stats.t.ppf(p, df))


def fieller_interval(
    baseline: Sequence[float],
    other: Sequence[float],
    *,
    level: float = 0.95,
    side: str = "both",
) -> tuple[float, float] | None:
    """Fieller's confidence interval for ``mean(baseline) / mean(other)`` from paired seeds.

    ``baseline[i]`` and ``other[i]`` are seed ``i``'s tokens (or seconds) to target of the two arms.
    The interval is every ratio ``rho`` that a paired t-test does not reject: with ``d_i = baseline_i -
    rho * other_i``, ``|mean(d)| <= t * sd(d) / sqrt(n)``, ``t`` the Student quantile with ``n - 1``
    degrees of freedom. If the pairs are bivariate normal, ``d_i`` is normal with mean 0 at the true
    ratio, so the coverage is exact for every ``n >= 2`` (Fieller 1954). Solving the inequality is a
    quadratic in ``rho``.

    ``side``: ``"both"`` (two-sided, ``t`` at ``1 - (1 - level) / 2``), ``"lower"`` (a one-sided lower
    limit: ``(low, inf)``) or ``"upper"`` (a one-sided upper limit: ``(0, high)``), ``t`` at ``level``.
    Tokens are not negative, so the interval is cut at 0; when the mean of ``other`` is not
    significantly above 0 the set has no upper end and ``high`` is ``inf``. ``None`` with fewer than 2
    pairs (pairs with a missing or negative value are left out) or when ``other`` is 0 for every seed.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if side not in ("both", "lower", "upper"):
        raise ValueError(f"side must be 'both', 'lower' or 'upper', got {side!r}")
    b = np.asarray([_nan_if_none(v) for v in baseline], dtype=float).ravel()
    o = np.asarray([_nan_if_none(v) for v in other], dtype=float).ravel()
    if b.shape != o.shape:
        raise ValueError(f"paired values need equal lengths ({b.size} vs {o.size})")
    keep = np.isfinite(b) & np.isfinite(o) & (b >= 0) & (o >= 0)
    b, o = b[keep], o[keep]
    n = b.size
    if n < 2 or o.mean() <= 0:
        return None
    scale = o.mean()  # the ratio does not change; the squares below stay near 1
    b, o = b / scale, o / scale
    t = t_quantile(1.0 - (1.0 - level) / 2.0 if side == "both" else level, n - 1)
    low, high = _fieller_hull(b, o, t)
    if side == "lower":
        return low, math.inf
    if side == "upper":
        return 0.0, high
    return low, high


def _fieller_hull(b: np.ndarray, o: np.ndarray, t: float) -> tuple[float, float]:
    """The smallest interval on ``[0, inf]`` holding every rho with ``(mean(b) - rho mean(o))^2 <= t^2 / n
    var(b - rho o)``: ``a rho^2 - 2 h rho + c <= 0``."""
    n = b.size
    q = t * t / n
    cov = np.cov(b, o, ddof=1)
    bm, om = float(b.mean()), float(o.mean())
    a = om * om - q * cov[1, 1]
    h = bm * om - q * cov[0, 1]
    c = bm * bm - q * cov[0, 0]
    disc = h * h - a * c
    if a > 0:  # the usual case: a bounded interval around mean(b) / mean(o), which it always holds (the
        root = math.sqrt(max(disc, 0.0))  # min/max only undo rounding when every seed has the same ratio)
        return max(min((h - root) / a, bm / om), 0.0), max((h + root) / a, bm / om)
    # mean(o) is not significantly above 0: the set is two rays (or the whole line); its hull on [0, inf)
    if a == 0:
        return (max(c / (2 * h), 0.0), math.inf) if h > 0 else (0.0, math.inf)
    if disc < 0:
        return 0.0, math.inf
    root = math.sqrt(disc)
    first = min((h - root) / a, (h + root) / a)  # the set is (-inf, first] and [second, inf)
    second = max((h - root) / a, (h + root) / a)
    return (max(second, 0.0), math.inf) if first < 0 else (0.0, math.inf)


def _nan_if_none(v: Any) -> float:
    return float("nan") if v is None else float(v)
