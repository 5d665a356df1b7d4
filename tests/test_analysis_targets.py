"""Pure tests of analysis.targets / analysis.tables (no MLflow, no plotting)."""

from __future__ import annotations

import math
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.errors import AnalysisWarning
from analysis.summary import summarize
from analysis.tables import to_latex, to_markdown
from analysis.targets import (
    budget_tokens_to_target,
    fieller_interval,
    seconds_to_target,
    speedup,
    tokens_to_target,
    x_to_target,
)

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- curve mode


def test_linear_interpolation_between_evaluations():
    # loss falls 10 -> 6 -> 2 over 0, 100, 200 tokens; 4.0 is crossed half way between 100 and 200
    assert tokens_to_target([0, 100, 200], [10.0, 6.0, 2.0], 4.0) == pytest.approx(150.0)
    assert tokens_to_target([0, 100, 200], [10.0, 6.0, 2.0], 6.0) == pytest.approx(100.0)
    assert tokens_to_target([0, 100, 200], [10.0, 6.0, 2.0], 9.0) == pytest.approx(25.0)


def test_first_crossing_wins_even_if_curve_goes_back_up():
    # reaches 5 between 10 and 20, goes back above, reaches again later: first crossing counts
    assert tokens_to_target([0, 10, 20, 30, 40], [8, 6, 4, 7, 3], 5.0) == pytest.approx(15.0)


def test_first_evaluation_already_below_target_returns_its_tokens():
    assert tokens_to_target([50, 100], [3.0, 2.0], 4.0) == 50.0


def test_never_reached_is_none():
    assert tokens_to_target([0, 100, 200], [10.0, 8.0, 7.0], 5.0) is None
    assert tokens_to_target([], [], 5.0) is None
    assert tokens_to_target([0, 1], [np.nan, np.nan], 5.0) is None
    assert tokens_to_target([0, 1], [6.0, 4.0], float("nan")) is None


def test_unsorted_input_and_nans_are_handled():
    tokens = [200, 0, 150, 100, 50]
    losses = [2.0, 10.0, np.nan, 6.0, np.inf]
    # after dropping non-finite pairs and sorting: (0,10) (100,6) (200,2)
    assert tokens_to_target(tokens, losses, 4.0) == pytest.approx(150.0)
    assert tokens_to_target([np.nan, 0, 100], [1.0, 10.0, 0.0], 5.0) == pytest.approx(50.0)


def test_power_law_curve_dense_grid_close_to_analytic():
    # loss = a * t^-b; analytic crossing t* = (a / target) ** (1 / b)
    a, b, target = 40.0, 0.25, 5.0
    t_star = (a / target) ** (1 / b)
    grid = np.linspace(1_000, 2 * t_star, 4001)
    got = tokens_to_target(grid, a * grid ** -b, target)
    assert got == pytest.approx(t_star, rel=1e-4)


def test_seconds_and_generic_x_to_target():
    assert seconds_to_target([0.0, 2.0, 4.0], [9.0, 7.0, 5.0], 6.0) == pytest.approx(3.0)
    assert x_to_target([0.0, 2.0, 4.0], [9.0, 7.0, 5.0], 6.0) == pytest.approx(3.0)


def test_length_mismatch_raises():
    with pytest.raises(ValueError):
        tokens_to_target([0, 1, 2], [1.0, 2.0], 1.5)


# ---------------------------------------------------------------- budget mode


def test_budget_mode_log_linear_interpolation_is_exact_for_log_linear_losses():
    # final loss L(B) = 10 - 0.5 ln B  ->  B* = exp((10 - target) / 0.5)
    budgets = [1e6, 2e6, 4e6]
    finals = [10 - 0.5 * math.log(b) for b in budgets]
    target = 2.9
    assert budget_tokens_to_target(budgets, finals, target) == pytest.approx(math.exp(14.2))
    # order of the input does not matter
    assert budget_tokens_to_target(budgets[::-1], finals[::-1], target) == pytest.approx(
        math.exp(14.2))


def test_budget_mode_is_not_linear_in_tokens():
    # halfway in loss between 1e6 and 4e6 is the geometric mean 2e6, not the arithmetic 2.5e6
    assert budget_tokens_to_target([1e6, 4e6], [3.0, 2.0], 2.5) == pytest.approx(2e6)


