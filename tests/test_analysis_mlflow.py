"""analysis against a real (temporary) MLflow store laid out the way the runner writes it.

One sqlite store per module (MLflow's sqlite initialisation costs a few seconds); synthetic runs
with known curves are logged with ``MlflowClient.log_batch``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mlflow")

from analysis.errors import (  # noqa: E402
    AnalysisWarning,
    NoRunsError,
    TrackingStoreError,
    UnknownExperimentError,
    UnknownParentRunError,
)

REPO = Path(__file__).resolve().parents[1]

# curve experiment: val loss linear in tokens, L(t) = max(10 - k t, 3.5)
K_GPT = {0: 4e-6, 1: 4.4e-6, 2: 3.6e-6}
NOISE = {0: 1.0, 1: 1.04, 2: 0.97}  # ngpt's per-seed deviation from an exact 2x speedup
K_NGPT = {s: 2 * K_GPT[s] * NOISE[s] for s in K_GPT}
TPS = {"gpt": 1.0e5, "ngpt": 0.8e5}  # tokens per second of training
FLOOR = 3.5
CURVE_TARGETS = [6.0, 5.0, 3.0]  # 3.0 is below the floor: never reached
TOKENS_PER_STEP = 25_000  # "curves" experiment; the budget sweep uses 100_000


def _log_child(client, exp_id, parent_id, *, arm, seed, budget, ctx, val_every, loss_fn, tps,
               status="FINISHED", with_val=True, start_time=None, tokens_per_step=TOKENS_PER_STEP,
               lr=0.001, extra_tags=None, extra_params=None, last_step=None):
    from mlflow.entities import Metric, Param

    tags = {"mlflow.parentRunId": parent_id, "datgpt.role": "child", "datgpt.arm": arm,
            "datgpt.seed": str(seed), "datgpt.model_kind": "ngpt" if arm == "ngpt" else "gpt",
            **(extra_tags or {})}
    run = client.create_run(exp_id, tags=tags, start_time=start_time)
    rid = run.info.run_id
    client.log_batch(rid, params=[Param("train.tokens", str(budget)),
                                  Param("model.context_length", str(ctx)),
                                  Param("optim.lr", str(lr)), Param("model.n_layers", "2"),
                                  *(Param(k, str(v)) for k, v in (extra_params or {}).items())])
    ts = int(time.time() * 1000)
    metrics = []
    n_steps = budget // tokens_per_step
    for step in range(n_steps + 1 if last_step is None else last_step + 1):
        tok = step * tokens_per_step
        loss = loss_fn(tok)
        metrics += [Metric("tokens", tok, ts, step), Metric("time/elapsed_s", tok / tps, ts, step)]
        if step > 0:
            metrics += [Metric("train/loss", loss + 0.05, ts, step),
                        Metric("lr", 1e-3 * min(1.0, step / 10), ts, step),
                        Metric("throughput/tokens_per_s", tps, ts, step),
                        Metric("time/step_ms", 1000 * tokens_per_step / tps, ts, step)]
        if with_val and (tok % val_every == 0 or step == n_steps):
            metrics.append(Metric("val/loss", loss, ts, step))
    for i in range(0, len(metrics), 1000):
        client.log_batch(rid, metrics=metrics[i:i + 1000])
    client.set_terminated(rid, status)
    return rid


def _log_parent(client, exp_id, *, targets, baseline="gpt", start_time=None):
    from mlflow.entities import Param

    run = client.create_run(exp_id, tags={
        "datgpt.role": "parent", "datgpt.targets": json.dumps(targets),
        "datgpt.baseline_arm": baseline, "datgpt.config_hash": "cafe",
        "datgpt.git_commit": "0123456789abcdef"}, start_time=start_time)
    client.log_batch(run.info.run_id, params=[Param("name", "synthetic")])
    return run.info.run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    ids = {}
    t0 = int(time.time() * 1000) - 3_600_000

    # --- "curves": curve mode, 3 seeds, uneven evaluation grids, a failed run, a run without val
    exp = client.create_experiment("curves")
    old_parent = _log_parent(client, exp, targets=CURVE_TARGETS, start_time=t0)
    # an older invocation's gpt seed 0 with a different (wrong) curve: superseded by the newer one
    ids["old_gpt0"] = _log_child(client, exp, old_parent, arm="gpt", seed=0, budget=1_500_000,
                                 ctx=64, val_every=100_000, tps=TPS["gpt"], start_time=t0 + 1,
                                 loss_fn=lambda t: max(10 - 1e-6 * t, FLOOR))
    parent = _log_parent(client, exp, targets=CURVE_TARGETS, start_time=t0 + 60_000)
    ids["curves_parent"], ids["curves_old_parent"] = parent, old_parent
    for seed in K_GPT:
        _log_child(client, exp, parent, arm="gpt", seed=seed, budget=1_500_000, ctx=64,
                   val_every=100_000, tps=TPS["gpt"], start_time=t0 + 61_000 + seed,
                   loss_fn=lambda t, k=K_GPT[seed]: max(10 - k * t, FLOOR))
        _log_child(client, exp, parent, arm="ngpt", seed=seed, budget=1_500_000, ctx=64,
                   val_every=75_000, tps=TPS["ngpt"], start_time=t0 + 62_000 + seed,
                   loss_fn=lambda t, k=K_NGPT[seed]: max(10 - k * t, FLOOR))
    ids["failed"] = _log_child(client, exp, parent, arm="gpt_qknorm", seed=0, budget=1_500_000,
                               ctx=64, val_every=100_000, tps=1e5, status="FAILED",
                               loss_fn=lambda t: 10 - 5e-6 * t)
    ids["no_val"] = _log_child(client, exp, parent, arm="gpt_qknorm", seed=1, budget=1_500_000,
                               ctx=64, val_every=100_000, tps=1e5, with_val=False,
                               loss_fn=lambda t: 10 - 5e-6 * t)
    client.set_terminated(parent)

    # --- "sweep": budget mode at 3 budgets x 2 context lengths, final loss c - 0.5 ln B
    exp = client.create_experiment("sweep")
    parent = _log_parent(client, exp, targets=[2.9, 2.0])
    ids["sweep_parent"] = parent
    for ctx, c_ngpt in ((128, 9.95), (256, 9.9)):
        for arm, c in (("gpt", 10.0), ("ngpt", c_ngpt)):
            for budget in (1_000_000, 2_000_000, 4_000_000):
                final = c - 0.5 * math.log(budget)
                _log_child(client, exp, parent, arm=arm, seed=0, budget=budget, ctx=ctx,
                           val_every=500_000, tps=TPS[arm], tokens_per_step=100_000,
                           loss_fn=lambda t, b=budget, f=final: 11.0 + (f - 11.0) * t / b)
    client.set_terminated(parent)

    # --- "series": a context-length series as experiments/cpu_context_*.yaml write it: one invocation
    # (parent) per context length, each with its own lr search at the middle budget (seed 0) whose
    # choice differs between the lengths, then 3 seeds x 3 budgets per arm with the chosen rate
    exp = client.create_experiment("series")
    for i, ctx in enumerate(SERIES_CTX):
        parent = _log_parent(client, exp, targets=SERIES_TARGETS, start_time=t0 + 100_000 * (i + 1))
        for arm in ("gpt", "ngpt"):
            best = SERIES_BEST_LR[(ctx, arm)]
            for lr in SERIES_GRID[arm]:  # search runs; the chosen one is also the seed-0 main run
                final = _series_final(ctx, arm, 0, SERIES_BUDGETS[1]) + (0.0 if lr == best else 0.3)
                _log_child(client, exp, parent, arm=arm, seed=0, budget=SERIES_BUDGETS[1], ctx=ctx,
                           val_every=50_000, tps=TPS[arm], tokens_per_step=50_000, lr=lr,
                           extra_tags={"datgpt.sweep_stage": "lr_search",
                                       "datgpt.lr_selected": str(lr == best).lower()},
                           loss_fn=lambda t, f=final, b=SERIES_BUDGETS[1]: 11.0 + (f - 11.0) * t / b)
            for seed in (0, 1, 2):
                for budget in SERIES_BUDGETS:
                    if seed == 0 and budget == SERIES_BUDGETS[1]:
                        continue  # the chosen search run is this unit
                    final = _series_final(ctx, arm, seed, budget)
                    _log_child(client, exp, parent, arm=arm, seed=seed, budget=budget, ctx=ctx,
                               val_every=50_000, tps=TPS[arm], tokens_per_step=50_000, lr=best,
                               extra_tags={"datgpt.sweep_stage": "main"},
                               loss_fn=lambda t, f=final, b=budget: 11.0 + (f - 11.0) * t / b)
        client.set_terminated(parent)

    # --- "diverged": curve mode as "curves", but ngpt seed 2 diverged at 600 k tokens (the runner marks the run
    # FAILED with a datgpt.failure tag), after crossing 6.0 (at 573 k) and before 5.0 (at 716 k); and an lr
    # search unit that diverged and was not chosen (it only drops out of the choice)
    exp = client.create_experiment("diverged")
    parent = _log_parent(client, exp, targets=[6.0, 5.0])
    for seed in K_GPT:
        _log_child(client, exp, parent, arm="gpt", seed=seed, budget=1_500_000, ctx=64, val_every=100_000,
                   tps=TPS["gpt"], loss_fn=lambda t, k=K_GPT[seed]: max(10 - k * t, FLOOR))
        bad = seed == 2
        ids[f"diverged_ngpt{seed}"] = _log_child(
            client, exp, parent, arm="ngpt", seed=seed, budget=1_500_000, ctx=64, val_every=75_000,
            tps=TPS["ngpt"], loss_fn=lambda t, k=K_NGPT[seed]: max(10 - k * t, FLOOR),
            status="FAILED" if bad else "FINISHED", last_step=600_000 // TOKENS_PER_STEP if bad else None,
            extra_tags={"datgpt.failure": "ngpt seed 2: training loss is nan at step 25"} if bad else None)
    ids["diverged_search"] = _log_child(
        client, exp, parent, arm="ngpt", seed=0, budget=1_500_000, ctx=64, val_every=75_000, tps=TPS["ngpt"],
        lr=1.0, status="FAILED", last_step=4, loss_fn=lambda t: 10.0,
        extra_tags={"datgpt.failure": "ngpt seed 0: training loss is inf at step 4",
                    "datgpt.sweep_stage": "lr_search", "datgpt.lr_selected": "false"})
    client.set_terminated(parent)

    # --- "as_trained": budget mode, budgets of 1,000 / 2,000 / 4,000 tokens at 300 tokens per step: the runs
    # trained 900 / 1,800 / 3,900 tokens (derived.tokens_trained, as the runner logs it); final loss
    # c - 0.5 ln(tokens trained)
    exp = client.create_experiment("as_trained")
    parent = _log_parent(client, exp, targets=AS_TRAINED_TARGETS)
    for arm, c in AS_TRAINED_C.items():
        for budget in (1000, 2000, 4000):
            trained = budget // 300 * 300
            final = c - 0.5 * math.log(trained)
            _log_child(client, exp, parent, arm=arm, seed=0, budget=budget, ctx=64, val_every=300,
                       tps=TPS[arm], tokens_per_step=300, extra_params={"derived.tokens_trained": trained},
                       loss_fn=lambda t, f=final, b=trained: 11.0 + (f - 11.0) * t / b)
    client.set_terminated(parent)

    client.create_experiment("empty")
    return dict(uri=uri, root=root, **ids)


AS_TRAINED_C = {"gpt": 10.0, "ngpt": 9.9}
AS_TRAINED_TARGETS = [6.4, 5.0]  # 6.4: ngpt crosses it between 1,800 and 3,900 tokens; 5.0: nobody


SERIES_CTX = (64, 256, 1024)
SERIES_BUDGETS = (100_000, 200_000, 400_000)
SERIES_TARGETS = [3.85]
SERIES_GRID = {"gpt": (1e-3, 2e-3, 4e-3), "ngpt": (1e-2, 2e-2, 4e-2)}
SERIES_BEST_LR = {(64, "gpt"): 1e-3, (256, "gpt"): 2e-3, (1024, "gpt"): 2e-3,
                  (64, "ngpt"): 2e-2, (256, "ngpt"): 2e-2, (1024, "ngpt"): 4e-2}
SERIES_SHIFT = {64: 0.1, 256: 0.2, 1024: 0.4}  # nGPT's log-token head start: speedup exp(shift / 0.5)
SERIES_SEED = {0: 0.0, 1: 0.01, 2: -0.01}


def _series_final(ctx, arm, seed, budget):
    """Final loss 10 - 0.5 ln B (+ per-seed noise; nGPT shifted down), as the "sweep" experiment."""
    return 10.0 - 0.5 * math.log(budget) - (SERIES_SHIFT[ctx] if arm == "ngpt" else 0.0) + SERIES_SEED[seed]


@pytest.fixture()
def env(store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["uri"])
    return store


def _t_star(k, target):
    return (10 - target) / k


def _load(store, name="curves", **kw):
    from analysis.load import load_experiment

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AnalysisWarning)
        return load_experiment(name, tracking_uri=store["uri"], **kw)


# ---------------------------------------------------------------- loading


def test_tidy_frame_columns_types_and_joins(store):
    data = _load(store)
    f = data.frame
    assert list(f.columns) == ["experiment", "parent_run_id", "run_id", "arm", "seed", "budget",
                               "context_length", "diverged", "step", "tokens", "elapsed_s", "metric", "value"]
    assert not f["diverged"].any()
    assert str(f["seed"].dtype) == "Int64" and str(f["budget"].dtype) == "Int64"
    assert set(f["arm"]) == {"gpt", "ngpt"}
    assert set(f["seed"]) == {0, 1, 2}
    assert set(f["budget"]) == {1_500_000}
    assert set(f["context_length"]) == {64}
    assert set(f["metric"]) == {"val/loss", "train/loss", "lr", "throughput/tokens_per_s",
                                "time/step_ms"}
    # tokens / elapsed joined by step
    assert np.allclose(f["tokens"], f["step"] * TOKENS_PER_STEP)
    ngpt = f[f["arm"] == "ngpt"]
    assert np.allclose(ngpt["elapsed_s"], ngpt["tokens"] / TPS["ngpt"])
    # full history: every step of train/loss, val/loss at step 0 and on the arm's grid
    one = f[(f["arm"] == "gpt") & (f["seed"] == 1)]
    assert len(one[one["metric"] == "train/loss"]) == 1_500_000 // TOKENS_PER_STEP
    assert list(one[one["metric"] == "val/loss"]["tokens"]) == [float(t) for t in
                                                                range(0, 1_500_001, 100_000)]
    assert data.targets == CURVE_TARGETS and data.baseline_arm == "gpt"
    assert data.arms == ["gpt", "ngpt"]
    assert len(data.runs) == 6


def test_skipped_runs_are_warned_by_name(store):
    from analysis.load import load_experiment

    with pytest.warns(AnalysisWarning) as rec:
        data = load_experiment("curves", tracking_uri=store["uri"])
    text = "\n".join(str(w.message) for w in rec)
    assert store["no_val"] in text and "val/loss" in text
    assert store["failed"] in text and "FAILED" in text
    assert store["old_gpt0"] in text and "superseded" in text
    skipped = dict(data.skipped)
    assert {store["no_val"], store["failed"], store["old_gpt0"]} <= set(skipped)
    assert store["old_gpt0"] not in set(data.frame["run_id"])


def test_include_unfinished_keeps_failed_run(store):
    data = _load(store, include_unfinished=True)
    assert "gpt_qknorm" in set(data.frame["arm"])
    assert store["no_val"] not in set(data.frame["run_id"])  # still no val/loss


def test_parent_selection(store):
    old = _load(store, parent_run_id=store["curves_old_parent"])
    assert set(old.frame["run_id"]) == {store["old_gpt0"]}
    latest = _load(store, parent_run_id="latest")
    assert set(latest.runs["parent_run_id"]) == {store["curves_parent"]}
    prefix = _load(store, parent_run_id=store["curves_parent"][:12])
    assert len(prefix.runs) == 6
    with pytest.raises(UnknownParentRunError, match="parent runs"):
        _load(store, parent_run_id="f" * 32)


def test_unknown_experiment_lists_existing(store):
    with pytest.raises(UnknownExperimentError) as err:
        _load(store, name="nope")
    msg = str(err.value)
    assert "'nope'" in msg and "'curves'" in msg and "'sweep'" in msg
    assert {"curves", "sweep", "empty"} <= set(err.value.available)
    assert isinstance(err.value, LookupError)


def test_no_runs_and_missing_store(store, tmp_path):
    with pytest.raises(NoRunsError):
        _load(store, name="empty")
    from analysis.load import load_experiment

    with pytest.raises(TrackingStoreError, match="no MLflow database"):
        load_experiment("curves", tracking_uri=f"sqlite:///{tmp_path}/missing.db")
    assert not (tmp_path / "missing.db").exists()


# ---------------------------------------------------------------- summary from MLflow


def test_curve_mode_summary_matches_analytic(store):
    from analysis.summary import summarize

    data = _load(store)
    s = summarize(data.frame, data.targets, data.baseline_arm)
    s = s.set_index(["target", "arm"])
    for target in (6.0, 5.0):
        g = [_t_star(K_GPT[k], target) for k in K_GPT]
        n = [_t_star(K_NGPT[k], target) for k in K_GPT]
        assert s.loc[(target, "gpt"), "tokens_to_target"] == pytest.approx(np.mean(g))
        assert s.loc[(target, "ngpt"), "tokens_to_target"] == pytest.approx(np.mean(n))
        assert s.loc[(target, "ngpt"), "seconds_to_target"] == pytest.approx(
            np.mean(n) / TPS["ngpt"])
        true_speedup = np.mean(g) / np.mean(n)
        row = s.loc[(target, "ngpt")]
        assert row["speedup"] == pytest.approx(true_speedup)
        assert row["speedup_ci_low"] <= true_speedup <= row["speedup_ci_high"]
        assert row["speedup_ci_low"] <= 2.0 <= row["speedup_ci_high"]
        assert row["speedup_ci_high"] - row["speedup_ci_low"] < 0.4  # 3 seeds: t = 4.30 on 2 degrees of freedom
        assert row["time_speedup"] == pytest.approx(
            (np.mean(g) / TPS["gpt"]) / (np.mean(n) / TPS["ngpt"]))
        assert row["n_seeds"] == 3 and row["n_reached"] == 3 and row["reached"]
    # 3.0 is below the loss floor: not reached, every seed censored at its last evaluation (1.5 M tokens)
    for arm in ("gpt", "ngpt"):
        row = s.loc[(3.0, arm)]
        assert not row["reached"] and row["n_reached"] == 0 and row["n_censored"] == 3
        assert row["tokens_to_target"] == 1_500_000 and row["tokens_to_target_bound"] == "lower"
    assert s.loc[(3.0, "ngpt"), "speedup_bound"] == "unknown" and math.isnan(s.loc[(3.0, "ngpt"), "speedup"])
    finals = [max(10 - K_GPT[k] * 1_500_000, FLOOR) for k in K_GPT]
    assert s.loc[(6.0, "gpt"), "final_val_loss"] == pytest.approx(np.mean(finals))
    assert s.loc[(6.0, "gpt"), "best_val_loss"] == pytest.approx(np.mean(finals))


def test_budget_mode_summary_from_mlflow(store):
    from analysis.summary import summarize

    data = _load(store, name="sweep")
    s = summarize(data.frame, data.targets, data.baseline_arm).set_index(
        ["context_length", "target", "arm"])
    assert set(s["mode"]) == {"budget"}
    assert s.loc[(128, 2.9, "gpt"), "tokens_to_target"] == pytest.approx(math.exp(14.2))
    assert s.loc[(128, 2.9, "ngpt"), "tokens_to_target"] == pytest.approx(math.exp(14.1))
    assert s.loc[(256, 2.9, "ngpt"), "tokens_to_target"] == pytest.approx(math.exp(14.0))
    assert s.loc[(128, 2.9, "ngpt"), "speedup"] == pytest.approx(math.exp(0.1))
    assert s.loc[(256, 2.9, "ngpt"), "speedup"] == pytest.approx(math.exp(0.2))
    # budget mode on wall-clock: final elapsed = budget / tps, also log-interpolated
    assert s.loc[(128, 2.9, "gpt"), "seconds_to_target"] == pytest.approx(
        math.exp(14.2) / TPS["gpt"])
    assert not s.loc[(128, 2.0, "gpt"), "reached"]


# ---------------------------------------------------------------- report / CLI


def test_cli_figures_writes_every_file(env, tmp_path, capsys):
    from analysis.cli import main

    out = tmp_path / "out"
    rc = main(["figures", "--experiment", "curves", "--out", str(out)])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    for stem in ("val_loss_vs_tokens", "val_loss_vs_time", "tokens_to_target",
                 "train_loss_lr_vs_tokens"):
        png, pdf = out / f"{stem}.png", out / f"{stem}.pdf"
        assert png.stat().st_size > 10_000, stem
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert pdf.read_bytes()[:5] == b"%PDF-"
    assert not (out / "final_loss_vs_budget.png").exists()  # curve mode only
    assert "skipped figure final_loss_vs_budget" in cap.out
    assert "skipped figure speedup_vs_context_length" in cap.out
    for ext in ("csv", "md", "tex"):
        text = (out / f"summary.{ext}").read_text()
        assert "gpt" in text and "ngpt" in text, ext
    md = (out / "summary.md").read_text()
    assert " 6.0 |" in md and " 5.0 |" in md and " 3.0 |" in md and "n.r." in md
    csv = (out / "summary.csv").read_text().splitlines()
    assert csv[0].startswith("context_length,target,arm") and len(csv) == 1 + 6
    assert "6.0" in (out / "summary.csv").read_text()
    report = json.loads((out / "report.json").read_text())
    assert report["targets"] == CURVE_TARGETS and report["baseline_arm"] == "gpt"
    # the summary table is printed, paths are listed, skipped runs are warned on stderr
    assert "| ngpt" in cap.out and str(out / "summary.tex") in cap.out
    assert f"warning: skipping run {env['no_val']}" in cap.err
    assert not list(tmp_path.glob(".out.tmp-*"))  # temporary folder cleaned up


def test_build_report_budget_sweep_all_figures(env, tmp_path):
    from analysis import build_report

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AnalysisWarning)
        report = build_report("sweep", tmp_path / "rep", parent_run_id=env["sweep_parent"])
    names = {p.name for p in report.files}
    for stem in ("val_loss_vs_tokens_ctx128", "val_loss_vs_tokens_ctx256",
                 "tokens_to_target_ctx128", "final_loss_vs_budget_ctx128",
                 "final_loss_vs_budget_ctx256", "speedup_vs_context_length",
                 "train_loss_lr_vs_tokens_ctx256"):
        assert f"{stem}.png" in names and f"{stem}.pdf" in names, stem
    assert {"summary.csv", "summary.md", "summary.tex", "report.json"} <= names
    assert all(p.exists() and p.parent == tmp_path / "rep" for p in report.files)
    assert report.skipped_figures == []
    assert list(report.summary["context_length"].unique()) == [128, 256]
    assert "Context" in (tmp_path / "rep" / "summary.md").read_text()


def test_cli_summary_formats(env, capsys):
    from analysis.cli import main

    assert main(["summary", "-e", "sweep", "--format", "csv"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("context_length,target,arm")
    assert main(["summary", "-e", "sweep", "--format", "latex", "--targets", "2.9"]) == 0
    out = capsys.readouterr().out
    assert r"\toprule" in out and "2.9" in out and "2.0 " not in out
    assert main(["summary", "-e", "sweep", "--mode", "curve", "--baseline", "ngpt"]) == 0
    out = capsys.readouterr().out
    assert "baseline" in out and "curve mode" in out


def test_cli_errors_are_one_line_exit_2(env, tmp_path, capsys):
    from analysis.cli import main

    out = tmp_path / "never"
    assert main(["figures", "-e", "nope", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown experiment 'nope'" in err and "'curves'" in err
    assert not out.exists()
    assert main(["figures", "-e", "curves", "--baseline", "bert", "--out", str(out)]) == 2
    assert "unknown baseline arm 'bert'" in capsys.readouterr().err
    assert main(["summary", "-e", "curves", "--parent", "0" * 32]) == 2
    assert "parent run" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["figures", "-e", "curves", "--ci-level", "abc"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--ci-level" in err
    assert not out.exists()


def test_baseline_option_settles_parents_that_disagree(tmp_path, capsys):
    """A --arms gpt_qk invocation tags its parent with baseline gpt_qk; --baseline gpt then decides, without
    the warning that the parents disagree (which is given when nothing decides)."""
    from mlflow.tracking import MlflowClient

    from analysis.cli import main

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("two_passes")
    t0 = int(time.time() * 1000) - 60_000
    for i, (arms, baseline) in enumerate(((("gpt", "ngpt"), "gpt"), (("gpt_qk",), "gpt_qk"))):
        parent = _log_parent(client, exp, targets=[9.0], baseline=baseline, start_time=t0 + 10_000 * i)
        for arm in arms:
            _log_child(client, exp, parent, arm=arm, seed=0, budget=100_000, ctx=64, val_every=25_000,
                       tps=TPS.get(arm, 1e5), start_time=t0 + 10_000 * i + 1,
                       loss_fn=lambda t, k={"gpt": 2e-5, "gpt_qk": 2.5e-5, "ngpt": 4e-5}[arm]: 10 - k * t)
        client.set_terminated(parent)
    args = ["summary", "-e", "two_passes", "--tracking-uri", uri, "--format", "csv"]
    assert main(args + ["--baseline", "gpt"]) == 0
    out = capsys.readouterr()
    assert "disagree" not in out.err
    import io

    import pandas as pd

    rows = pd.read_csv(io.StringIO(out.out)).set_index("arm")
    assert bool(rows.loc["gpt", "is_baseline"]) and rows.loc["ngpt", "speedup"] == pytest.approx(2.0)
    assert main(args) == 0
    assert "parent runs disagree on the baseline arm ['gpt', 'gpt_qk']; using 'gpt_qk'" in capsys.readouterr().err


def test_cli_subprocess_unknown_experiment(store, tmp_path):
    env = dict(os.environ, MLFLOW_TRACKING_URI=store["uri"], PYTHONPATH=str(REPO))
    res = subprocess.run([sys.executable, "-m", "analysis", "figures", "--experiment", "nope"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "unknown experiment 'nope'" in lines[0] and "curves" in lines[0]
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "figures").exists() and not (tmp_path / "mlflow.db").exists()


def test_cli_missing_default_store_is_an_error_not_a_new_db(tmp_path, monkeypatch, capsys):
    from analysis.cli import main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["summary", "-e", "x"]) == 2
    assert "no MLflow database" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists()


def test_cli_list(env, capsys):
    from analysis.cli import main

    assert main(["list"]) == 0
    assert {"curves", "sweep", "empty"} <= set(capsys.readouterr().out.split())
    assert main(["list", "-e", "curves"]) == 0
    out = capsys.readouterr().out
    assert env["curves_parent"] in out and env["curves_old_parent"] in out


def test_custom_figure_example(env, tmp_path, capsys):
    from analysis.custom_figure import main

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AnalysisWarning)
        assert main(["--experiment", "curves", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "custom_val_loss_per_seed_vs_time.png").stat().st_size > 10_000
    assert (tmp_path / "custom_val_loss_per_seed_vs_time.pdf").exists()


# ---------------------------------------------------------------- a context-length series (issue #18)


def test_series_lr_search_is_per_context_length(store):
    """Three invocations, one per context length, each with its own search: the analysis keeps the
    searches apart (the newest run of an (arm, budget, lr, seed) used to stand for all lengths)."""
    from analysis.sweeps import edge_warnings

    data = _load(store, name="series")
    t = data.lr_search
    assert list(t.columns[:2]) == ["context_length", "arm"]
    assert len(t) == len(SERIES_CTX) * 2 * 3
    chosen = {(int(r.context_length), r.arm): r.lr for r in t[t["chosen"]].itertuples()}
    assert chosen == pytest.approx(SERIES_BEST_LR)
    warn = edge_warnings(t)
    assert any("gpt at context length 64 (0.001) is the smallest" in w for w in warn), warn
    assert any("ngpt at context length 1024 (0.04) is the largest" in w for w in warn), warn
    assert not any("context length 256" in w for w in warn), warn
    # only the chosen search runs are in the frame: one run per (context, arm, seed, budget)
    runs = data.runs
    assert len(runs) == len(SERIES_CTX) * 2 * 3 * 3
    assert not runs.duplicated(["context_length", "arm", "seed", "budget"]).any()


def test_series_speedup_vs_context_with_intervals(env, tmp_path):
    from analysis.cli import main

    out = tmp_path / "series"
    assert main(["figures", "--experiment", "series", "--out", str(out)]) == 0
    for stem in ("speedup_vs_context_length", "lr_search", "final_loss_vs_budget_ctx1024"):
        assert (out / f"{stem}.png").stat().st_size > 10_000, stem
    import pandas as pd

    s = pd.read_csv(out / "summary.csv").set_index(["context_length", "target", "arm"])
    assert set(s["mode"]) == {"budget"}
    for ctx in SERIES_CTX:
        row = s.loc[(ctx, SERIES_TARGETS[0], "ngpt")]
        assert row["speedup"] == pytest.approx(math.exp(SERIES_SHIFT[ctx] / 0.5), rel=0.05)
        assert row["speedup_ci_low"] <= row["speedup"] <= row["speedup_ci_high"]  # equal: every seed the same ratio
        assert row["n_seeds"] == 3
    md = (out / "lr_search.md").read_text()
    assert md.startswith("| context | arm |") and "| 1,024 | ngpt |" in md


# ---------------------------------------------------------------- diverged seeds, budgets as trained (issue #26)


def test_a_diverged_main_run_counts_as_a_censored_seed(store):
    """A main run that diverged is a seed that did not reach what it had not reached by then: loaded (with a
    warning), counted, censored at its last evaluation; a diverged search unit still only drops out."""
    from analysis.load import load_experiment
    from analysis.summary import summarize
    from analysis.tables import to_markdown

    with pytest.warns(AnalysisWarning, match="diverged") as rec:
        data = load_experiment("diverged", tracking_uri=store["uri"])
    assert any(store["diverged_ngpt2"] in str(w.message) and "training loss is nan" in str(w.message) for w in rec)
    runs = data.runs.set_index("run_id")
    assert bool(runs.loc[store["diverged_ngpt2"], "diverged"]) and runs["diverged"].sum() == 1
    assert store["diverged_search"] not in set(data.frame["run_id"])
    s = summarize(data.frame, data.targets, data.baseline_arm).set_index(["target", "arm"])
    crossed, censored = s.loc[(6.0, "ngpt")], s.loc[(5.0, "ngpt")]
    n = [_t_star(K_NGPT[k], 6.0) for k in K_NGPT]
    assert (crossed["n_seeds"], crossed["n_reached"], crossed["n_diverged"]) == (3, 3, 1)
    assert crossed["tokens_to_target"] == pytest.approx(np.mean(n)) and crossed["tokens_to_target_bound"] == ""
    assert (censored["n_seeds"], censored["n_reached"], censored["n_censored"]) == (3, 2, 1)
    last_eval = 600_000 // 75_000 * 75_000  # its last evaluation before the divergence
    n5 = [_t_star(K_NGPT[0], 5.0), _t_star(K_NGPT[1], 5.0), last_eval]
    assert censored["tokens_to_target"] == pytest.approx(np.mean(n5))
    assert censored["tokens_to_target_bound"] == "lower" and censored["speedup_bound"] == "upper"
    assert "2/3 (1 diverged)" in to_markdown(s.reset_index())


def test_budget_mode_uses_the_tokens_each_run_trained(store):
    """Budgets that are not a multiple of the tokens per step train fewer tokens than the YAML says: the
    interpolation and the censoring bound use the tokens trained (3,900, not 4,000)."""
    from analysis.summary import summarize

    data = _load(store, name="as_trained")
    assert sorted(set(data.runs["budget"])) == [900, 1800, 3900]
    s = summarize(data.frame, data.targets, data.baseline_arm).set_index(["target", "arm"])
    assert set(s["mode"]) == {"budget"} and set(s["budget"]) == {3900}
    for arm, c in AS_TRAINED_C.items():
        assert s.loc[(6.4, arm), "tokens_to_target"] == pytest.approx(math.exp((c - 6.4) / 0.5))
        assert s.loc[(5.0, arm), "tokens_to_target"] == 3900 and s.loc[(5.0, arm), "tokens_to_target_bound"] == "lower"
