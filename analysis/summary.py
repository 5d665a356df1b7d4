"""The answer: one row per (context length, target, arm) of tokens and seconds to target and speedups.

:func:`summarize` is the one function behind every number a user sees: the table the runner prints,
the parent run's ``report/`` files and metrics (:func:`answer_metrics`), ``python -m analysis
summary`` and the figures. The per-curve rules (interpolation, budget mode) are in
:mod:`analysis.targets`; one seed's crossing and the bounds over seeds, as below, in :mod:`analysis.censoring`.

**Censored seeds.** Every seed counts. Per seed and target, the tokens to target are one of

* *exact*: the crossing was observed between two evaluations (curve mode) or two budgets (budget mode);
* *at first* (``≤``): the target was already met at the smallest budget (or at a first evaluation after
  0 tokens), so the crossing is somewhere below it: that value is an upper bound;
* *censored* (``≥``): the target was never met, so the crossing is beyond the largest budget (budget
  mode) or the last evaluation (curve mode): that value is a lower bound.

**Diverged seeds.** A main run that diverged (a non-finite training loss: the run is FAILED and tagged
``datgpt.failure``) is a seed that never reached the target, not a seed to drop: in curve mode it is its
curve up to the divergence (a crossing before it counts, else it is censored at its last evaluation); in
budget mode its budget reached no target (its final loss counts as infinite, and a mean final loss it
enters is infinite). ``n_diverged`` counts such seeds, and the tables say "diverged".

An arm's tokens to target is the mean over **all** its seeds, each at its value above. Where some
seeds are censored the mean is a lower bound (``≥``); where some are at first, an upper bound (``≤``);
where both, no bound holds and the mean is not formed (``?``). The speedup is the baseline's mean over
the arm's mean, over the seeds both ran (paired); a lower bound on the baseline's side or an upper
bound on the arm's makes it a lower bound, the opposite an upper bound, and bounds in both directions
leave it unknown. Its interval is Fieller's for the same ratio of means, paired by seed (two-sided), and
for a bound only the one-sided limit on its side: ``[low, inf)`` for ``≥``, ``(0, high]`` for ``≤``
(:func:`analysis.censoring.ratio_with_ci`; why, in docs/analysis.md). Seconds to target follow the same
rules on training seconds.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from analysis import record
from analysis.errors import AnalysisWarning
from analysis.censoring import (AT_FIRST, CENSORED, EXACT, LOWER, UPPER, ArmAtTarget, Crossing, budget_crossing,
                                curve_crossing, ratio_with_ci)

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["summarize", "answer_metrics", "SUMMARY_COLUMNS", "EXACT", "AT_FIRST", "CENSORED"]


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
    "n_censored",
    "n_diverged",
    "reached",
    "final_val_loss",
    "best_val_loss",
    "tokens_to_target",
    "tokens_to_target_std",
    "tokens_to_target_bound",
    "seconds_to_target",
    "seconds_to_target_bound",
    "speedup",
    "speedup_ci_low",
    "speedup_ci_high",
    "speedup_bound",
    "time_speedup",
    "time_speedup_ci_low",
    "time_speedup_ci_high",
    "time_speedup_bound",
]


# ------------------------------------------------------------------ from the tidy frame to per-seed runs


@dataclass
class SeedRuns:
    """One seed of one arm: its runs as (budget, curve, diverged) triples, largest budget last."""

    runs: list[tuple[float, "pd.DataFrame", bool]]

    @property
    def largest(self) -> "pd.DataFrame":
        return self.runs[-1][1]

    def final(self) -> float:
        """The last validation loss of the largest budget; infinite when that run diverged."""
        return math.inf if self.runs[-1][2] else float(self.largest["value"].iloc[-1])

    def best(self) -> float:
        return float(np.nanmin(np.concatenate([r["value"].to_numpy(float) for _, r, _ in self.runs])))

    def crossing(self, target: float, budget_mode: bool, x: str) -> Crossing | None:
        if budget_mode:
            finals = [float(r["value"].iloc[-1]) for _, r, _ in self.runs]
            xs = None if x == "tokens" else [float(r[x].iloc[-1]) for _, r, _ in self.runs]
            return budget_crossing([b for b, _, _ in self.runs], finals, target, [d for _, _, d in self.runs], xs)
        return curve_crossing(self.largest[x], self.largest["value"], target, self.runs[-1][2])


def _seed_key(seed: Any, run_id: Any) -> Any:
    import pandas as pd

    if seed is None or (not isinstance(seed, str) and pd.isna(seed)):
        return f"run:{run_id}"
    return int(seed) if isinstance(seed, (int, np.integer, float)) else seed


def _seed_runs(arm_frame: "pd.DataFrame", arm: str, budget_mode: bool) -> dict[Any, SeedRuns]:
    """Group an arm's validation rows by seed, then by run, ordered by budget."""
    out: dict[Any, SeedRuns] = {}
    for key, s in arm_frame.groupby("_key", sort=False):
        runs = []
        for _run_id, r in s.groupby("run_id", sort=False):
            r = r.sort_values("step", kind="stable")
            b = r["_budget"].iloc[0]
            if math.isnan(b):
                b = float(r["tokens"].max()) if r["tokens"].notna().any() else math.nan
            runs.append((b, r, bool(r["_diverged"].iloc[0])))
        runs.sort(key=lambda t: -math.inf if math.isnan(t[0]) else t[0])
        same = [b for b, _, _ in runs if b == runs[-1][0] or (math.isnan(b) and math.isnan(runs[-1][0]))]
        if not budget_mode and len(same) > 1:
            warnings.warn(f"arm {arm!r} seed {key}: {len(same)} runs at the same budget; using run "
                          f"{runs[-1][1]['run_id'].iloc[0]}", AnalysisWarning, stacklevel=3)
        out[key] = SeedRuns(runs)
    return out


