"""MLflow tracking: one parent run per invocation, one child run per (arm, seed).

Only global rank 0 talks to MLflow. Metrics are buffered in memory and handed to MLflow's async
logging in batches, so logging stays off the training step's critical path; `close()` flushes and
waits. The tracking URI is MLflow's: `MLFLOW_TRACKING_URI`, else its default (`sqlite:///mlflow.db`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from analysis import record
from training.mlflow_view import curves_view_json

MAX_METRICS_PER_BATCH = 1000  # MLflow's limit per log_batch call
MAX_PARAMS_PER_BATCH = 100
MAX_PARAM_CHARS = 6000
FLUSH_WAIT_S = 20.0  # longest a checkpoint waits for MLflow to store the metrics logged so far
FLUSH_EVERY_S = 5.0  # metrics reach MLflow at least this often (the UI shows a run's curves as it trains)


def _done_within(operation, seconds: float) -> bool:
    """Whether an MLflow async operation has finished within `seconds` (without raising its error)."""
    from concurrent.futures import wait

    futures = getattr(operation, "_operation_futures", None)
    if futures is None:  # another MLflow: fall back to its blocking wait
        return True
    done, not_done = wait(futures, timeout=max(0.0, seconds))
    return not not_done


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


class RunLogger:
    """Buffered metric logging into one MLflow run that survives a lost tracking server.

    `log()` only appends to a buffer; `flush()` hands batches to MLflow's async queue when 1,000 metrics are
    buffered or every 5 s. Batches that fail (server down) go back into the buffer and are retried at the
    next flush; a checkpoint waits for the server at most `wait_timeout` seconds, once; whatever still
    fails when the run closes is written to `mlflow-unsynced/<run_id>.jsonl`, which `python -m
    training.tracking sync FILE` uploads later. Training never stops for the tracker.
    """

    def __init__(self, client, run_id: str, flush_every: int = MAX_METRICS_PER_BATCH,
                 unsynced_dir: Path = Path("mlflow-unsynced"), wait_timeout: float = FLUSH_WAIT_S,
                 flush_every_s: float = FLUSH_EVERY_S):
        self.client = client
        self.run_id = run_id
        self.flush_every = flush_every
        self.unsynced_dir = unsynced_dir
        self.wait_timeout = wait_timeout
        self.flush_every_s = flush_every_s
        self._last_flush = time.monotonic()
        self._buffer: list = []
        self._pending: list = []
        self._warned = False
        self._stalled = False  # batches were still in flight at the last deadline
        self._uploads = None  # a one-thread pool for artifacts (log_text), made on first use
        self.last_error: Exception | None = None

    def log(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._buffer.extend(Metric(key, float(value), now, step) for key, value in metrics.items())
        if len(self._buffer) >= self.flush_every or time.monotonic() - self._last_flush >= self.flush_every_s:
            self.flush()

    def flush(self, wait: bool = False) -> None:
        """Hand the buffer to MLflow's async queue; with `wait` (at a checkpoint), wait until it is stored or
        failed, but at most `wait_timeout` seconds: while the server is away, training goes on and what is
        in flight stays with MLflow's queue, which keeps retrying it."""
        self._last_flush = time.monotonic()
        while self._buffer:
            chunk, self._buffer = self._buffer[:MAX_METRICS_PER_BATCH], self._buffer[MAX_METRICS_PER_BATCH:]
            try:
                self._pending.append((self.client.log_batch(self.run_id, metrics=chunk, synchronous=False), chunk))
            except Exception as err:  # the queue itself refused: keep the metrics for later
                self.last_error = err
                self._buffer = chunk + self._buffer
                break
        if wait:  # once the server has missed a deadline, do not wait again until it has caught up
            self._wait(0.0 if self._stalled else self.wait_timeout)

    def log_text(self, text: str, artifact_file: str) -> None:
        """Upload a small text artifact (e.g. a diagnostics table) in the background, so a slow or lost
        server never holds training up; what fails is kept in `mlflow-unsynced/<run_id>/<artifact_file>`
        (uploaded by `python -m training.tracking sync`)."""
        from concurrent.futures import ThreadPoolExecutor

        if self._uploads is None:
            self._uploads = ThreadPoolExecutor(max_workers=1, thread_name_prefix="datgpt-artifacts")
        self._uploads.submit(self._upload, text, artifact_file)

    def _upload(self, text: str, artifact_file: str) -> None:
        try:
            self.client.log_text(self.run_id, text, artifact_file)
        except Exception as err:
            self.last_error = err
            path = self.unsynced_dir / self.run_id / artifact_file
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")

    def _wait(self, timeout: float | None = None) -> None:
        """Collect finished batches (failed ones go back into the buffer); with a timeout, leave the
        ones still in flight pending."""
        deadline = None if timeout is None else time.monotonic() + timeout
        failed, in_flight = [], []
        for operation, chunk in self._pending:
            if operation is None:
                continue
            if deadline is not None and not _done_within(operation, deadline - time.monotonic()):
                in_flight.append((operation, chunk))
                continue
            try:
                operation.wait()
            except Exception as err:
                self.last_error = err
                failed.extend(chunk)
        if in_flight and not self._warned:
            self._warned = True
            print(f"warning: MLflow has not stored run {self.run_id}'s metrics within {timeout:.0f} s; training "
                  f"goes on and they are retried (kept locally if they still fail when the run ends)",
                  file=sys.stderr)
        self._stalled = bool(in_flight)
        self._pending = in_flight
        self._buffer = failed + self._buffer

    def close(self, status: str = "FINISHED") -> Path | None:
        """Flush everything and end the run; returns the local record when MLflow could not take it."""
        self.flush()
        self._wait()  # no time limit: MLflow's own retries decide
        if self._uploads is not None:  # the artifacts handed over so far (failures are kept locally)
            self._uploads.shutdown(wait=True)
            self._uploads = None
        if self._buffer:  # one last synchronous try
            try:
                for i in range(0, len(self._buffer), MAX_METRICS_PER_BATCH):
                    self.client.log_batch(self.run_id, metrics=self._buffer[i:i + MAX_METRICS_PER_BATCH])
                self._buffer.clear()
            except Exception as err:
                self.last_error = err
        kept_artifacts = (self.unsynced_dir / self.run_id).is_dir()  # sync uploads them with the record
        try:
            if not self._buffer and not kept_artifacts:
                self.client.set_terminated(self.run_id, status=status)
                return None
        except Exception as err:
            self.last_error = err
        return self._write_unsynced(status)

    def _write_unsynced(self, status: str) -> Path:
        self.unsynced_dir.mkdir(parents=True, exist_ok=True)
        path = self.unsynced_dir / f"{self.run_id}.jsonl"
        with open(path, "a", encoding="utf-8") as f:
            for m in self._buffer:
                f.write(json.dumps({"key": m.key, "value": m.value, "timestamp": m.timestamp, "step": m.step}) + "\n")
            f.write(json.dumps({"status": status}) + "\n")
        self._buffer.clear()
        return path


