"""Metric logging into one MLflow run that survives a lost tracking server (rank 0's `RunLogger`; the other
ranks get a `NullLogger`), and the local record of what MLflow did not take, uploaded later by
`sync_unsynced` (`python -m training.tracking sync FILE`).

Metrics are buffered in memory and handed to MLflow's async logging in batches, so logging stays off the
training step's critical path; `close()` flushes and waits.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

MAX_METRICS_PER_BATCH = 1000  # MLflow's limit per log_batch call
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