def _use_budget_mode(n_budgets: dict[str, int], mode: str) -> bool:
    if mode != "auto":
        return mode == "budget"
    use = all(n >= 2 for n in n_budgets.values())
    if not use and any(n >= 2 for n in n_budgets.values()):
        warnings.warn("budget mode needs every arm at >= 2 token budgets "
                      f"({', '.join(f'{a}: {n}' for a, n in n_budgets.items())}); "
                      "using curve mode on each arm's largest budget", AnalysisWarning, stacklevel=3)
    return use


def _val_rows(frame: "pd.DataFrame") -> "pd.DataFrame":
    import pandas as pd

    val = frame[frame["metric"] == record.VAL_LOSS].copy()
    for col in ("budget", "context_length", "tokens", "elapsed_s", "seed"):
        if col not in val.columns:
            val[col] = pd.NA
    val["_budget"] = pd.to_numeric(val["budget"], errors="coerce").astype(float)
    val["_ctx"] = pd.to_numeric(val["context_length"], errors="coerce").astype(float)
    val["_key"] = [_seed_key(s, r) for s, r in zip(val["seed"], val["run_id"])]
    val["tokens"] = pd.to_numeric(val["tokens"], errors="coerce").astype(float)
    val["elapsed_s"] = pd.to_numeric(val["elapsed_s"], errors="coerce").astype(float)
    val["_diverged"] = val["diverged"].eq(True) if "diverged" in val.columns else False
    return val


def _empty(targets: list[float], baseline_arm: str, level: float, loss_unit: str) -> "pd.DataFrame":
    import pandas as pd

    out = pd.DataFrame({c: pd.Series(dtype=object) for c in SUMMARY_COLUMNS})
    out.attrs.update(baseline_arm=baseline_arm, targets=targets, ci_level=level, loss_unit=loss_unit)
    return out