def test_budget_mode_no_extrapolation():
    assert budget_tokens_to_target([1e6, 2e6, 4e6], [3.0, 2.8, 2.6], 2.0) is None
    # smallest budget already reaches the target -> the smallest budget (an upper bound)
    assert budget_tokens_to_target([1e6, 2e6, 4e6], [3.0, 2.8, 2.6], 3.5) == 1e6
    assert budget_tokens_to_target([], [], 3.0) is None


def test_budget_mode_averages_duplicate_budgets():
    # two seeds at 1e6 (3.2 and 2.8 -> 3.0), one at 4e6 (2.0)
    assert budget_tokens_to_target([1e6, 1e6, 4e6], [3.2, 2.8, 2.0], 2.5) == pytest.approx(2e6)


# ---------------------------------------------------------------- speedup and its interval


def test_speedup():
    assert speedup(200.0, 100.0) == 2.0
    assert speedup(None, 100.0) is None
    assert speedup(100.0, None) is None
    assert speedup(float("nan"), 100.0) is None
    assert speedup(100.0, 0.0) == math.inf  # the other arm was at the target before training
    assert speedup(0.0, 0.0) is None


def test_fieller_identical_seeds_collapse_to_the_point():
    lo, hi = fieller_interval([2e6, 2e6, 2e6], [1e6, 1e6, 1e6])
    assert lo == pytest.approx(2.0) and hi == pytest.approx(2.0)


def _paired_t(b, o, rho):
    d = np.asarray(b, float) - rho * np.asarray(o, float)
    return d.mean() / (d.std(ddof=1) / math.sqrt(d.size))


def test_fieller_limits_are_where_the_paired_t_test_rejects():
    """Written again from the definition: the limits are the ratios at which the paired t statistic of
    baseline - rho * other reaches the t quantile; inside, it does not."""
    from scipy import stats

    base, other = [1500.0, 1333.0, 1444.0, 1610.0], [700.0, 598.0, 650.0, 801.0]
    lo, hi = fieller_interval(base, other, level=0.9)
    t = stats.t.ppf(0.95, 3)
    assert _paired_t(base, other, lo) == pytest.approx(t, rel=1e-9)
    assert _paired_t(base, other, hi) == pytest.approx(-t, rel=1e-9)
    assert abs(_paired_t(base, other, (lo + hi) / 2)) < t
    assert lo < np.mean(base) / np.mean(other) < hi
    # one-sided limits use the one-sided quantile: tighter on their side, nothing on the other
    low, inf = fieller_interval(base, other, level=0.95, side="lower")
    zero, high = fieller_interval(base, other, level=0.95, side="upper")
    assert (inf, zero) == (math.inf, 0.0)
    assert low == pytest.approx(lo) and high == pytest.approx(hi)  # 95 % one-sided = 90 % two-sided
    wider = fieller_interval(base, other, level=0.99)
    assert wider[0] < lo and wider[1] > hi


def test_fieller_has_no_upper_end_when_the_arm_mean_is_not_above_zero():
    """Two seeds far apart on the arm's side: its mean is not significantly above 0 at 95 %, so no ratio
    above the point can be rejected."""
    lo, hi = fieller_interval([1500.0, 1400.0], [100.0, 900.0])
    assert hi == math.inf and 0.0 <= lo < 2900 / 1000


def test_fieller_needs_two_pairs_and_validates_arguments():
    assert fieller_interval([1.0], [2.0]) is None
    assert fieller_interval([1.0, np.nan], [2.0, 1.0]) is None
    assert fieller_interval([1.0, 2.0], [0.0, 0.0]) is None  # no ratio: every arm value is 0
    with pytest.raises(ValueError):
        fieller_interval([1.0, 2.0], [1.0, 2.0], level=1.5)
    with pytest.raises(ValueError):
        fieller_interval([1.0, 2.0], [1.0])
    with pytest.raises(ValueError):
        fieller_interval([1.0, 2.0], [1.0, 2.0], side="left")


# ---------------------------------------------------------------- summarize on a hand-built frame


def _line(start, slope, t0, t1, dt):
    """Points (t, start - slope * t) for t in range(t0, t1, dt)."""
    return [(t, start - slope * t) for t in range(t0, t1, dt)]


