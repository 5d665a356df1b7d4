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
from analysis.targets import fieller_interval


def _frame(runs):
    """runs: dicts arm, seed, points [(tokens, loss)], optional budget and seconds per token."""
    rows = []
    for i, r in enumerate(runs):
        for step, (tok, loss) in enumerate(r["points"]):
            rows.append(dict(run_id=f"r{i}", arm=r["arm"], seed=r["seed"], budget=r.get("budget", 1000),
                             context_length=64, diverged=r.get("diverged", False), step=step, tokens=float(tok),
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
    s = summarize(_frame(runs), [5.0], "gpt").set_index("arm")
    gpt, ngpt = s.loc["gpt"], s.loc["ngpt"]
    assert (gpt["n_seeds"], gpt["n_reached"], gpt["n_censored"]) == (3, 2, 1)
    assert gpt["tokens_to_target"] == pytest.approx((400 + 600 + 1000) / 3)
    assert gpt["tokens_to_target_bound"] == "lower" and math.isnan(gpt["tokens_to_target_std"])
    assert ngpt["tokens_to_target"] == pytest.approx(200.0) and ngpt["tokens_to_target_bound"] == ""
    assert ngpt["speedup"] == pytest.approx(2000 / 3 / 200) and ngpt["speedup_bound"] == "lower"
    # seconds: the same rule on time (0.01 s per token on both arms)
    assert ngpt["time_speedup"] == pytest.approx(2000 / 3 / 200) and ngpt["time_speedup_bound"] == "lower"
    # a lower bound has only a lower confidence limit: the one-sided Fieller limit over all three pairs
    pairs = np.array([[400, 100], [600, 200], [1000, 300]], dtype=float)
    assert ngpt["speedup_ci_high"] == math.inf
    assert ngpt["speedup_ci_low"] == pytest.approx(fieller_interval(pairs[:, 0], pairs[:, 1], side="lower")[0])
    assert 0 < ngpt["speedup_ci_low"] < ngpt["speedup"]
    md = to_markdown(s.reset_index())
    low = f"{ngpt['speedup_ci_low']:.2f}"
    assert "\u2265 667" in md and f"\u2265 3.33 [{low}, \u221e)" in md and "2/3" in md and "censored" in md
    assert "one-sided limit" in md
    assert f"$\\ge$ 3.33 [{low}, $\\infty$)" in to_latex(s.reset_index())


def test_one_arm_seed_censored_makes_the_speedup_an_upper_bound():
    runs = [*[dict(arm="gpt", seed=s, points=_crossing_curve(x, 1000)) for s, x in ((0, 400), (1, 600), (2, 800))],
            dict(arm="ngpt", seed=0, points=_crossing_curve(100, 250, every=50)),
            dict(arm="ngpt", seed=1, points=_crossing_curve(200, 250, every=50)),
            dict(arm="ngpt", seed=2, points=_crossing_curve(None, 250, every=50))]  # censored at its last evaluation
    s = summarize(_frame(runs), [5.0], "gpt").set_index("arm")
    assert s.loc["ngpt", "tokens_to_target"] == pytest.approx((100 + 200 + 250) / 3)
    assert s.loc["ngpt", "tokens_to_target_bound"] == "lower" and s.loc["ngpt", "n_censored"] == 1
    assert s.loc["ngpt", "speedup"] == pytest.approx(600 / (550 / 3))
    assert s.loc["ngpt", "speedup_bound"] == "upper"
    assert s.loc["ngpt", "speedup_ci_low"] == 0.0  # an upper bound: only an upper confidence limit
    high = fieller_interval([400, 600, 800], [100, 200, 250], side="upper")[1]
    assert s.loc["ngpt", "speedup_ci_high"] == pytest.approx(high) and high > 3.27
    assert f"\u2264 3.27 (0, {high:.2f}]" in to_markdown(s.reset_index())


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
    s = summarize(_frame(runs), [3.0], "gpt").set_index("arm")
    assert set(s["mode"]) == {"budget"}
    cross_gpt = math.sqrt(2000 * 4000)  # 4.0 -> 2.0 between 2000 and 4000: half way in log tokens
    cross_ngpt = math.sqrt(1000 * 2000)
    assert s.loc["gpt", "tokens_to_target"] == pytest.approx((2 * cross_gpt + 4000) / 3)
    assert s.loc["gpt", "tokens_to_target_bound"] == "lower" and s.loc["gpt", "n_censored"] == 1
    assert s.loc["ngpt", "speedup"] == pytest.approx((2 * cross_gpt + 4000) / 3 / cross_ngpt)
    assert s.loc["ngpt", "speedup_bound"] == "lower"


def test_the_interval_pairs_seeds():
    """Seeds with different but correlated curves: the ngpt seed k is exactly twice as fast as the gpt seed k.
    Paired, the ratio is 2 in every seed and the interval is that point; with no seed in common the same
    numbers give a ratio and no interval (an unpaired interval from four seeds would be a guess)."""
    gpt_at, ngpt_at = (200, 400, 600, 800), (100, 200, 300, 400)
    runs = [*[dict(arm="gpt", seed=s, points=_crossing_curve(x, 1000)) for s, x in enumerate(gpt_at)],
            *[dict(arm="ngpt", seed=s, points=_crossing_curve(x, 1000)) for s, x in enumerate(ngpt_at)]]
    s = summarize(_frame(runs), [5.0], "gpt").set_index("arm")
    assert s.loc["ngpt", "speedup"] == pytest.approx(2.0)
    assert s.loc["ngpt", "speedup_ci_low"] == pytest.approx(2.0)
    assert s.loc["ngpt", "speedup_ci_high"] == pytest.approx(2.0)
    for r in runs[4:]:
        r["seed"] += 10
    u = summarize(_frame(runs), [5.0], "gpt").set_index("arm")
    assert u.loc["ngpt", "speedup"] == pytest.approx(2.0)
    assert math.isnan(u.loc["ngpt", "speedup_ci_low"]) and math.isnan(u.loc["ngpt", "speedup_ci_high"])


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


def test_a_crossing_at_zero_tokens_enters_the_point_and_the_interval_alike():
    """An arm already at the target at its step-0 evaluation needs 0 tokens (fine-tuning): that seed stays in
    the ratio of means and in its interval (the bootstrap used to drop it from the interval only, and printed
    [1.42, 1.49] around a point of 2.25); one such seed alone is an infinite speedup, not "n.r."."""
    def reaching(at):  # a curve that meets 5.0 at `at` tokens (at 0: already below it before training)
        return [(0, 4.0), (500, 3.0)] if at == 0 else [(0, 10.0), *_crossing_curve(at, 2000)[1:]]

    gpt_at, ngpt_at = (1500, 1333, 1444), (0, 938, 968)
    runs = [*[dict(arm="gpt", seed=s, points=reaching(x)) for s, x in enumerate(gpt_at)],
            *[dict(arm="ngpt", seed=s, points=reaching(x)) for s, x in enumerate(ngpt_at)]]
    row = summarize(_frame(runs), [5.0], "gpt").set_index("arm").loc["ngpt"]
    assert row["tokens_to_target"] == pytest.approx(np.mean(ngpt_at)) and row["n_reached"] == 3
    assert row["speedup"] == pytest.approx(np.mean(gpt_at) / np.mean(ngpt_at)) and row["speedup_bound"] == ""
    assert row["speedup_ci_low"] <= row["speedup"] <= row["speedup_ci_high"]
    assert (row["speedup_ci_low"], row["speedup_ci_high"]) == pytest.approx(fieller_interval(gpt_at, ngpt_at))

    lone = summarize(_frame([runs[0], runs[3]]), [5.0], "gpt")
    assert lone.set_index("arm").loc["ngpt", "speedup"] == math.inf
    md = to_markdown(lone)
    assert " \u221e |" in md and "n.r." not in md and "needed 0 tokens" in md


def _budget_runs(finals, budgets=(1000, 2000, 4000), diverged=()):
    """Budget-mode runs: finals[(arm, seed)] = final loss per budget; a run in `diverged` logged its curve
    up to half its budget and stopped."""
    runs = []
    for (arm, seed), losses in finals.items():
        for b, loss in zip(budgets, losses):
            stopped = (arm, seed, b) in diverged
            points = [(0, 11.0), (b // 2, 9.0)] if stopped else [(0, 11.0), (b, loss)]
            runs.append(dict(arm=arm, seed=seed, budget=b, points=points, diverged=stopped))
    return runs


def test_one_arm_at_first_and_censored_is_unknown_not_first_budget():
    """ngpt seed 0 is already at the target at the smallest budget, seed 1 never reaches it: its mean has
    bounds in both directions, and the cell says "?", not that both arms met the target at the first budget."""
    finals = {("gpt", 0): (6.0, 4.0, 2.0), ("gpt", 1): (6.0, 4.0, 2.0),
              ("ngpt", 0): (2.0, 1.5, 1.0), ("ngpt", 1): (6.0, 5.0, 4.0)}
    s = summarize(_frame(_budget_runs(finals)), [3.0], "gpt")
    ngpt = s.set_index("arm").loc["ngpt"]
    assert (ngpt["n_at_first"], ngpt["n_censored"], ngpt["speedup_bound"]) == (1, 1, "unknown")
    md = to_markdown(s)
    assert "< 1st budget" not in md
    cells = [c.strip() for c in md.splitlines()[3].split("|")]
    assert cells[cells.index("ngpt") + 5:cells.index("ngpt") + 7] == ["?", "?"]


def test_a_diverged_seed_counts_as_censored_and_the_table_says_so():
    """Budget mode, ngpt seed 2's run at the largest budget diverged: for a target its other budgets reach it
    is exact; for one only the largest budget could reach it is censored there, never dropped."""
    finals = {**{("gpt", s): (6.5, 5.0, 3.0) for s in range(3)}, **{("ngpt", s): (5.0, 4.0, 3.0) for s in range(3)}}
    frame = _frame(_budget_runs(finals, diverged={("ngpt", 2, 4000)}))
    s = summarize(frame, [4.5, 3.5], "gpt").set_index(["target", "arm"])
    at45, at35 = s.loc[(4.5, "ngpt")], s.loc[(3.5, "ngpt")]
    assert (at45["n_seeds"], at45["n_reached"], at45["n_censored"], at45["n_diverged"]) == (3, 3, 0, 1)
    assert at45["tokens_to_target"] == pytest.approx(math.sqrt(1000 * 2000)) and at45["speedup_bound"] == ""
    assert at45["seconds_to_target_bound"] == "" and at45["time_speedup_bound"] == ""  # ordered by budget
    assert (at35["n_seeds"], at35["n_reached"], at35["n_censored"], at35["n_diverged"]) == (3, 2, 1, 1)
    assert at35["tokens_to_target"] == pytest.approx((2 * math.sqrt(2000 * 4000) + 4000) / 3)
    assert at35["tokens_to_target_bound"] == "lower" and at35["speedup_bound"] == "upper"
    assert at35["final_val_loss"] == math.inf  # a mean over seeds with one diverged
    md = to_markdown(s.reset_index())
    assert "2/3 (1 diverged)" in md and "3/3 (1 diverged)" in md and " diverged | " in md
    assert "non-finite training loss" in md


def test_a_diverged_budget_below_the_crossing_leaves_an_upper_bound():
    """The run at the middle budget diverged and the largest one reached the target: the crossing lies
    between them, so the largest budget is an upper bound (no interpolation across a diverged run)."""
    finals = {("gpt", 0): (6.0, 5.0, 4.0), ("ngpt", 0): (6.0, 5.0, 3.0)}
    frame = _frame(_budget_runs(finals, diverged={("ngpt", 0, 2000)}))
    row = summarize(frame, [3.5], "gpt").set_index("arm").loc["ngpt"]
    assert (row["tokens_to_target"], row["tokens_to_target_bound"], row["n_at_first"]) == (4000, "upper", 1)
    assert row["n_diverged"] == 1