def summarize(
    frame: "pd.DataFrame",
    targets: Sequence[float],
    baseline_arm: str,
    *,
    mode: str = "auto",
    level: float = 0.95,
    loss_unit: str = "token",
) -> "pd.DataFrame":
    """One row per (context length, target, arm): tokens/seconds to target and speedups (module docstring).

    ``frame`` is the tidy frame of :func:`analysis.load.load_experiment` (columns ``arm, seed, budget,
    context_length, diverged, run_id, step, tokens, elapsed_s, metric, value``; ``budget``,
    ``context_length`` and ``diverged`` may be absent); only validation-loss rows are used. ``level`` is the
    confidence level of the speedups' intervals. Without targets there is one row per
    (context length, arm) with ``target`` NaN: the final and best losses.

    Mode (per context length): ``"auto"`` uses **budget mode** when *every* arm has runs at two or more
    budgets (``train.tokens``), else **curve mode** on each arm's largest budget (with a warning when
    only some arms have several); ``"curve"``/``"budget"`` force one. ``final_val_loss`` is the last
    validation loss of the largest budget and ``best_val_loss`` the lowest seen, each a mean over seeds.
    ``loss_unit`` ("token" or "byte", ``ExperimentData.loss_unit``) only labels the tables and figures drawn
    from the result (``attrs``).
    """
    import pandas as pd

    if mode not in ("auto", "curve", "budget"):
        raise ValueError(f"mode must be 'auto', 'curve' or 'budget', got {mode!r}")
    target_list = [float(t) for t in targets]
    if frame is None or len(frame) == 0 or "metric" not in frame:
        return _empty(target_list, baseline_arm, level, loss_unit)
    val = _val_rows(frame)
    if val.empty:
        return _empty(target_list, baseline_arm, level, loss_unit)

    ctx_values = sorted(val["_ctx"].dropna().unique().tolist())
    if val["_ctx"].isna().any():
        ctx_values.append(math.nan)
    rows: list[dict[str, Any]] = []
    for ctx in ctx_values:
        g = val[val["_ctx"].isna()] if math.isnan(ctx) else val[val["_ctx"] == ctx]
        rows += _context_rows(g, ctx, target_list, baseline_arm, mode, level)
    out = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    for col in ("context_length", "budget"):
        out[col] = out[col].astype("Int64")
    for col in ("n_budgets", "n_seeds", "n_reached", "n_at_first", "n_censored", "n_diverged"):
        out[col] = out[col].astype(int)
    for col in ("reached", "is_baseline"):
        out[col] = out[col].astype(bool)
    text_cols = {"context_length", "arm", "is_baseline", "mode", "budget", "reached"}
    for col in SUMMARY_COLUMNS:
        if col not in text_cols and not col.startswith("n_") and not col.endswith("_bound"):
            out[col] = out[col].astype(float)
    out.attrs.update(baseline_arm=baseline_arm, targets=target_list, ci_level=level, loss_unit=loss_unit)
    return out


def _context_rows(g: "pd.DataFrame", ctx: float, targets: list[float], baseline_arm: str, mode: str,
                  level: float) -> list[dict[str, Any]]:
    """The rows of one context length."""
    import pandas as pd

    arms = sorted(g["arm"].unique().tolist(), key=lambda a: (a != baseline_arm, str(a)))
    n_budgets = {a: int(g.loc[g["arm"] == a, "_budget"].dropna().nunique()) for a in arms}
    budget_mode = _use_budget_mode(n_budgets, mode)
    if baseline_arm not in arms:
        where = "" if math.isnan(ctx) else f" at context length {int(ctx)}"
        warnings.warn(f"baseline arm {baseline_arm!r} has no runs{where}; speedups are NaN",
                      AnalysisWarning, stacklevel=3)
    seeds = {arm: _seed_runs(g[g["arm"] == arm], arm, budget_mode) for arm in arms}
    budget_of = {arm: g.loc[g["arm"] == arm, "_budget"].max() for arm in arms}

    def at(arm: str, target: float, x: str) -> ArmAtTarget:
        crossings = {k: s.crossing(target, budget_mode, x) for k, s in seeds[arm].items()}
        return ArmAtTarget({k: c for k, c in crossings.items() if c is not None})

    rows = []
    for target in targets or [math.nan]:
        base_tokens = base_secs = None  # the baseline's seeds at this target, computed once for every arm
        if baseline_arm in arms and not math.isnan(target):
            base_tokens, base_secs = at(baseline_arm, target, "tokens"), at(baseline_arm, target, "elapsed_s")
        for arm in arms:
            row: dict[str, Any] = dict(
                context_length=pd.NA if math.isnan(ctx) else int(ctx), target=target, arm=arm,
                is_baseline=arm == baseline_arm, mode="budget" if budget_mode else "curve",
                budget=pd.NA if pd.isna(budget_of[arm]) else int(budget_of[arm]), n_budgets=n_budgets[arm],
                n_seeds=len(seeds[arm]),
                final_val_loss=float(np.mean([s.final() for s in seeds[arm].values()])),
                best_val_loss=float(np.mean([s.best() for s in seeds[arm].values()])))
            if math.isnan(target):
                rows.append(row | _no_target())
                continue
            tokens, secs = (base_tokens, base_secs) if arm == baseline_arm else (
                at(arm, target, "tokens"), at(arm, target, "elapsed_s"))
            row.update(n_reached=tokens.count(EXACT, AT_FIRST), n_at_first=tokens.count(AT_FIRST),
                       n_censored=tokens.count(CENSORED), n_diverged=tokens.n_diverged,
                       reached=tokens.count(EXACT, AT_FIRST) > 0,
                       tokens_to_target=tokens.mean, tokens_to_target_std=tokens.std,
                       tokens_to_target_bound=tokens.bound, seconds_to_target=secs.mean,
                       seconds_to_target_bound=secs.bound)
            row.update(_speedups(arm, baseline_arm, tokens, secs, base_tokens, base_secs, level))
            rows.append(row)
    return rows


