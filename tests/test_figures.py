"""What the figures say about themselves: labelled log ticks, bands and bars explained, n = 1 stated,
targets as a categorical axis (analysis/figures.py, analysis/diagnostics.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.container import ErrorbarContainer

from analysis.diagnostics import fig_condition_numbers, fig_norms, log_ticks
from analysis.answer_figures import fig_speedup_vs_context, fig_tokens_to_target
from analysis.style import arm_styles, style_context
from training.model_diagnostics import compute_diagnostics


def drawn(fig):
    """The figure drawn once, so tick labels hold their text."""
    (fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)).draw()
    return fig


def labelled_ticks(ax) -> list[str]:
    lo, hi = ax.get_ylim()
    return [t.get_text() for t, v in zip(ax.get_yticklabels(), ax.get_yticks())
            if t.get_text() and lo <= v <= hi]


def notes(fig) -> str:
    return " ".join(t.get_text() for t in fig.texts)


@pytest.mark.parametrize("lo,hi,expected", [
    (1, 1e5, [1, 10, 100, 1e3, 1e4, 1e5]),  # decades when there are enough
    (3, 45, [3, 10, 30]),                    # else 1-3-10
    (40, 700, [50, 100, 200, 500]),          # else 1-2-5
    (45, 140, [50, 75, 100, 125]),           # under a factor 10: round, evenly spaced values
    (67.5, 73.7, [68, 70, 72]),
    (4.9, 5.4, [5.0, 5.2, 5.4]),
])
def test_log_ticks_give_several_labels_on_any_range(lo, hi, expected):
    assert log_ticks(lo, hi) == pytest.approx(expected)


@pytest.fixture(scope="module")
def dists():
    """Diagnostics of an untrained tiny GPT and nGPT: condition numbers within a factor 10 or so, where
    matplotlib's own log locator labels one tick or none."""
    from models import ModelConfig, build_model

    idx = torch.randint(0, 48, (2, 16), generator=torch.Generator().manual_seed(1))
    out = {}
    for kind in ("gpt", "ngpt"):
        torch.manual_seed(0)
        model = build_model(ModelConfig(kind=kind, vocab_size=48, n_layers=2, n_heads=2, n_embd=32,
                                        context_length=16, mlp_hidden=64))
        out[kind] = compute_diagnostics(model, idx).distributions
    return out


@pytest.mark.parametrize("per_head", [False, True])
def test_condition_number_axes_have_several_labelled_ticks(dists, per_head):
    with style_context():
        fig = drawn(fig_condition_numbers(dists, per_head=per_head))
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == (4 if per_head else 7)
    for ax in axes:
        assert ax.get_yscale() == "log"
        assert len(labelled_ticks(ax)) >= 3, (ax.get_title(), labelled_ticks(ax))
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    if per_head:  # the band is explained in the legend and the caption
        assert legend == ["gpt", "ngpt", "band: min..max over heads"]
        assert "line = median over the heads" in notes(fig) and "band = min..max" in notes(fig)
    else:
        assert legend == ["gpt", "ngpt"] and "no band" in notes(fig)


def test_norms_figure_says_what_its_bands_are(dists):
    with style_context():
        fig = drawn(fig_norms(dists))
    text = notes(fig)
    assert "band = \u00b11 s.d. over the tokens" in text and "band = min..max over them" in text
    log_axes = [ax for ax in fig.axes if ax.get_yscale() == "log"]
    assert all(len(labelled_ticks(ax)) >= 3 for ax in log_axes)


def summary(n_seeds: int) -> pd.DataFrame:
    """A summary as analysis.summary.summarize gives it: 3 targets, gpt the baseline; the last target
    reached by ngpt only (gpt censored at 8e5 tokens, so ngpt's speedup there is a lower bound)."""
    rows = []
    for target, (gpt, ngpt) in zip([7.0, 6.5, 6.0], [(2e5, 1e5), (4e5, 2e5), (8e5, 5e5)]):
        for arm, tokens in (("gpt", gpt), ("ngpt", ngpt)):
            several = n_seeds > 1
            censored = arm == "gpt" and target == 6.0
            speed = np.nan if arm == "gpt" else gpt / tokens
            bound = arm == "ngpt" and target == 6.0  # a lower bound: only a lower confidence limit
            rows.append(dict(target=target, arm=arm, is_baseline=arm == "gpt", reached=not censored,
                             n_seeds=n_seeds, n_reached=0 if censored else n_seeds, tokens_to_target=tokens,
                             tokens_to_target_std=0.1 * tokens if several and not censored else np.nan,
                             tokens_to_target_bound="lower" if censored else "", speedup=speed,
                             speedup_ci_low=0.8 * speed if several else np.nan,
                             speedup_ci_high=(np.inf if bound else 1.2 * speed) if several else np.nan,
                             speedup_bound="lower" if bound else ""))
    frame = pd.DataFrame(rows)
    frame.attrs["ci_level"] = 0.95
    return frame