def _frame(runs):
    """runs: list of dicts arm, seed, budget, ctx, points [(tokens, loss)], tps."""
    rows = []
    for i, r in enumerate(runs):
        for step, (tok, loss) in enumerate(r["points"]):
            rows.append(dict(experiment="x", parent_run_id="p", run_id=f"r{i}", arm=r["arm"],
                             seed=r.get("seed", 0), budget=r.get("budget", 1000),
                             context_length=r.get("ctx", 64), step=step, tokens=float(tok),
                             elapsed_s=tok / r.get("tps", 100.0), metric="val/loss",
                             value=float(loss)))
    return pd.DataFrame(rows)


def test_summarize_uneven_grids_and_not_reached():
    # gpt evaluated every 100 tokens, ngpt every 70; both linear: gpt 10 - 0.01 t, ngpt 10 - 0.02 t
    gpt = [(t, 10 - 0.01 * t) for t in range(0, 701, 100)]
    ngpt = [(t, 10 - 0.02 * t) for t in range(0, 351, 70)]
    frame = _frame([dict(arm="gpt", points=gpt, tps=100.0),
                    dict(arm="ngpt", points=ngpt, tps=50.0)])
    s = summarize(frame, [6.0, 1.0], "gpt").set_index(["target", "arm"])
    assert s.loc[(6.0, "gpt"), "tokens_to_target"] == pytest.approx(400.0)
    assert s.loc[(6.0, "ngpt"), "tokens_to_target"] == pytest.approx(200.0)
    assert s.loc[(6.0, "ngpt"), "speedup"] == pytest.approx(2.0)
    assert s.loc[(6.0, "gpt"), "seconds_to_target"] == pytest.approx(4.0)
    assert s.loc[(6.0, "ngpt"), "seconds_to_target"] == pytest.approx(4.0)
    assert s.loc[(6.0, "ngpt"), "time_speedup"] == pytest.approx(1.0)
    assert bool(s.loc[(6.0, "ngpt"), "reached"]) is True
    assert s.loc[(6.0, "gpt"), "final_val_loss"] == pytest.approx(3.0)
    assert s.loc[(6.0, "ngpt"), "best_val_loss"] == pytest.approx(10 - 0.02 * 350)
    # 1.0 is reached by nobody: both censored at their last evaluation (lower bounds), no speedup
    for arm, last in (("gpt", 700.0), ("ngpt", 350.0)):
        row = s.loc[(1.0, arm)]
        assert bool(row["reached"]) is False and row["n_reached"] == 0 and row["n_censored"] == 1
        assert row["tokens_to_target"] == last and row["tokens_to_target_bound"] == "lower"
        assert row["seconds_to_target"] == pytest.approx(7.0)
    assert math.isnan(s.loc[(1.0, "ngpt"), "speedup"]) and s.loc[(1.0, "ngpt"), "speedup_bound"] == "unknown"
    assert "n.r. (\u2265 700)" in to_markdown(s.reset_index())
    # single seed -> no CI
    assert math.isnan(s.loc[(6.0, "ngpt"), "speedup_ci_low"])
    # baseline listed first for every target
    assert list(summarize(frame, [6.0], "gpt")["arm"]) == ["gpt", "ngpt"]


def test_summarize_identical_seeds_give_point_interval():
    runs = []
    for seed in (0, 1, 2):
        runs.append(dict(arm="gpt", seed=seed, points=_line(10, 0.01, 0, 801, 100)))
        runs.append(dict(arm="ngpt", seed=seed, points=_line(10, 0.04, 0, 201, 25)))
    s = summarize(_frame(runs), [6.0], "gpt").set_index("arm")
    assert s.loc["ngpt", "n_seeds"] == 3 and s.loc["ngpt", "n_reached"] == 3
    assert s.loc["ngpt", "speedup"] == pytest.approx(4.0)
    assert s.loc["ngpt", "speedup_ci_low"] == pytest.approx(4.0)
    assert s.loc["ngpt", "speedup_ci_high"] == pytest.approx(4.0)
    assert s.loc["ngpt", "tokens_to_target_std"] == pytest.approx(0.0)