def _no_target() -> dict[str, Any]:
    nan = math.nan
    return dict(n_reached=0, n_at_first=0, n_censored=0, n_diverged=0, reached=False, tokens_to_target=nan,
                tokens_to_target_std=nan, tokens_to_target_bound="", seconds_to_target=nan,
                seconds_to_target_bound="", speedup=nan, speedup_ci_low=nan, speedup_ci_high=nan,
                speedup_bound="", time_speedup=nan, time_speedup_ci_low=nan, time_speedup_ci_high=nan,
                time_speedup_bound="")


def _speedups(arm: str, baseline_arm: str, tokens: ArmAtTarget, secs: ArmAtTarget,
              base_tokens: ArmAtTarget | None, base_secs: ArmAtTarget | None, level: float) -> dict[str, Any]:
    nan = math.nan
    if arm == baseline_arm:  # against itself: 1 by definition
        return dict(speedup=1.0, speedup_ci_low=nan, speedup_ci_high=nan, speedup_bound="", time_speedup=1.0,
                    time_speedup_ci_low=nan, time_speedup_ci_high=nan, time_speedup_bound="")
    if base_tokens is None or base_secs is None:  # no baseline at this context length
        return {k: v for k, v in _no_target().items() if "speedup" in k}
    sp = ratio_with_ci(base_tokens, tokens, level=level)
    tsp = ratio_with_ci(base_secs, secs, level=level)
    return dict(speedup=sp[0], speedup_ci_low=sp[1], speedup_ci_high=sp[2], speedup_bound=sp[3],
                time_speedup=tsp[0], time_speedup_ci_low=tsp[1], time_speedup_ci_high=tsp[2],
                time_speedup_bound=tsp[3])


# ------------------------------------------------------------------ the answer as parent-run metrics

#: summary columns logged per (arm, target) on the parent run (speedups only for arms other than the baseline)
ANSWER_TARGET_COLUMNS = ("tokens_to_target", "seconds_to_target")
ANSWER_SPEEDUP_COLUMNS = ("speedup", "speedup_ci_low", "speedup_ci_high",
                          "time_speedup", "time_speedup_ci_low", "time_speedup_ci_high")
#: the bound direction of a summary number (its ``<column>_bound``) as the value of its sibling metric
BOUND_METRIC_VALUES = {"": record.BOUND_EXACT, LOWER: record.BOUND_LOWER, UPPER: record.BOUND_UPPER}


def answer_metrics(summary: "pd.DataFrame") -> dict[str, float]:
    """The summary's numbers as parent-run metrics (names: :func:`analysis.record.answer_metric`).

    Per arm its final validation loss; per arm and target its tokens and seconds to target; per other
    arm and target the speedups with their confidence limits. NaN and infinite cells (not formed, or no
    limit on that side) are left out. A number that can be a bound (tokens, seconds, speedups) is logged
    as its value, and beside it its direction (:func:`analysis.record.answer_bound_metric`:
    ``record.BOUND_EXACT``, ``BOUND_LOWER`` for ``≥``, ``BOUND_UPPER`` for ``≤``).
    """
    import pandas as pd

    if summary.empty:
        return {}
    ctx = summary["context_length"]
    several = ctx.dropna().nunique() > 1
    out: dict[str, float] = {}

    def put(name: str, value: Any) -> bool:
        v = float(value)
        if math.isfinite(v):
            out[name] = v
        return math.isfinite(v)

    for _, r in summary.iterrows():
        c = None if not several or pd.isna(r["context_length"]) else int(r["context_length"])
        put(record.answer_metric(r["arm"], "final_val_loss", context_length=c), r["final_val_loss"])
        if pd.isna(r["target"]):
            continue
        columns = ANSWER_TARGET_COLUMNS + (() if r["is_baseline"] else ANSWER_SPEEDUP_COLUMNS)
        for col in columns:
            logged = put(record.answer_metric(r["arm"], col, r["target"], c), r[col])
            bound = r.get(f"{col}_bound")
            if logged and bound in BOUND_METRIC_VALUES:
                out[record.answer_bound_metric(r["arm"], col, r["target"], c)] = BOUND_METRIC_VALUES[bound]
    return out
