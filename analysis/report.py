"""One call that loads an experiment, summarises it and writes every figure and table.

The runner calls :func:`build_report` at the end of an invocation (with its parent run id) and logs
the returned files as artifacts of the parent run; ``python -m analysis figures`` calls it too.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pandas as pd

from analysis.errors import AnalysisError
from analysis.load import ExperimentData, load_experiment
from analysis import record
from analysis.summary import summarize
from analysis.tables import INTERVAL_NAME

__all__ = ["Report", "build_report", "summarize_experiment", "default_out_dir"]

#: the metrics the summary and the built-in figures use (the others are not loaded); "eval/": downstream
REPORT_METRICS = (record.VAL_LOSS, record.TRAIN_LOSS, record.LR, record.EVAL_PREFIX + "/")


@dataclass
class Report:
    """What :func:`build_report` produced.

    ``summary``: the summary DataFrame (see :func:`analysis.summary.summarize`); ``files``: every
    file written (PNG+PDF figures, summary CSV/MD/TEX, report.json); ``skipped_figures``: ``(name,
    reason)`` of figures that did not apply; ``skipped_runs``: ``(run_id, reason)`` of the runs
    left out.
    """

    experiment: str
    summary: pd.DataFrame
    files: list[Path] = field(default_factory=list)
    skipped_figures: list[tuple[str, str]] = field(default_factory=list)
    skipped_runs: list[tuple[str, str]] = field(default_factory=list)
    targets: list[float] = field(default_factory=list)
    baseline_arm: str = ""
    data: ExperimentData | None = field(default=None, repr=False)
    lr_search: pd.DataFrame | None = None  # the learning-rate search with the choice (analysis.sweeps.select_lr)
    cooldown_vs_full: pd.DataFrame | None = None  # analysis.sweeps.compare_methods, when both methods ran


def default_out_dir(experiment: str) -> Path:
    """``figures/<experiment>`` with characters unsafe in file names replaced by ``_``."""
    safe = "".join(c if (c.isalnum() or c in "._-") else "_" for c in experiment).strip(".")
    return Path("figures") / (safe or "experiment")


def summarize_experiment(
    experiment: str,
    parent_run_id: str | None = None,
    tracking_uri: str | None = None,
    *,
    targets: list[float] | None = None,
    baseline_arm: str | None = None,
    mode: str = "auto",
    level: float = 0.95,
    include_unfinished: bool = False,
) -> tuple[ExperimentData, pd.DataFrame]:
    """Load ``experiment`` and compute its summary (targets/baseline default to the parent tags)."""
    if mode not in ("auto", "curve", "budget"):
        raise AnalysisError(f"--mode must be auto, curve or budget, not {mode!r}")
    if not 0 < level < 1:
        raise AnalysisError(f"the CI level must be between 0 and 1, not {level}")
    data = load_experiment(experiment, parent_run_id=parent_run_id, tracking_uri=tracking_uri,
                           include_unfinished=include_unfinished, metrics=list(REPORT_METRICS),
                           baseline_arm=baseline_arm)
    if targets is not None:
        data.targets = [float(t) for t in targets]
    if baseline_arm is not None and baseline_arm not in set(data.runs["arm"]):
        raise AnalysisError(f"unknown baseline arm {baseline_arm!r}; arms: "
                            + ", ".join(sorted(set(data.runs["arm"]))))
    summary = summarize(data.frame, data.targets, data.baseline_arm, mode=mode, level=level,
                        loss_unit=data.loss_unit)
    return data, summary


def _redact(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        return urlunsplit(parts._replace(netloc=host))
    return uri


def _provenance(data: ExperimentData, report: Report, mode: str, level: float) -> dict:
    used = sorted(set(data.runs["parent_run_id"]))
    return {
        "experiment": data.experiment,
        "experiment_id": data.experiment_id,
        "tracking_uri": _redact(data.tracking_uri),
        "parent_runs": [
            {"run_id": p.run_id, "name": p.name, "git_commit": p.git_commit,
             "config_hash": p.config_hash, "status": p.status}
            for p in data.parents.values() if p.run_id in used
        ],
        "child_runs": [
            {k: (None if pd.isna(v) else (int(v) if k in ("seed", "budget", "context_length",
                                                          "start_time") else v))
             for k, v in row.items()}
            for row in data.runs.to_dict("records")
        ],
        "skipped_runs": [{"run_id": r, "reason": why} for r, why in report.skipped_runs],
        "skipped_figures": [{"figure": f, "reason": why} for f, why in report.skipped_figures],
        "targets": data.targets,
        "baseline_arm": data.baseline_arm,
        "mode": mode,
        "ci_level": level,
        "interval": INTERVAL_NAME,
    }


def _sweep_outputs(data: ExperimentData, summary: pd.DataFrame, report: Report, out_dir: Path, figures: bool,
                   level: float) -> list[Path]:
    """The learning-rate search table and figure, and the cooldown-versus-full comparison."""
    from analysis.sweeps import compare_methods
    from analysis.tables import format_cooldown_table, write_lr_tables

    written: list[Path] = []
    attempts = []
    if data.lr_search is not None:
        report.lr_search = data.lr_search
        written += write_lr_tables(data.lr_search, out_dir)
        attempts.append(("lr_search", "fig_lr_search", (data.lr_search,)))
    if data.cooldown_frame is not None:
        cooldown = summarize(data.cooldown_frame, data.targets, data.baseline_arm, mode="budget", level=level)
        full = summary if (summary.empty or (summary["mode"] == "budget").all()) else summarize(
            data.frame, data.targets, data.baseline_arm, mode="budget", level=level)
        if not full.empty and not cooldown.empty:
            report.cooldown_vs_full = compare_methods(full, cooldown)
            path = out_dir / "cooldown_vs_full.csv"
            report.cooldown_vs_full.to_csv(path, index=False)
            (out_dir / "cooldown_vs_full.md").write_text(format_cooldown_table(report.cooldown_vs_full) + "\n\n"
                                                         "Tokens to target in budget mode from full runs (each budget "
                                                         "its own schedule) and from WSD cooldown branches; difference "
                                                         "= cooldown / full - 1.\n", encoding="utf-8")
            written += [path, out_dir / "cooldown_vs_full.md"]
        attempts.append(("cooldown_vs_full", "fig_cooldown_vs_full",
                         (data.frame, data.cooldown_frame, data.targets)))
    if figures:
        from analysis import sweep_figures
        from analysis.style import NotApplicable, arm_styles, save_figure, style_context

        styles = arm_styles(data.arms, data.baseline_arm)
        for stem, name, args in attempts:
            try:
                with style_context():
                    fig = getattr(sweep_figures, name)(*args, styles, data.loss_unit)
                written += save_figure(fig, out_dir, stem)
            except NotApplicable as exc:
                report.skipped_figures.append((stem, str(exc)))
    return written


def _diagnostic_figures(data: ExperimentData, out_dir: Path) -> list[Path]:
    """The hypersphere diagnostics figures (analysis/diagnostics.py) from each arm's
    diagnostics artifact: the run with the largest budget and the smallest seed of each arm."""
    from mlflow.tracking import MlflowClient

    from analysis.diagnostics import diagnostics_figures

    client = MlflowClient(tracking_uri=data.tracking_uri)
    dists: dict[str, dict] = {}
    quiet = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}  # one small file per arm: no progress bars
    saved = {k: os.environ.get(k) for k in quiet}
    os.environ.update(quiet)
    try:
        _download_diagnostics(client, data, dists)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    if not dists:
        return []
    return diagnostics_figures(dists, out_dir, baseline_arm=data.baseline_arm)


def _download_diagnostics(client, data: ExperimentData, dists: dict[str, dict]) -> None:
    from analysis.diagnostics import load_diagnostics

    with tempfile.TemporaryDirectory() as folder:
        for arm in data.arms:
            runs = data.runs[data.runs["arm"] == arm].sort_values(["budget", "seed"], ascending=[False, True],
                                                                   na_position="last")
            for run_id in runs["run_id"]:
                try:
                    path = client.download_artifacts(run_id, record.DIAGNOSTICS_ARTIFACT, folder)
                    dists[arm] = load_diagnostics(path)
                    break
                except Exception:  # noqa: BLE001 - runs from before diagnostics, or logged without them
                    continue


def build_report(
    experiment: str,
    out_dir: Path,
    parent_run_id: str | None = None,
    tracking_uri: str | None = None,
    *,
    targets: list[float] | None = None,
    baseline_arm: str | None = None,
    mode: str = "auto",
    level: float = 0.95,
    include_unfinished: bool = False,
    figures: bool = True,
) -> Report:
    """Load, summarise, and write every figure (PNG + PDF) and table (CSV, MD, TEX) to ``out_dir``.

    ``parent_run_id=None`` uses every invocation of the experiment (newest run wins on duplicates),
    a run id restricts to that invocation, ``"latest"`` to the newest. Files are first written to a
    temporary folder beside ``out_dir`` and moved in only when everything succeeded, so an error
    leaves ``out_dir`` untouched. Figures that do not apply are listed in
    ``Report.skipped_figures`` (and an older copy of them in ``out_dir`` is removed).

    Raises :class:`analysis.errors.AnalysisError` subclasses (unknown experiment, no runs, ...).
    """
    data, summary = summarize_experiment(
        experiment, parent_run_id, tracking_uri, targets=targets, baseline_arm=baseline_arm,
        mode=mode, level=level, include_unfinished=include_unfinished)
    report = Report(experiment=experiment, summary=summary, targets=list(data.targets),
                    baseline_arm=data.baseline_arm, skipped_runs=list(data.skipped), data=data)

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        from analysis.tables import write_tables

        written: list[Path] = []
        if figures:
            from analysis.figures import make_figures

            figs = make_figures(data.frame, summary, data.targets, data.baseline_arm, tmp)
            written += figs.written
            report.skipped_figures = figs.skipped
        written += write_tables(summary, tmp, experiment=experiment)
        written += _sweep_outputs(data, summary, report, tmp, figures, level)
        from analysis.accuracy import write_accuracy_outputs  # only when eval/<task>/<metric> were logged

        accuracy_files, accuracy_skipped = write_accuracy_outputs(
            data.frame, data.arms, data.baseline_arm, tmp, experiment=experiment, figures=figures, level=level)
        written += accuracy_files
        report.skipped_figures += accuracy_skipped
        if figures:
            written += _diagnostic_figures(data, tmp)
        prov = tmp / "report.json"
        prov.write_text(json.dumps(_provenance(data, report, mode, level),
                                   indent=2, default=str) + "\n", encoding="utf-8")
        written.append(prov)

        out_dir.mkdir(parents=True, exist_ok=True)
        final: list[Path] = []
        for path in written:
            dest = out_dir / path.name
            os.replace(path, dest)
            final.append(dest)
        for stem, _why in report.skipped_figures:
            for ext in ("png", "pdf"):
                stale = out_dir / f"{stem}.{ext}"
                if stale.is_file():
                    stale.unlink()
        report.files = final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report