def test_tokens_to_target_with_one_seed_promises_no_error_bars():
    with style_context():
        fig = drawn(fig_tokens_to_target(summary(1), arm_styles(["gpt", "ngpt"], "gpt"), "gpt"))
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["gpt (n = 1 seed)", "ngpt (n = 1 seed)"]
    assert not any(isinstance(c, ErrorbarContainer) for ax in fig.axes for c in ax.containers)
    assert "one seed per arm (n = 1), so no error bars" in notes(fig)
    assert "no interval with one seed" in notes(fig)
    # gpt never reached 6.0: no point, "n.r."; ngpt's speedup there is a lower bound, drawn hollow with "≥"
    tokens_ax, speedup_ax = fig.axes
    assert [t.get_text() for t in tokens_ax.texts] == ["n.r."]
    assert [t.get_text() for t in speedup_ax.texts] == ["\u2265"]
    assert speedup_ax.texts[0].xy[1] == pytest.approx(1.6)
    assert "hollow marker = a bound" in notes(fig)


def test_tokens_to_target_with_seeds_says_what_its_bars_are():
    with style_context():
        fig = drawn(fig_tokens_to_target(summary(3), arm_styles(["gpt", "ngpt"], "gpt"), "gpt"))
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["gpt (n = 3 seeds)", "ngpt (n = 3 seeds)"]
    tokens_ax, speedup_ax = fig.axes
    assert sum(isinstance(c, ErrorbarContainer) for c in tokens_ax.containers) == 2
    assert sum(isinstance(c, ErrorbarContainer) for c in speedup_ax.containers) == 1
    text = notes(fig)
    assert "bars = \u00b11 s.d. over them" in text
    assert "bars = 95% Fieller interval for the ratio of means, paired by seed" in text
    assert "a bound's bar is its one-sided limit only" in text
    # the bound's bar (target 6.0, speedup 1.6, lower limit 1.28) goes from its lower limit up to the point
    bars = next(c for c in speedup_ax.containers if isinstance(c, ErrorbarContainer)).lines[2][0].get_segments()
    assert [v for seg in bars for v in (seg[0][1], seg[1][1])] == pytest.approx([1.6, 2.4, 1.6, 2.4, 1.28, 1.6])
    # the targets are categories: one slot each, labelled by the target, no numeric grid along x
    for ax in (tokens_ax, speedup_ax):
        assert list(ax.get_xticks()) == [0, 1, 2]
        assert [t.get_text() for t in ax.get_xticklabels()] == ["7.0", "6.5", "6.0"]
        assert ax.get_xlim() == (-0.5, 2.5)
        assert not any(line.get_visible() for line in ax.xaxis.get_gridlines())


def test_speedup_vs_context_marks_bounds():
    """A speedup that is a bound (ngpt met the target at the smallest budget at context 64) is drawn hollow
    with its sign, as in the table; an exact one is not."""
    rows = []
    for ctx, bound in ((64, "lower"), (256, "")):
        for target in (8.0, 7.9):
            part = summary(3).iloc[:2].assign(context_length=ctx, target=target)
            part.loc[part["arm"] == "ngpt", "speedup_bound"] = bound if target == 8.0 else ""
            rows.append(part)
    frame = pd.concat(rows, ignore_index=True)
    frame.attrs["ci_level"] = 0.95
    with style_context():
        fig = drawn(fig_speedup_vs_context(frame, arm_styles(["gpt", "ngpt"], "gpt"), "gpt"))
    first, second = fig.axes[:2]
    assert [(t.get_text(), t.xy[0]) for t in first.texts] == [("\u2265", 64.0)]
    assert len(second.texts) == 0
    assert "hollow marker = a bound" in notes(fig)


