"""README's example outputs stay true. Its tables' tokens and losses are the summary of known curves recorded from
the runs themselves (tests/fixtures/demo_val_curves.json: `python runner.py experiments/verdict_vs_baseline.yaml`;
tests/fixtures/fineweb_cpu_val_curves.json: the pilot of experiments/fineweb_cpu.yaml), computed with the YAMLs'
targets; the time columns show no machine's seconds; the demo's output starts as the runner's does; and
fineweb_cpu.yaml's targets follow the rule its header states.

`pytest -m slow` also runs the demo itself and checks its curves and printed table against the same files."""

from __future__ import annotations

import json
import math
import os
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
FIXTURES = ROOT / "tests" / "fixtures"
DEMO = ROOT / "experiments" / "verdict_vs_baseline.yaml"
FINEWEB = ROOT / "experiments" / "fineweb_cpu.yaml"
TIME_COLUMNS = ("Time to target (s)", "Speedup (time)")
PLACEHOLDER = "(varies)"


def readme() -> str:
    return (ROOT / "README.md").read_text(encoding="utf-8")


def code_block(text: str, marker: str) -> list[str]:
    """The lines of the one code block of README that contains `marker`."""
    blocks, block = [], None
    for line in text.splitlines():
        if line.startswith("```"):
            block = [] if block is None else blocks.append(block)
        elif block is not None:
            block.append(line)
    found = [b for b in blocks if any(marker in line for line in b)]
    assert len(found) == 1, f"README has one code block holding {marker!r}"
    return found[0]


def parse_table(lines: list[str]) -> pd.DataFrame:
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines if line.startswith("|")]
    return pd.DataFrame(rows[2:], columns=rows[0])


def curves(fixture: str) -> dict[str, list[list[float]]]:
    return json.loads((FIXTURES / fixture).read_text())["curves"]


def known_table(yaml: Path, fixture: str) -> pd.DataFrame:
    """What the runner prints for the known curves: analysis.summary.summarize, shown by analysis.tables."""
    cfg = load_experiment(str(yaml))
    rows = []
    for arm, points in curves(fixture).items():
        for step, (tokens, loss) in enumerate(points):
            rows.append(dict(run_id=f"known-{arm}", arm=arm, seed=0, budget=points[-1][0],
                             context_length=cfg.arms[0].model.context_length, step=step, tokens=float(tokens),
                             elapsed_s=float("nan"), metric="val/loss", value=float(loss)))
    return display_frame(summarize(pd.DataFrame(rows), cfg.targets, cfg.baseline_arm))


def check_table(lines: list[str], known: pd.DataFrame, *, times_shown: bool) -> None:
    table = parse_table(lines)
    assert list(table.columns) == list(known.columns)
    assert len(table) == len(known)
    for column in known.columns:
        if column not in TIME_COLUMNS:
            assert table[column].tolist() == known[column].tolist(), column
    for column in TIME_COLUMNS:
        shown = table.loc[table[column] != "baseline", column]
        if times_shown:
            assert all(re.fullmatch(r"[\d.]+k?", v) for v in shown), column
        else:  # README: no seconds of one machine that a reader could take as a finding
            assert (shown == PLACEHOLDER).all(), f"README's {column!r} column shows seconds: {shown.tolist()}"


def test_readme_demo_output_is_the_demos_known_curves():
    text = readme()
    block = code_block(text, "verdict_vs_baseline: 2 runs (0 failed)")
    known = known_table(DEMO, "demo_val_curves.json")
    check_table(block, known, times_shown=False)
    assert block[0].startswith("MLflow: experiment 'verdict_vs_baseline', parent run ")
    finals = dict(zip(known["Arm"], known["Final loss"]))
    assert f"The final validation losses are **{finals['gpt']}** (gpt) and **{finals['ngpt']}** (ngpt)" in text


def test_readme_fineweb_table_is_the_fineweb_pilots_known_curves():
    known = known_table(FINEWEB, "fineweb_cpu_val_curves.json")
    check_table(code_block(readme(), "|   8.35 | gpt  |"), known, times_shown=False)
    assert (known["Reached"] == "1/1").all()  # the point of the YAML's targets: every one is reached
    header = " ".join(line.lstrip("# ") for line in FINEWEB.read_text(encoding="utf-8").splitlines())
    rows = {(r["Target"], r["Arm"]): r for _, r in known.iterrows()}
    for target in known["Target"].unique():  # the expected table in the YAML's header says the same
        gpt, ngpt = rows[(target, "gpt")], rows[(target, "ngpt")]
        assert (f"{target}: gpt {gpt['Tokens to target']}, ngpt {ngpt['Tokens to target']} "
                f"({ngpt['Speedup (tokens)']}x)") in header, target
    assert f"final validation loss gpt {rows[('8.0', 'gpt')]['Final loss']}, ngpt " \
           f"{rows[('8.0', 'ngpt')]['Final loss']}" in header


def test_fineweb_cpu_targets_follow_the_rule_in_its_header():
    """GPT's pilot validation loss after 1/4, 1/2 and all of the budget, each rounded up to 0.05."""
    cfg = load_experiment(str(FINEWEB))
    budget = cfg.arms[0].train.tokens
    gpt = dict((int(t), loss) for t, loss in curves("fineweb_cpu_val_curves.json")["gpt"])
    rule = [math.ceil(gpt[budget * k // 4] * 20 - 1e-9) / 20 for k in (1, 2, 4)]
    assert cfg.targets == pytest.approx(rule), (cfg.targets, rule)


@pytest.mark.slow
def test_the_demo_gives_the_known_curves_and_readmes_table(tmp_path):
    """Minutes on 2 cores: the demo itself, from the YAML, on the fixtures' copy of The Verdict."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    proc = subprocess.run([sys.executable, str(ROOT / "runner.py"), str(DEMO), "--no-progress"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=1800, env={**os.environ, "MLFLOW_TRACKING_URI": uri})
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("MLflow: experiment 'verdict_vs_baseline', parent run ")
    known = known_table(DEMO, "demo_val_curves.json")
    check_table(lines[lines.index("verdict_vs_baseline: 2 runs (0 failed)"):], known, times_shown=True)

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("verdict_vs_baseline").experiment_id
    recorded = curves("demo_val_curves.json")
    for run in client.search_runs([experiment], "tags.`datgpt.role` = 'child'"):
        arm = run.data.tags["datgpt.arm"]
        tokens = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "tokens")}
        curve = [[int(tokens[m.step]), m.value] for m in
                 sorted(client.get_metric_history(run.info.run_id, "val/loss"), key=lambda m: m.step)]
        assert [t for t, _ in curve] == [t for t, _ in recorded[arm]]
        assert [v for _, v in curve] == pytest.approx([v for _, v in recorded[arm]], abs=1e-4), arm
