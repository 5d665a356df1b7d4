"""MLflow tracking: the experiment, one parent run per invocation, one child run per unit (each (arm, seed),
or each unit of a sweep), and `python -m training.tracking sync`.

Only global rank 0 talks to MLflow (a `Tracker`); the other ranks get a `NullTracker`, whose calls do
nothing. A run's metrics go through its `RunLogger` (training/run_logger.py). The tracking URI is MLflow's:
`MLFLOW_TRACKING_URI`, else its default (`sqlite:///mlflow.db`).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from analysis import record
from training.mlflow_view import curves_view_json
from training.run_logger import MAX_METRICS_PER_BATCH, NullLogger, RunLogger, sync_unsynced

MAX_PARAMS_PER_BATCH = 100
MAX_PARAM_CHARS = 6000


class TrackingError(RuntimeError):
    """The tracking store cannot be reached or used."""


def tracking_uri() -> str:
    import mlflow

    return mlflow.get_tracking_uri()


STORE_LOCK_TIMEOUT_S = 300.0


def store_lock(uri: str):
    """A lock held while a local sqlite store is created, migrated or given a new experiment.

    Two runners started at once on a new `mlflow.db` would otherwise both create and migrate it, and the
    second dies in alembic. The lock is the file `<db>.lock` beside the database (any process on the
    machine, or on a shared file system with working locks); other stores (a server) get no lock."""
    if not uri.startswith("sqlite:///"):
        return contextlib.nullcontext()
    from urllib.parse import unquote

    path = unquote(uri[len("sqlite:///"):]).split("?", 1)[0]
    if not path or path == ":memory:" or not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        return contextlib.nullcontext()  # nothing to share (or MLflow reports the missing folder itself)
    from filelock import FileLock

    return FileLock(path + ".lock", timeout=STORE_LOCK_TIMEOUT_S)


def git_commit(folder: Path) -> str:
    try:
        out = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if out.returncode != 0:
        return "unknown"
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def _param_value(value: Any) -> str:
    text = str(value)
    return text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 3] + "..."


class NullTracker:
    """What ranks other than 0 get instead of a `Tracker`: the same calls, which log nothing. Run ids it
    hands out are None; its loggers are `NullLogger`s."""

    uri = ""

    def check(self) -> None:
        pass

    def experiment_id(self, name: str) -> None:
        return None

    def start_run(self, experiment_id, run_name: str, tags: dict[str, str], params: dict[str, Any]) -> None:
        return None

    def logger(self, run_id) -> NullLogger:
        return NullLogger()

    def log_text(self, run_id, text: str, artifact_file: str) -> None:
        pass

    def log_artifacts(self, run_id, folder: Path, artifact_path: str | None = None) -> None:
        pass

    def log_metrics(self, run_id, metrics: dict[str, float], step: int = 0) -> None:
        pass

    def set_tag(self, run_id, key: str, value: str) -> None:
        pass

    def finish(self, run_id, status: str = "FINISHED") -> None:
        pass

    def copy_history(self, source_run_id, run_id, max_step: int) -> int:
        return 0

    def reopen(self, run_id) -> None:
        pass

    def run_status(self, run_id) -> None:
        return None

    def metrics(self, run_id) -> dict[str, float]:
        return {}

    def supersede_others(self, experiment_id, parent_id, run_name: str, run_id) -> list[str]:
        return []

    def set_runs_view(self, experiment_id, view: str) -> None:
        pass

    def runs_url(self, experiment_id) -> str:
        return ""

    def curves_url(self, experiment_id) -> str:
        return ""


class Tracker:
    """Creates the experiment, the parent run and the child runs (rank 0; other ranks get a `NullTracker`)."""

    def __init__(self):
        from mlflow import MlflowClient

        self.uri = tracking_uri()
        with store_lock(self.uri):  # opening a sqlite store creates and migrates it when new
            self.client = MlflowClient(self.uri)

    def check(self) -> None:
        """Fail early, before any training, when the tracking store cannot be used."""
        if self.uri.startswith(("http://", "https://")):
            import requests

            try:
                requests.get(self.uri.rstrip("/") + "/health", timeout=10).raise_for_status()
            except requests.RequestException as err:
                raise TrackingError(f"MLflow tracking server {self.uri} is not reachable "
                                    f"({type(err).__name__}); start it or fix MLFLOW_TRACKING_URI") from None
            return
        try:
            with store_lock(self.uri):
                self.client.search_experiments(max_results=1)
        except Exception as err:
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise TrackingError(f"MLflow tracking store {self.uri} cannot be used: {first_line}") from None

    def experiment_id(self, name: str) -> str:
        """The experiment's id, created if new; tagged as a training experiment so MLflow's UI opens on its runs."""
        with store_lock(self.uri):
            experiment = self.client.get_experiment_by_name(name)
            if experiment is None:
                try:
                    return self.client.create_experiment(
                        name, tags={record.TAG_EXPERIMENT_KIND: record.EXPERIMENT_KIND_TRAINING,
                                    record.TAG_CURVES_VIEW: curves_view_json()})
                except Exception:  # created meanwhile by another process (a server has no lock)
                    experiment = self.client.get_experiment_by_name(name)
                    if experiment is None:
                        raise
        if experiment.lifecycle_stage == "deleted":
            raise TrackingError(f"tracking.experiment: MLflow experiment {name!r} is deleted; restore it "
                                f"(`mlflow experiments restore --experiment-id {experiment.experiment_id}`) "
                                f"or choose another name")
        if record.TAG_EXPERIMENT_KIND not in experiment.tags:  # made before datgpt set it
            self.client.set_experiment_tag(experiment.experiment_id, record.TAG_EXPERIMENT_KIND,
                                           record.EXPERIMENT_KIND_TRAINING)
        view = curves_view_json()
        if experiment.tags.get(record.TAG_CURVES_VIEW) != view:  # made by an older datgpt, or before views
            self.client.set_experiment_tag(experiment.experiment_id, record.TAG_CURVES_VIEW, view)
        return experiment.experiment_id

    def _log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, _param_value(v)) for k, v in params.items()]
        for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
            self.client.log_batch(run_id, params=items[i:i + MAX_PARAMS_PER_BATCH])

    def start_run(self, experiment_id: str, run_name: str, tags: dict[str, str],
                  params: dict[str, Any]) -> str:
        run = self.client.create_run(experiment_id, run_name=run_name,
                                     tags={k: str(v) for k, v in tags.items()})
        self._log_params(run.info.run_id, params)
        return run.info.run_id

    def logger(self, run_id: str) -> RunLogger:
        return RunLogger(self.client, run_id)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.client.log_text(run_id, text, artifact_file)

    def log_artifacts(self, run_id: str, folder: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(run_id, str(folder), artifact_path)

    def set_runs_view(self, experiment_id: str, view: str) -> None:
        """Store the runs table's shared view (training/mlflow_view.py `runs_view`) on the experiment."""
        if self.client.get_experiment(experiment_id).tags.get(record.TAG_RUNS_VIEW) != view:
            self.client.set_experiment_tag(experiment_id, record.TAG_RUNS_VIEW, view)

    def runs_url(self, experiment_id: str) -> str:
        """Where the experiment's runs table opens, with the shared view :func:`runs_view` (the answer's
        columns beside each parent run): the server itself, or `mlflow ui`'s default address for a local
        store (with the command that serves it)."""
        return self._url(f"#/experiments/{experiment_id}/runs?workflowType=machine_learning"
                         f"&viewStateShareKey={record.RUNS_VIEW_KEY}&compareRunsMode=TABLE")

    def curves_url(self, experiment_id: str) -> str:
        """Where the experiment's training curves open: the runs page in chart mode with the shared view
        :func:`curves_view` (losses first, against tokens, one curve per run, grouped by arm)."""
        return self._url(f"#/experiments/{experiment_id}/runs?workflowType=machine_learning"
                         f"&viewStateShareKey={record.CURVES_VIEW_KEY}&compareRunsMode=CHART")

    def _url(self, page: str) -> str:
        if self.uri.startswith(("http://", "https://")):
            return f"{self.uri.rstrip('/')}/{page}"
        default = self.uri in ("sqlite:///mlflow.db", f"sqlite:///{Path.cwd() / 'mlflow.db'}")  # MLflow's own
        serve = "mlflow ui" if default else f"mlflow ui --backend-store-uri {self.uri}"
        return f"http://127.0.0.1:5000/{page}  (after `{serve}` in this folder)"

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        """Log a few metrics synchronously (the parent run's answer)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        for i in range(0, len(items), MAX_METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=items[i:i + MAX_METRICS_PER_BATCH])

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        self.client.set_tag(run_id, key, value)

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def copy_history(self, source_run_id: str, run_id: str, max_step: int) -> int:
        """Copy every metric of `source_run_id` logged at steps <= `max_step` into `run_id` (a cooldown
        branch gets its trunk's curve up to the branch point, so each run's curve is whole); returns the
        number of values copied."""
        from mlflow.entities import Metric

        copied = []
        for key in self.client.get_run(source_run_id).data.metrics:
            copied += [Metric(m.key, m.value, m.timestamp, m.step)
                       for m in self.client.get_metric_history(source_run_id, key) if m.step <= max_step]
        for i in range(0, len(copied), MAX_METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=copied[i:i + MAX_METRICS_PER_BATCH])
        return len(copied)

    def reopen(self, run_id: str) -> None:
        """Mark a run RUNNING again to continue it (resume)."""
        self.client.update_run(run_id, status="RUNNING")

    def run_status(self, run_id: str) -> str:
        return self.client.get_run(run_id).info.status

    def metrics(self, run_id: str) -> dict[str, float]:
        """A run's metrics, the last value of each."""
        return self.client.get_run(run_id).data.metrics

    def supersede_others(self, experiment_id: str, parent_id: str, run_name: str, run_id: str) -> list[str]:
        """Tag every child run of `parent_id` named `run_name` but `run_id` (and not superseded yet) as
        superseded by `run_id`, and mark those still RUNNING as KILLED; returns their ids, oldest first."""
        query = (f"tags.`{record.TAG_PARENT}` = '{parent_id}' AND tags.`{record.TAG_ROLE}` = '{record.ROLE_CHILD}' "
                 f"AND attributes.run_name = '{run_name}'")
        runs = self.client.search_runs([experiment_id], query, order_by=["attributes.start_time ASC"],
                                       max_results=1000)
        superseded = []
        for run in runs:
            if run.info.run_id == run_id or record.TAG_SUPERSEDED_BY in run.data.tags:
                continue
            self.client.set_tag(run.info.run_id, record.TAG_SUPERSEDED_BY, run_id)
            if run.info.status in ("RUNNING", "SCHEDULED"):
                self.client.set_terminated(run.info.run_id, status="KILLED")
            superseded.append(run.info.run_id)
        return superseded


def main(argv: list[str] | None = None) -> int:
    """`python -m training.tracking sync FILE...`: upload metrics kept locally while MLflow was down."""
    from training.cli import EXIT_BAD_INPUT, OneLineParser

    parser = OneLineParser(prog="python -m training.tracking")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    sync = sub.add_parser("sync", help="upload mlflow-unsynced/<run_id>.jsonl records to MLFLOW_TRACKING_URI")
    sync.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)
    for path in args.files:
        if not path.is_file():
            print(f"error: {path}: no such file", file=sys.stderr)
            return EXIT_BAD_INPUT
        try:
            sent = sync_unsynced(path)
        except Exception as err:
            print(f"error: {path}: could not sync to {tracking_uri()} ({type(err).__name__}: {err})", file=sys.stderr)
            return EXIT_BAD_INPUT
        print(f"{path}: {sent} metrics sent to run {path.stem}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