def sync_unsynced(path: Path, client=None) -> int:
    """Upload a local record written by `RunLogger` when the server was lost (its metrics, then the artifacts
    kept in the folder of the same name, then the run's status); returns the metrics sent."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = client or MlflowClient()
    metrics, status = [], None
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if "status" in row:
            status = row["status"]
        else:
            metrics.append(Metric(row["key"], row["value"], row["timestamp"], row["step"]))
    run_id = Path(path).stem
    for i in range(0, len(metrics), MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=metrics[i:i + MAX_METRICS_PER_BATCH])
    artifacts = Path(path).with_suffix("")
    if artifacts.is_dir():
        client.log_artifacts(run_id, str(artifacts))
        shutil.rmtree(artifacts)
    if status:
        client.set_terminated(run_id, status=status)
    Path(path).unlink()
    return len(metrics)


class NullLogger:
    """What ranks other than 0 get: logging does nothing."""

    run_id = None

    def log(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def flush(self, wait: bool = False) -> None:
        pass

    def log_text(self, text: str, artifact_file: str) -> None:
        pass

    def close(self, status: str = "FINISHED") -> None:
        pass


class Tracker:
    """Creates the experiment, the parent run and the child runs (rank 0 only)."""

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

    def runs_url(self, experiment_id: str) -> str:
        """Where the experiment's runs table opens: the server itself, or `mlflow ui`'s default address for a
        local store (with the command that serves it)."""
        return self._url(f"#/experiments/{experiment_id}?workflowType=machine_learning")

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


def main(argv: list[str] | None = None) -> int:
    """`python -m training.tracking sync FILE...`: upload metrics kept locally while MLflow was down."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m training.tracking")
    sub = parser.add_subparsers(dest="command", required=True)
    sync = sub.add_parser("sync", help="upload mlflow-unsynced/<run_id>.jsonl records to MLFLOW_TRACKING_URI")
    sync.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)
    for path in args.files:
        if not path.is_file():
            print(f"error: {path}: no such file", file=sys.stderr)
            return 2
        try:
            sent = sync_unsynced(path)
        except Exception as err:
            print(f"error: {path}: could not sync to {tracking_uri()} ({type(err).__name__}: {err})", file=sys.stderr)
            return 2
        print(f"{path}: {sent} metrics sent to run {path.stem}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
