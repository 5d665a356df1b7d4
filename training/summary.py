"""The comparison table printed at the end of a run: one row per arm, seeds averaged."""

from __future__ import annotations

import math
import statistics

import pandas as pd

from analysis.targets import speedup, tokens_to_target
from training.trainer import ArmResult


def _mean(values: list[float | None]) -> float:
    """Mean over seeds; NaN when any seed did not reach (the arm did not reach reliably)."""
    if not values or any(v is None or (isinstance(v, float) and math.isnan(v)) for v in values):
        return math.nan
    return statistics.fmean(values)


def summary_frame(results: list[ArmResult], targets: list[float], baseline_arm: str) -> pd.DataFrame:
    arms = list(dict.fromkeys(r.arm for r in results))
    to_target = {
        (arm, target): _mean([tokens_to_target([e.tokens for e in r.evals], [e.val_loss for e in r.evals],
                                               target) for r in results if r.arm == arm])
        for arm in arms for target in targets
    }
    rows = []
    for arm in arms:
        mine = [r for r in results if r.arm == arm]
        row = {
            "arm": arm,
            "seeds": len(mine),
            "final val loss": _mean([r.final_val_loss for r in mine]),
            "best val loss": _mean([r.best_val_loss for r in mine]),
        }
        for target in targets:
            tokens = to_target[(arm, target)]
            base = to_target.get((baseline_arm, target), math.nan)  # the baseline may have failed
            row[f"tokens to {target:g}"] = tokens
            ratio = speedup(None if math.isnan(base) else base, None if math.isnan(tokens) else tokens)
            row[f"speedup at {target:g}"] = math.nan if ratio is None else ratio
        row["tokens/s"] = _mean([r.tokens_per_s for r in mine])
        row["train s"] = _mean([r.train_seconds for r in mine])
        row["wall s"] = _mean([r.wall_seconds for r in mine])
        rows.append(row)
    return pd.DataFrame(rows)


def format_table(frame: pd.DataFrame) -> str:
    """Plain text for the terminal; 'not reached' where a target was not reached."""
    def fmt(column: str, value) -> str:
        if isinstance(value, float) and math.isnan(value):
            return "not reached" if column.startswith(("tokens to", "speedup")) else "-"
        if column.startswith("tokens to") or column == "tokens/s":
            return f"{value:,.0f}"
        if column.startswith("speedup"):
            return f"{value:.2f}x"
        if isinstance(value, float):
            return f"{value:.3f}" if "loss" in column else f"{value:.1f}"
        return str(value)

    shown = pd.DataFrame({c: [fmt(c, v) for v in frame[c]] for c in frame.columns})
    return shown.to_string(index=False)
