"""The one summary (analysis.summary.summarize): every seed counts, censored seeds make bounds.

Synthetic curves whose answers are known by hand; no MLflow, no plotting.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analysis.summary import answer_metrics, summarize
from analysis.tables import to_latex, to_markdown
from analysis.targets import bootstrap_ci


def _frame(runs):
    """runs: dicts arm, seed, points [(tokens, loss)], optional budget and seconds per token."""
    rows = []
    for i, r in enumerate(runs):
        for step, (tok, loss) in enumerate(r["points"]):
            rows.append(dict(run_id=f"r{i}", arm=r["arm"], seed=r["seed"], budget=r.get("budget", 1000),
                             context_length=64, step=step, tokens=float(tok),
                             elapsed_s=tok * r.get("spt", 0.01), metric="val/loss", value=float(loss)))
    return pd.DataFrame(rows)


def _crossing_curve(cross_at: float | None, last: int, target: float = 5.0, every: int = 100):
    """A straight curve from 10 at 0 tokens that meets `target` at `cross_at` (never if None)."""
    slope = (10.0 - target) / cross_at if cross_at else (10.0 - target - 0.5) / last
    return [(t, 10.0 - slope * t) for t in range(0, last + 1, every)]


def test_one_baseline_seed_censored_makes_the_speedup_a_lower_bound():
    runs = [dict(arm="gpt", seed=0, points=_crossing_curve(400, 1000)),
            dict(arm="gpt", seed=1, points=_crossing_curve(600, 1000)),
            dict(arm="gpt", seed=2, points=_crossing_curve(None, 1000)),  # never: censored at 1000
            *[dict(arm="ngpt", seed=s, points=_crossing_curve(x, 1000)) for s, x in ((0, 100), (1, 200), (2, 300))]]
    s = summarize(_frame(runs), [5.0], "gpt", n_resamples=2000).set_index("arm")
    gpt, ngpt = s.loc["gpt"], s.loc["ngpt"]
    assert (gpt["n_seeds"], gpt["n_reached"], gpt["n_censored"]) == (3, 2, 1)
    assert gpt["tokens_to_target"] == pytest.approx((400 + 600 + 1000) / 3)
    assert gpt["tokens_to_target_bound"] == "lower" and math.isnan(gpt["tokens_to_target_std"])
    assert ngpt["tokens_to_target"] == pytest.approx(200.0) and ngpt["tokens_to_target_bound"] == ""
    assert ngpt["speedup"] == pytest.approx(2000 / 3 / 200) and ngpt["speedup_bound"] == "lower"
    # seconds: the same rule on time (0.01 s per token on both arms)
    assert ngpt["time_speedup"] == pytest.approx(2000 / 3 / 200) and ngpt["time_speedup_bound"] == "lower"
    # the bootstrap resamples all three pairs: its bounds are the min and max of resampled ratios
    pairs = np.array([[400, 100], [600, 200], [1000, 300]], dtype=float)
    assert pairs[:, 0].min() / pairs[:, 1].max() < ngpt["speedup_ci_low"] <= ngpt["speedup"]
    assert ngpt["speedup"] <= ngpt["speedup_ci_high"] <= pairs[:, 0].max() / pairs[:, 1].min()
    md = to_markdown(s.reset_index())
    assert "\u2265 667" in md and "\u2265 3.33 [" in md and "2/3" in md and "censored" in md
    assert "$\\ge$ 3.33" in to_latex(s.reset_index())


def test_one_arm_seed_censored_makes_the_speedup_an_upper_bound():
    runs = [*[dict(arm="gpt", seed=s, points=_crossing_curve(x, 1000)) for s, x in ((0, 400), (1, 600), (2, 800))],
            dict(arm="ngpt", seed=0, points=_crossing_curve(100, 500)),
            dict(arm="ngpt", seed=1, points=_crossing_curve(200, 500)),
            dict(arm="ngpt", seed=2, points=_crossing_curve(None, 500))]  # censored at its last evaluation
    s = summarize(_frame(runs), [5.0], "gpt", n_resamples=500).set_index("arm")
    assert s.loc["ngpt", "tokens_to_target"] == pytest.approx((100 + 200 + 500) / 3)
    assert s.loc["ngpt", "tokens_to_target_bound"] == "lower" and s.loc["ngpt", "n_censored"] == 1
    assert s.loc["ngpt", "speedup"] == pytest.approx(600 / (800 / 3))
    assert s.loc["ngpt", "speedup_bound"] == "upper"
    assert "\u2264 2.25 [" in to_markdown(s.reset_index())


def test_censored_on_both_sides_gives_no_number():
    runs = [dict(arm="gpt", seed=0, points=_crossing_curve(400, 1000)),
            dict(arm="gpt", seed=1, points=_crossing_curve(None, 1000)),
            dict(arm="ngpt", seed=0, points=_crossing_curve(100, 1000)),
            dict(arm="ngpt", seed=1, points=_crossing_curve(None, 1000))]
    s = summarize(_frame(runs), [5.0], "gpt").set_index("arm")
    assert s.loc["ngpt", "speedup_bound"] == "unknown" and math.isnan(s.loc["ngpt", "speedup"])
    assert "| ?" in to_markdown(s.reset_index()).replace("  ", " ") or " ? " in to_markdown(s.reset_index())


def test_budget_mode_censors_at_the_largest_budget():
    """Per seed, final losses at three budgets; gpt seed 2 never gets below 3.0."""
    finals = {("gpt", 0): (6.0, 4.0, 2.0), ("gpt", 1): (6.0, 4.0, 2.0), ("gpt", 2): (6.0, 5.0, 4.0),
              ("ngpt", 0): (4.0, 2.0, 1.0), ("ngpt", 1): (4.0, 2.0, 1.0), ("ngpt", 2): (4.0, 2.0, 1.0)}
    runs = [dict(arm=arm, seed=seed, budget=b, points=[(0, 11.0), (b, loss)])
            for (arm, seed), losses in finals.items() for b, loss in zip((1000, 2000, 4000), losses)]
    s = summarize(_frame(runs), [3.0], "gpt", n_resamples=500).set_index("arm")
    assert set(s["mode"]) == {"budget"}
    cross_gpt = math.sqrt(2000 * 4000)  # 4.0 -> 2.0 between 2000 and 4000: half way in log tokens
    cross_ngpt = math.sqrt(1000 * 2000)
    assert s.loc["gpt", "tokens_to_target"] == pytest.approx((2 * cross_gpt + 4000) / 3)
    assert s.loc["gpt", "tokens_to_target_bound"] == "lower" and s.loc["gpt", "n_censored"] == 1
    assert s.loc["ngpt", "speedup"] == pytest.approx((2 * cross_gpt + 4000) / 3 / cross_ngpt)
    assert s.loc["ngpt", "speedup_bound"] == "lower"


def test_paired_bootstrap_is_what_the_summary_uses():
    """Seeds with different but correlated curves: the ngpt seed k is exactly twice as fast as the gpt seed k.
    Resampled in pairs the ratio is 2 in every resample; resampled independently it is not."""
    gpt_at, ngpt_at = (200, 400, 600, 800), (100, 200, 300, 400)
    runs = [*[dict(arm="gpt", seed=s, points=_crossing_curve(x, 1000)) for s, x in enumerate(gpt_at)],
            *[dict(arm="ngpt", seed=s, points=_crossing_curve(x, 1000)) for s, x in enumerate(ngpt_at)]]
    s = summarize(_frame(runs), [5.0], "gpt", n_resamples=2000).set_index("arm")
    assert s.loc["ngpt", "speedup"] == pytest.approx(2.0)
    assert s.loc["ngpt", "speedup_ci_low"] == pytest.approx(2.0)
    assert s.loc["ngpt", "speedup_ci_high"] == pytest.approx(2.0)
    low, high = bootstrap_ci(gpt_at, ngpt_at, paired=False, n_resamples=2000)
    assert low < 1.6 and high > 2.6  # independent resampling ignores the pairing: a wide interval


def test_answer_metrics_hold_the_summary_numbers():
    runs = [dict(arm="gpt", seed=0, points=_crossing_curve(400, 1000)),
            dict(arm="ngpt", seed=0, points=_crossing_curve(100, 1000))]
    s = summarize(_frame(runs), [5.0, -100.0], "gpt")
    m = answer_metrics(s)
    assert m["result/gpt/final_val_loss"] == pytest.approx(s.loc[s["arm"] == "gpt", "final_val_loss"].iloc[0])
    assert m["result/gpt/tokens_to_target_at_5.0"] == pytest.approx(400.0)
    assert m["result/ngpt/speedup_at_5.0"] == pytest.approx(4.0)
    assert "result/gpt/speedup_at_5.0" not in m  # the baseline has no speedup
    assert "result/ngpt/speedup_at_-100.0" not in m  # unknown (both censored): not formed, not logged
    assert m["result/ngpt/tokens_to_target_at_-100.0"] == pytest.approx(1000.0)  # the censoring point (a bound)