def test_summarize_partial_reach_counts_seeds():
    runs = [
        dict(arm="gpt", seed=0, points=[(0, 10), (100, 4)]),
        dict(arm="gpt", seed=1, points=[(0, 10), (100, 4)]),
        dict(arm="ngpt", seed=0, points=[(0, 10), (100, 2)]),
        dict(arm="ngpt", seed=1, points=[(0, 10), (100, 7)]),  # never reaches 5
    ]
    s = summarize(_frame(runs), [5.0], "gpt").set_index("arm")
    assert s.loc["ngpt", "n_reached"] == 1 and s.loc["ngpt", "n_seeds"] == 2
    assert s.loc["ngpt", "n_censored"] == 1 and bool(s.loc["ngpt", "reached"]) is True
    # every seed counts: seed 1 enters at its last evaluation (100 tokens), so the mean is a lower bound
    assert s.loc["ngpt", "tokens_to_target"] == pytest.approx((62.5 + 100) / 2)
    assert s.loc["ngpt", "tokens_to_target_bound"] == "lower"
    # ... and the speedup (baseline exact, arm a lower bound) an upper bound
    assert s.loc["ngpt", "speedup"] == pytest.approx((500 / 6) / 81.25)
    assert s.loc["ngpt", "speedup_bound"] == "upper"


def test_summarize_budget_mode_auto_and_forced_curve():
    runs = []
    for arm, c in (("gpt", 10.0), ("ngpt", 9.95)):
        for b in (1e6, 2e6, 4e6):
            final = c - 0.5 * math.log(b)
            runs.append(dict(arm=arm, budget=int(b), points=[(0, 11.0), (b, final)]))
    frame = _frame(runs)
    s = summarize(frame, [2.9, 2.0], "gpt").set_index(["target", "arm"])
    assert set(s["mode"]) == {"budget"}
    assert s.loc[(2.9, "gpt"), "tokens_to_target"] == pytest.approx(math.exp(14.2))
    assert s.loc[(2.9, "ngpt"), "tokens_to_target"] == pytest.approx(math.exp(14.1))
    assert s.loc[(2.9, "ngpt"), "speedup"] == pytest.approx(math.exp(0.1))
    assert s.loc[(2.9, "gpt"), "budget"] == 4_000_000
    assert s.loc[(2.9, "gpt"), "n_budgets"] == 3
    assert not s.loc[(2.0, "ngpt"), "reached"]
    # forced curve mode uses the largest budget's curve only
    c = summarize(frame, [2.9], "gpt", mode="curve").set_index("arm")
    assert set(c["mode"]) == {"curve"}
    final = 10.0 - 0.5 * math.log(4e6)
    assert c.loc["gpt", "tokens_to_target"] == pytest.approx(4e6 * (11.0 - 2.9) / (11.0 - final))


def test_budget_mode_flags_targets_reached_at_the_smallest_budget():
    """Reached already at the smallest budget: the tokens are an upper bound, so the speedup is a lower
    bound (only the arm there) or cannot be formed (the baseline there); the tables say so."""
    finals = {"gpt": {1000: 6.0, 2000: 5.0, 4000: 4.0}, "ngpt": {1000: 4.5, 2000: 3.5, 4000: 2.5}}
    runs = [dict(arm=arm, seed=seed, budget=b, points=[(0, 11.0), (b, loss)])
            for arm, by_budget in finals.items() for b, loss in by_budget.items() for seed in (0, 1)]
    s = summarize(_frame(runs), [6.5, 4.5, 3.0], "gpt").set_index(["target", "arm"])
    assert s.loc[(6.5, "gpt"), "n_at_first"] == 2 and s.loc[(6.5, "gpt"), "tokens_to_target"] == 1000
    assert math.isnan(s.loc[(6.5, "ngpt"), "speedup"]) and s.loc[(6.5, "ngpt"), "speedup_bound"] == "unknown"
    assert s.loc[(4.5, "ngpt"), "n_at_first"] == 2 and s.loc[(4.5, "gpt"), "n_at_first"] == 0
    assert s.loc[(4.5, "ngpt"), "speedup"] == pytest.approx(math.exp(0.5 * math.log(2)) * 2)  # 2828 / 1000
    assert s.loc[(4.5, "ngpt"), "speedup_bound"] == "lower"
    # 3.0: gpt never gets there (censored at its largest budget), ngpt crosses between 2000 and 4000
    assert s.loc[(3.0, "gpt"), "n_censored"] == 2 and s.loc[(3.0, "gpt"), "tokens_to_target"] == 4000
    assert s.loc[(3.0, "ngpt"), "tokens_to_target"] == pytest.approx(math.sqrt(2000 * 4000))
    assert s.loc[(3.0, "ngpt"), "speedup"] == pytest.approx(4000 / math.sqrt(2000 * 4000))
    assert s.loc[(3.0, "ngpt"), "n_at_first"] == 0 and s.loc[(3.0, "ngpt"), "speedup_bound"] == "lower"
    text = to_markdown(s.reset_index())
    assert "\u2264 1.00k" in text and "< 1st budget" in text and "\u2265 2.83" in text
    assert "$\\le$ 1.00k" in to_latex(s.reset_index())


