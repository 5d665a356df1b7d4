"""Censored seeds: one seed's crossing of a target, exact or a bound, and an arm's mean and speedup over all
its seeds with the bound they carry (the rules are in analysis/summary.py's docstring, which applies them)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from analysis.targets import bootstrap_ci, budget_tokens_to_target, clean_xy, speedup, x_to_target

EXACT, AT_FIRST, CENSORED = "exact", "at_first", "censored"
LOWER, UPPER, UNKNOWN = "lower", "upper", "unknown"  # what a bounded number is: ≥, ≤, neither


@dataclass(frozen=True)
class Crossing:
    """One seed's tokens (or seconds) to a target: the value and whether it is exact or a bound."""

    value: float
    status: str  # EXACT, AT_FIRST (an upper bound) or CENSORED (a lower bound)


def curve_crossing(xs: Sequence[float], losses: Sequence[float], target: float) -> Crossing | None:
    """Curve mode: the first crossing of ``target``; censored at the last evaluation when never met.

    ``None`` when the curve has no finite point. A crossing at the very first evaluation is an upper
    bound unless that evaluation is at 0 (the usual step-0 evaluation).
    """
    x, y = clean_xy(xs, losses)
    if x.size == 0:
        return None
    value = x_to_target(x, y, target)
    if value is None:
        return Crossing(float(x[-1]), CENSORED)
    if y[0] <= target and x[0] > 0:
        return Crossing(value, AT_FIRST)
    return Crossing(value, EXACT)


def budget_crossing(budgets: Sequence[float], final_losses: Sequence[float], target: float) -> Crossing | None:
    """Budget mode: the crossing interpolated in log tokens; censored at the largest budget, an upper
    bound at the smallest. ``None`` when no budget has a finite final loss."""
    b, _ = clean_xy(budgets, final_losses)
    b = b[b > 0]
    if b.size == 0:
        return None
    value = budget_tokens_to_target(budgets, final_losses, target)
    if value is None:
        return Crossing(float(b.max()), CENSORED)
    if value == float(b.min()):
        return Crossing(value, AT_FIRST)
    return Crossing(value, EXACT)


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


def speedup_bound(base: ArmAtTarget, arm: ArmAtTarget) -> str:
    """Whether ``mean(base) / mean(arm)`` is exact, a lower or an upper bound, or unknown."""
    lower = CENSORED in base.statuses or AT_FIRST in arm.statuses
    upper = AT_FIRST in base.statuses or CENSORED in arm.statuses
    return UNKNOWN if lower and upper else LOWER if lower else UPPER if upper else ""


def ratio_with_ci(base: ArmAtTarget, arm: ArmAtTarget, *, level: float, n_resamples: int,
                  seed: int) -> tuple[float, float, float, str]:
    """Speedup point, interval and bound from every seed; paired by seed where the arms share seeds."""
    nan = math.nan
    bound = speedup_bound(base, arm)
    if bound == UNKNOWN or not base.crossings or not arm.crossings:
        return nan, nan, nan, UNKNOWN if bound == UNKNOWN else ""
    common = [k for k in base.crossings if k in arm.crossings]
    if common:
        b = [base.crossings[k].value for k in common]
        o = [arm.crossings[k].value for k in common]
        paired = True
    else:  # no seed in common (disjoint seed lists): resample each arm on its own
        b = [c.value for c in base.crossings.values()]
        o = [c.value for c in arm.crossings.values()]
        paired = False
    point = speedup(float(np.mean(b)), float(np.mean(o)))
    if point is None:
        return nan, nan, nan, bound
    ci = bootstrap_ci(b, o, level=level, n_resamples=n_resamples, seed=seed, paired=paired)
    return (point, nan, nan, bound) if ci is None else (point, ci[0], ci[1], bound)
