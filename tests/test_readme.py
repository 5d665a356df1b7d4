"""README's demo output stays true: its table's tokens and losses are the summary of the demo's known curves
(tests/fixtures/demo_val_curves.json, recorded from `python runner.py experiments/verdict_vs_baseline.yaml` on a
CPU), its time columns show no machine's seconds, and the output starts as the runner's does.

`pytest -m slow` also runs the demo itself and checks its curves and printed table against the same files."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from analysis.summary import summarize
from analysis.tables import display_frame
from training.experiment import load_experiment

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "experiments" / "verdict_vs_baseline.yaml"
CURVES = ROOT / "tests" / "fixtures" / "demo_val_curves.json"
TIME_COLUMNS = ("Time to target (s)", "Speedup (time)")
PLACEHOLDER = "(varies)"


def readme_demo_block(readme: str) -> list[str]:
    """The lines of the code block that shows the demo's output (the one holding its table)."""
    blocks, block = [], None
    for line in readme.splitlines():
        if line.startswith("```"):
            block = [] if block is None else blocks.append(block)
        elif block is not None:
            block.append(line)
    demo = [b for b in blocks if "verdict_vs_baseline: 2 runs (0 failed)" in b]
    assert len(demo) == 1, "README has one code block with the demo's output"
    return demo[0]


def parse_table(lines: list[str]) -> pd.DataFrame:
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines if line.startswith("|")]
    header, body = rows[0], rows[2:]
    return pd.DataFrame(body, columns=header)


def known_table() -> pd.DataFrame:
    """What the runner prints for the known curves: analysis.summary.summarize, shown by analysis.tables."""
    rows = []
    for arm, points in json.loads(CURVES.read_text())["curves"].items():
        for step, (tokens, loss) in enumerate(points):
            rows.append(dict(run_id=f"demo-{arm}", arm=arm, seed=0, budget=points[-1][0], context_length=64,
                             step=step, tokens=float(tokens), elapsed_s=float("nan"), metric="val/loss",
                             value=float(loss)))
    cfg = load_experiment(str(DEMO))
    return display_frame(summarize(pd.DataFrame(rows), cfg.targets, cfg.baseline_arm))


def check_demo_output(block: list[str], known: pd.DataFrame, *, times_shown: bool) -> None:
    table = parse_table(block)
    assert list(table.columns) == list(known.columns)
    assert len(table) == len(known)
    for column in known.columns:
        if column in TIME_COLUMNS:
            continue
        assert table[column].tolist() == known[column].tolist(), column
    for column in TIME_COLUMNS:
        shown = table.loc[table[column] != "baseline", column]
        if times_shown:
            assert all(re.fullmatch(r"[\d.]+k?", v) for v in shown), column
        else:  # README: no seconds of one machine that a reader could take as a finding
            assert (shown == PLACEHOLDER).all(), f"README's {column!r} column shows seconds: {shown.tolist()}"


def test_readme_demo_table_is_the_demos_known_curves():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme_demo_block(readme)
    known = known_table()
    check_demo_output(block, known, times_shown=False)
    assert block[0].startswith("MLflow: experiment 'verdict_vs_baseline', parent run ")
    finals = dict(zip(known["Arm"], known["Final loss"]))
    assert f"The final validation losses are **{finals['gpt']}** (gpt) and **{finals['ngpt']}** (ngpt)" in readme


@pytest.mark.slow
def test_the_demo_gives_the_known_curves_and_readmes_table(tmp_path):
    """Minutes on 2 cores: the demo itself, from the YAML, on the fixtures' copy of The Verdict."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    proc = subprocess.run([sys.executable, str(ROOT / "runner.py"), str(DEMO), "--no-progress"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=1800,
                          env={**__import__("os").environ, "MLFLOW_TRACKING_URI": uri})
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("MLflow: experiment 'verdict_vs_baseline', parent run ")
    known = known_table()
    check_demo_output(lines[lines.index("verdict_vs_baseline: 2 runs (0 failed)"):], known, times_shown=True)
    check_demo_output(readme_demo_block((ROOT / "README.md").read_text(encoding="utf-8")), known, times_shown=False)

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("verdict_vs_baseline").experiment_id
    recorded = json.loads(CURVES.read_text())["curves"]
    for run in client.search_runs([experiment], "tags.`datgpt.role` = 'child'"):
        arm = run.data.tags["datgpt.arm"]
        tokens = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "tokens")}
        curve = [[int(tokens[m.step]), m.value] for m in
                 sorted(client.get_metric_history(run.info.run_id, "val/loss"), key=lambda m: m.step)]
        assert [t for t, _ in curve] == [t for t, _ in recorded[arm]]
        assert [v for _, v in curve] == pytest.approx([v for _, v in recorded[arm]], abs=1e-4), arm
