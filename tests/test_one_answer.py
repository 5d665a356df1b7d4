"""One answer: the runner's table, the parent run's report and metrics, and `python -m analysis summary`
hold the same numbers, and those numbers are the ones an independent reading of the logged curves gives."""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
import pytest
import yaml

import runner
from analysis import record

# targets every 0.05 nats: with two seeds per arm some target falls between the seeds' curves, so one seed
# reaches it and the other is censored
TARGETS = [round(10.6 - 0.05 * i, 2) for i in range(40)]
TINY = {
    "name": "one_answer",
    "seeds": [0, 1],
    "data": {"dataset": "verdict", "val_fraction": 0.1},
    "model": {"n_layers": 1, "n_heads": 2, "n_embd": 32, "context_length": 32},
    "train": {"tokens": 3072, "micro_batch_size": 4, "grad_accum_steps": 2, "eval_every_tokens": 512,
              "eval_tokens": 256},
    "optim": {"lr": 3e-3, "weight_decay": 0.1, "warmup_tokens": 256},
    "arms": {"gpt": {"model": {"kind": "gpt"}},
             "ngpt": {"model": {"kind": "ngpt"}, "optim": {"lr": 1e-2, "weight_decay": 0.0, "warmup_tokens": 0}}},
    "targets": TARGETS,
    "tracking": {"log_models": False, "log_samples": False, "log_diagnostics": False},
}


def _crossing(tokens: list[float], losses: list[float], target: float) -> tuple[float, bool]:
    """Written again here from the definition: first evaluation at or below the target, linear
    interpolation from the one before; never reached -> the last evaluation's tokens, censored."""
    for i, loss in enumerate(losses):
        if loss <= target:
            if i == 0:
                return tokens[0], True
            t0, t1, l0, l1 = tokens[i - 1], tokens[i], losses[i - 1], loss
            return t0 + (l0 - target) / (l0 - l1) * (t1 - t0), True
    return tokens[-1], False


@pytest.fixture(scope="module")
def answered(tmp_path_factory, one_thread_module):
    import os

    folder = tmp_path_factory.mktemp("one_answer")
    uri = f"sqlite:///{folder}/mlflow.db"
    path = folder / "one_answer.yaml"
    path.write_text(yaml.safe_dump(TINY, sort_keys=False))
    old_cwd, old_uri = os.getcwd(), os.environ.get("MLFLOW_TRACKING_URI")
    os.chdir(folder)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    out = io.StringIO()
    try:
        from contextlib import redirect_stdout

        with redirect_stdout(out):
            assert runner.main([str(path), "--no-progress"]) == 0
    finally:
        os.chdir(old_cwd)
        if old_uri is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old_uri
    return folder, uri, out.getvalue()


@pytest.fixture(scope="module")
def one_thread_module():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _parent(uri):
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("one_answer")
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if r.data.tags[record.TAG_ROLE] == record.ROLE_PARENT)
    children = [r for r in runs if r.data.tags[record.TAG_ROLE] == record.ROLE_CHILD]
    return client, exp, parent, children


def test_table_report_metrics_and_cli_agree(answered, tmp_path, capsys):
    folder, uri, printed = answered
    client, exp, parent, _children = _parent(uri)
    assert exp.tags[record.TAG_EXPERIMENT_KIND] == record.EXPERIMENT_KIND_TRAINING

    # the parent's report/summary.csv, and the CLI's CSV of the same store: the same text
    report_csv = client.download_artifacts(parent.info.run_id, f"{record.REPORT_DIR}/summary.csv", str(tmp_path))
    report_md = client.download_artifacts(parent.info.run_id, f"{record.REPORT_DIR}/summary.md", str(tmp_path))
    from analysis.cli import main as analysis_main

    capsys.readouterr()
    assert analysis_main(["summary", "--experiment", "one_answer", "--tracking-uri", uri, "--format", "csv"]) == 0
    cli_csv = capsys.readouterr().out
    with open(report_csv, encoding="utf-8") as f:
        assert f.read() == cli_csv
    # the runner printed the report's Markdown table and notes, line for line
    with open(report_md, encoding="utf-8") as f:
        table = f.read().strip()
    assert table in printed
    summary = pd.read_csv(io.StringIO(cli_csv))
    partial = summary[(summary["n_reached"] > 0) & (summary["n_reached"] < summary["n_seeds"])]
    assert not partial.empty, "no target with one seed censored: widen TARGETS"
    assert (partial["tokens_to_target_bound"] == "lower").all()

    # the parent's metrics are the summary's numbers
    metrics = parent.data.metrics
    for row in summary.itertuples():
        assert metrics[record.answer_metric(row.arm, "final_val_loss")] == pytest.approx(row.final_val_loss, rel=1e-12)
        if math.isfinite(row.tokens_to_target):
            name = record.answer_metric(row.arm, "tokens_to_target", row.target)
            assert metrics[name] == pytest.approx(row.tokens_to_target, rel=1e-12)
        name = record.answer_metric(row.arm, "speedup", row.target)
        if row.arm != "gpt" and math.isfinite(row.speedup):
            assert metrics[name] == pytest.approx(row.speedup, rel=1e-12)
        else:
            assert name not in metrics