@pytest.mark.parametrize("seeds", [1, 2])
def test_final_loss_vs_budget_bars_only_with_several_seeds(seeds):
    from analysis.figures import fig_final_loss_vs_budget

    rows = []
    for arm, c in (("gpt", 10.0), ("ngpt", 9.9)):
        for seed in range(seeds):
            for budget in (1_000_000, 2_000_000, 4_000_000):
                rows.append(dict(run_id=f"{arm}-{seed}-{budget}", arm=arm, seed=seed, budget=budget,
                                 context_length=64, step=10, tokens=budget, elapsed_s=1.0, metric="val/loss",
                                 value=c - 0.5 * np.log(budget) + 0.05 * seed))
    with style_context():
        fig = drawn(fig_final_loss_vs_budget(pd.DataFrame(rows), pd.DataFrame(), [2.9],
                                             arm_styles(["gpt", "ngpt"], "gpt")))
    ax = fig.axes[0]
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    if seeds == 1:
        assert not bars and legend == ["gpt (n = 1 seed)", "ngpt (n = 1 seed)"]
        assert "One seed per budget (n = 1), so no bars" in notes(fig)
    else:
        assert len(bars) == 2 and legend == ["gpt (n = 2 seeds)", "ngpt (n = 2 seeds)"]
        assert "bars = min..max over seeds" in notes(fig)


def curves_frame(n_seeds: int, n_evals: int, steps_per_eval: int = 4) -> pd.DataFrame:
    """Validation loss at `n_evals` evaluations and train loss and lr at every step, per arm and seed; each
    seed's seconds differ (another speed), as on a real machine."""
    rows = []
    for arm, drop in (("gpt", 1.0), ("ngpt", 1.3)):
        for seed in range(n_seeds):
            run = f"{arm}-{seed}"
            for step in range((n_evals - 1) * steps_per_eval + 1):
                tokens = 256.0 * step
                common = dict(run_id=run, arm=arm, seed=seed, budget=1e6, context_length=64, step=step,
                              tokens=tokens, elapsed_s=tokens * (0.01 + 0.001 * seed))
                rows.append({**common, "metric": "train/loss", "value": 10 - drop * np.log1p(step) + 0.01 * seed})
                rows.append({**common, "metric": "lr", "value": 1e-3})
                if step % steps_per_eval == 0:
                    rows.append({**common, "metric": "val/loss", "value": 10 - drop * np.log1p(step) + 0.02 * seed})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("n_seeds, n_evals, x, every, says", [
    (1, 21, "tokens", 1, "One seed per arm (n = 1): no band. Markers: the evaluations."),
    (3, 21, "tokens", 1, "Markers: the evaluations."),
    (3, 21, "elapsed_s", 2,  # 61 points: the union of the seeds' evaluation times
     "Markers: one in 2 of the evaluations of every seed (the mean is interpolated between them)."),
    (1, 101, "tokens", 3, "One seed per arm (n = 1): no band. Markers: one in 3 of the evaluations."),
])
def test_validation_curves_mark_the_evaluations(n_seeds, n_evals, x, every, says):
    from analysis.figures import fig_val_loss

    frame = curves_frame(n_seeds, n_evals)
    with style_context():
        fig = drawn(fig_val_loss(frame, [5.0], arm_styles(["gpt", "ngpt"], "gpt"), x=x))
    assert notes(fig) == says
    evaluations = np.sort(frame.loc[(frame["metric"] == "val/loss") & (frame["run_id"] == "gpt-0"), x].to_numpy())
    for line in [ln for ln in fig.axes[0].get_lines() if ln.get_marker() not in (None, "None", "")]:
        xs = line.get_xdata()
        marked = np.asarray(xs)[::line.get_markevery()]
        assert line.get_markevery() == every
        if x == "tokens":  # the markers sit on evaluations: every one of them, or one in `every`
            assert np.array_equal(marked, evaluations[::every])


@pytest.mark.parametrize("n_seeds, legend, says", [
    (1, ["gpt", "ngpt"], "One seed per arm (n = 1): no band."),
    (3, ["gpt (mean of 3 seeds)", "ngpt (mean of 3 seeds)"], "Mean over 3 seeds per arm: no band."),
])
def test_training_loss_figure_says_how_many_seeds_and_what_its_markers_are(n_seeds, legend, says):
    from analysis.figures import fig_train_loss_lr

    with style_context():
        fig = drawn(fig_train_loss_lr(curves_frame(n_seeds, 6), arm_styles(["gpt", "ngpt"], "gpt")))
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == legend
    assert notes(fig) == f"{says}\nLines: the logged steps; markers only tell the arms apart."
