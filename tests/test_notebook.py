"""analysis/notebook.ipynb runs top to bottom (nbclient) on a small MLflow store built here, and is
stored without outputs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from test_analysis_mlflow import CURVE_TARGETS, FLOOR, K_GPT, K_NGPT, TPS, _log_child, _log_parent

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "analysis" / "notebook.ipynb"


def test_notebook_is_stored_without_outputs():
    nb = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code and all(c["outputs"] == [] and c["execution_count"] is None for c in code)
    nbformat.validate(nbformat.reads(NOTEBOOK.read_text(encoding="utf-8"), as_version=4))


def test_notebook_runs_on_an_experiment(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("nb_demo")
    parent = _log_parent(client, exp, targets=CURVE_TARGETS)
    for seed in (0, 1):  # two seeds per arm: error bars and bootstrap intervals
        for arm, k in (("gpt", K_GPT[seed]), ("ngpt", K_NGPT[seed])):
            _log_child(client, exp, parent, arm=arm, seed=seed, budget=1_500_000, ctx=64, val_every=100_000,
                       tps=TPS[arm], loss_fn=lambda t, k=k: max(10 - k * t, FLOOR))
    client.set_terminated(parent)

    out = tmp_path / "figures"
    monkeypatch.setenv("DATGPT_EXPERIMENT", "nb_demo")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("DATGPT_FIGURES_DIR", str(out))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))  # this tree
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()  # raises on a failing cell

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "\n".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert f"experiment 'nb_demo' from {uri}" in text
    assert "arms ['gpt', 'ngpt'], baseline 'gpt', targets [6.0, 5.0, 3.0], 4 runs" in text
    tables = [o.data["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert any("Speedup (tokens)" in t and "baseline" in t for t in tables)  # the summary table
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 4  # 3 built-in figures (these runs log no diagnostics: no diag_norms) + the custom one
    for name in ("val_loss_vs_tokens", "tokens_to_target", "custom_val_loss_gap_per_seed"):
        assert (out / f"{name}.png").is_file() and (out / f"{name}.pdf").is_file(), name
    assert (out / "summary.md").is_file()