def test_summarize_mixed_budgets_falls_back_to_curve_with_warning():
    runs = [dict(arm="gpt", budget=100, points=[(0, 10), (100, 4)]),
            dict(arm="gpt", budget=200, points=[(0, 10), (200, 3)]),
            dict(arm="ngpt", budget=200, points=[(0, 10), (200, 2)])]
    with pytest.warns(AnalysisWarning, match="budget mode needs every arm"):
        s = summarize(_frame(runs), [5.0], "gpt")
    assert set(s["mode"]) == {"curve"}
    assert s.set_index("arm").loc["gpt", "tokens_to_target"] == pytest.approx(200 * 5 / 7)


def test_summarize_per_context_length():
    runs = []
    for ctx, k in ((128, 0.015), (256, 0.02)):
        runs.append(dict(arm="gpt", ctx=ctx, points=_line(10, 0.01, 0, 1001, 50)))
        runs.append(dict(arm="ngpt", ctx=ctx, points=_line(10, k, 0, 1001, 50)))
    s = summarize(_frame(runs), [6.0], "gpt")
    assert list(s["context_length"]) == [128, 128, 256, 256]
    sp = s[s["arm"] == "ngpt"].set_index("context_length")["speedup"]
    assert sp[128] == pytest.approx(1.5) and sp[256] == pytest.approx(2.0)


def test_summarize_empty_inputs():
    assert summarize(pd.DataFrame(columns=["metric"]), [5.0], "gpt").empty
    frame = _frame([dict(arm="gpt", points=[(0, 10), (100, 4)])])
    no_targets = summarize(frame, [], "gpt")  # still the final losses, one row per arm
    assert len(no_targets) == 1 and no_targets["final_val_loss"].iloc[0] == 4.0
    assert no_targets["target"].isna().all() and "Final loss" in to_markdown(no_targets)
    assert "Validation loss" in to_latex(no_targets)  # a table without a Target column (it raised KeyError)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AnalysisWarning)
        s = summarize(frame, [5.0], "missing_baseline")
    assert math.isnan(s["speedup"].iloc[0])


# ---------------------------------------------------------------- tables


def test_tables_render_arms_targets_and_escape_latex():
    runs = []
    for seed in (0, 1):
        runs.append(dict(arm="gpt", seed=seed, points=_line(10, 0.01, 0, 801, 100)))
        runs.append(dict(arm="gpt_qknorm", seed=seed,
                         points=[(t, 10 - (0.02 + 0.001 * seed) * t) for t in range(0, 801, 100)]))
    s = summarize(_frame(runs), [6.0, 0.5], "gpt")
    md = to_markdown(s)
    assert "| gpt_qknorm" in md and "baseline" in md and "n.r." in md
    assert "| Target" in md and " 0.5 |" in md and " 6.0 |" in md
    tex = to_latex(s, experiment="my_exp")
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    assert r"gpt\_qknorm" in tex and r"my\_exp" in tex and r"\label{tab:my-exp-summary}" in tex
    assert "gpt_qknorm" not in tex.replace(r"gpt\_qknorm", "")
    assert tex.count(r"\\") >= 1 + len(s)  # header + one line per row


# ---------------------------------------------------------------- import hygiene


def test_importing_analysis_is_light_and_never_imports_torch():
    code = (
        "import sys, analysis, analysis.targets\n"
        "heavy = [m for m in ('matplotlib', 'mlflow', 'torch') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "import analysis.load, analysis.figures, analysis.tables, analysis.report, analysis.cli\n"
        "bad = [m for m in sys.modules\n"
        "       if m == 'torch' or m.split('.')[0] in ('models', 'training')]\n"
        "assert not bad, bad\n"
        "assert callable(analysis.build_report)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
