"""Censored seeds: one seed's crossing of a target, exact or a bound, and an arm's mean and speedup over all
its seeds with the bound they carry (the rules are in analysis/summary.py's docstring, which applies them)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from analysis.targets import budget_tokens_to_target, clean_xy, fieller_interval, speedup, x_to_target

EXACT, AT_FIRST, CENSORED = "exact", "at_first", "censored"
LOWER, UPPER, UNKNOWN = "lower", "upper", "unknown"  # what a bounded number is: ≥, ≤, neither


@dataclass(frozen=True)
class Crossing:
    """One seed's tokens (or seconds) to a target: the value and whether it is exact or a bound."""

    value: float
    status: str  # EXACT, AT_FIRST (an upper bound) or CENSORED (a lower bound)
    diverged: bool = False  # a run of this seed diverged (a non-finite training loss)


def curve_crossing(xs: Sequence[float], losses: Sequence[float], target: float,
                   diverged: bool = False) -> Crossing | None:
    """Curve mode: the first crossing of ``target``; censored at the last evaluation when never met.

    ``None`` when the curve has no finite point. A crossing at the very first evaluation is an upper
    bound unless that evaluation is at 0 (the usual step-0 evaluation). A run that ``diverged`` is the
    curve it logged before: a crossing before it is a crossing, else it is censored at its last evaluation.
    """
    x, y = clean_xy(xs, losses)
    if x.size == 0:
        return None
    value = x_to_target(x, y, target)
    if value is None:
        return Crossing(float(x[-1]), CENSORED, diverged)
    if y[0] <= target and x[0] > 0:
        return Crossing(value, AT_FIRST, diverged)
    return Crossing(value, EXACT, diverged)


def budget_crossing(budgets: Sequence[float], final_losses: Sequence[float], target: float,
                    diverged: Sequence[bool] | None = None, xs: Sequence[float] | None = None) -> Crossing | None:
    """Budget mode: the crossing interpolated in log tokens between the last budget above the target and the
    first at or below it; censored at the largest budget when none reaches it; an upper bound at the
    smallest budget when that one already does.

    ``xs`` (default: the budgets) is what the crossing is measured in, one value per run, e.g. each run's
    final training seconds; runs are still ordered by budget. A run that ``diverged`` reached no target at
    its budget (its final loss counts as infinite): when it is the budget just below the first one that
    reaches the target, no interpolation is possible and that first budget is an upper bound; a seed
    censored is censored at the largest of ``xs``. ``None`` when no budget has a final loss (or diverged).
    """
    b = np.asarray(budgets, dtype=float).ravel()
    x = b if xs is None else np.asarray(xs, dtype=float).ravel()
    y = np.asarray(final_losses, dtype=float).ravel()
    d = np.zeros(b.size, dtype=bool) if diverged is None else np.asarray(diverged, dtype=bool).ravel()
    y = np.where(d, np.inf, y)
    keep = np.isfinite(b) & (b > 0) & np.isfinite(x) & (x > 0) & ~np.isnan(y)
    b, x, y, d = b[keep], x[keep], y[keep], d[keep]
    if b.size == 0:
        return None
    uniq, inverse = np.unique(b, return_inverse=True)  # runs at one budget: their mean loss and x
    counts = np.bincount(inverse)
    loss, at = np.zeros(uniq.size), np.zeros(uniq.size)
    np.add.at(loss, inverse, y)
    np.add.at(at, inverse, x)
    loss, at = loss / counts, at / counts
    any_diverged = bool(d.any())
    hits = np.flatnonzero(loss <= float(target))
    if hits.size == 0:
        return Crossing(float(x.max()), CENSORED, any_diverged)
    i = int(hits[0])
    if i == 0 or not np.isfinite(loss[i - 1]):
        return Crossing(float(at[i]), AT_FIRST, any_diverged)
    value = budget_tokens_to_target(at[i - 1:i + 1], loss[i - 1:i + 1], target)
    return Crossing(float(value), EXACT, any_diverged)


@dataclass(frozen=True)
class ArmAtTarget:
    """An arm's seeds at one target, aggregated: the mean over all seeds and what kind of number it is."""

    crossings: dict[Any, Crossing]

    @property
    def statuses(self) -> set[str]:
        return {c.status for c in self.crossings.values()}

    @property
    def bound(self) -> str:
        censored, at_first = CENSORED in self.statuses, AT_FIRST in self.statuses
        return UNKNOWN if censored and at_first else LOWER if censored else UPPER if at_first else ""

    @property
    def mean(self) -> float:
        if not self.crossings or self.bound == UNKNOWN:
            return math.nan
        return float(np.mean([c.value for c in self.crossings.values()]))

    @property
    def std(self) -> float:
        """Seed standard deviation, for exact means only (a spread of bounds means nothing)."""
        if self.bound or len(self.crossings) < 2:
            return math.nan
        return float(np.std([c.value for c in self.crossings.values()], ddof=1))

    def count(self, *statuses: str) -> int:
        return sum(c.status in statuses for c in self.crossings.values())

    @property
    def n_diverged(self) -> int:
        return sum(c.diverged for c in self.crossings.values())


def speedup_bound(base: ArmAtTarget, arm: ArmAtTarget) -> str:
    """Whether ``mean(base) / mean(arm)`` is exact, a lower or an upper bound, or unknown."""
    lower = CENSORED in base.statuses or AT_FIRST in arm.statuses
    upper = AT_FIRST in base.statuses or CENSORED in arm.statuses
    return UNKNOWN if lower and upper else LOWER if lower else UPPER if upper else ""


#: which interval a speedup gets: two-sided for an exact ratio, the one-sided limit a bound can have
INTERVAL_SIDE = {"": "both", LOWER: "lower", UPPER: "upper"}


def ratio_with_ci(base: ArmAtTarget, arm: ArmAtTarget, *, level: float) -> tuple[float, float, float, str]:
    """Speedup point, interval and bound from every seed, paired by seed.

    The point is the ratio of the two arms' mean tokens over the seeds both ran; the interval is Fieller's
    for that same ratio (:func:`analysis.targets.fieller_interval`): two-sided for an exact ratio, and for
    a bound only the limit on its side (a lower bound ``≥ x`` gets ``[low, inf)``, an upper bound ``(0,
    high]``). No interval with fewer than 2 paired seeds; arms with no seed in common get the ratio of
    their own means and no interval (an unpaired interval from a few seeds would be a guess). A ratio
    0 / 0 (both arms at the target before training) is not formed: ``unknown``.
    """
    nan = math.nan
    bound = speedup_bound(base, arm)
    if bound == UNKNOWN or not base.crossings or not arm.crossings:
        return nan, nan, nan, UNKNOWN if bound == UNKNOWN else ""
    common = [k for k in base.crossings if k in arm.crossings]
    if common:
        b = [base.crossings[k].value for k in common]
        o = [arm.crossings[k].value for k in common]
    else:  # no seed in common (disjoint seed lists)
        b = [c.value for c in base.crossings.values()]
        o = [c.value for c in arm.crossings.values()]
    point = speedup(float(np.mean(b)), float(np.mean(o)))
    if point is None:
        return nan, nan, nan, UNKNOWN
    ci = fieller_interval(b, o, level=level, side=INTERVAL_SIDE[bound]) if common else None
    return (point, nan, nan, bound) if ci is None else (point, ci[0], ci[1], bound)