def test_numbers_match_an_independent_reading_of_the_curves(answered):
    _folder, uri, _printed = answered
    client, _exp, parent, children = _parent(uri)
    curves = {}
    for child in children:
        history = sorted(client.get_metric_history(child.info.run_id, record.VAL_LOSS), key=lambda m: m.step)
        tokens = {m.step: m.value for m in client.get_metric_history(child.info.run_id, record.TOKENS)}
        curves[(child.data.tags[record.TAG_ARM], int(child.data.tags[record.TAG_SEED]))] = (
            [tokens[m.step] for m in history], [m.value for m in history])
    metrics = parent.data.metrics
    checked_speedups = 0
    for target in TARGETS:
        means = {}
        for arm in ("gpt", "ngpt"):
            per_seed = [_crossing(*curves[(arm, seed)], target) for seed in (0, 1)]
            means[arm] = (np.mean([v for v, _ in per_seed]), all(ok for _, ok in per_seed),
                          any(ok for _, ok in per_seed))
            assert metrics[record.answer_metric(arm, "tokens_to_target", target)] == pytest.approx(means[arm][0])
        name = record.answer_metric("ngpt", "speedup", target)
        gpt_exact, ngpt_exact = means["gpt"][1], means["ngpt"][1]
        if gpt_exact or ngpt_exact:  # censoring on one side at most: a number (exact or a bound) is formed
            assert metrics[name] == pytest.approx(means["gpt"][0] / means["ngpt"][0])
            checked_speedups += 1
        else:
            assert name not in metrics
    assert checked_speedups > 0


def test_the_parent_run_says_which_numbers_are_bounds(answered, tmp_path):
    """Beside each answer metric that can be a bound, a metric says which kind of number it is (read back with
    the MLflow client): a lower bound logged as a plain number reads as an estimate in the runs table."""
    _folder, uri, _printed = answered
    client, _exp, parent, children = _parent(uri)
    path = client.download_artifacts(parent.info.run_id, f"{record.REPORT_DIR}/summary.csv", str(tmp_path))
    summary = pd.read_csv(path)
    metrics = parent.data.metrics
    code = {"": record.BOUND_EXACT, "lower": record.BOUND_LOWER, "upper": record.BOUND_UPPER}
    seen = set()
    for row in summary.itertuples():
        for quantity in ("tokens_to_target", "seconds_to_target") + (() if row.arm == "gpt" else ("speedup",)):
            bound = getattr(row, f"{quantity}_bound")
            bound = "" if isinstance(bound, float) and math.isnan(bound) else bound
            name = record.answer_bound_metric(row.arm, quantity, row.target)
            if record.answer_metric(row.arm, quantity, row.target) in metrics:
                assert metrics[name] == code[bound], name
                seen.add(bound)
            else:
                assert name not in metrics and bound == "unknown", name
    assert {"", "lower", "upper"} <= seen
    # budgets as trained: every child run records the tokens it trained, the tokens of its last step
    for child in children:
        last = max(m.value for m in client.get_metric_history(child.info.run_id, record.TOKENS))
        assert int(child.data.params[record.PARAM_TOKENS_TRAINED]) == last
