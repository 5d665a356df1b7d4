"""A real `mlflow server` that goes away in the middle of training and comes back: nothing is lost."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from analysis import record

ROOT = Path(__file__).resolve().parents[1]
STEPS = 200  # 128 tokens a step; the run hands MLflow a batch every 5 s
RUN = {
    "name": "outage",
    "data": {"dataset": "verdict"},
    "model": {"n_layers": 1, "n_heads": 2, "n_embd": 32, "context_length": 32},
    "train": {"tokens": STEPS * 128, "micro_batch_size": 4, "grad_accum_steps": 1, "eval_every_tokens": 6400,
              "eval_tokens": 256},
    "optim": {"lr": 3e-3, "warmup_tokens": 256},
    "checkpoint": {"every_tokens": 1280, "keep_last": 1},
    "tracking": {"log_diagnostics": False, "log_samples": False, "log_models": False},
    "arms": {"gpt": {"model": {"kind": "gpt"}}},
    "targets": [10.0],
}


class Server:
    """`mlflow server` on one port and one store, which the test can stop and start again."""

    def __init__(self, folder: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.folder, self.proc, self.uri = folder, None, f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        import requests

        log = open(self.folder / "server.log", "a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", f"sqlite:///{self.folder}/server.db",
             "--artifacts-destination", str(self.folder / "artifacts"), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if requests.get(self.uri + "/health", timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            if self.proc.poll() is not None:
                pytest.fail(f"mlflow server exited: {(self.folder / 'server.log').read_text()[-2000:]}")
            time.sleep(0.3)
        pytest.fail("mlflow server did not start within 120 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)


def _latest_step(folder: Path) -> int:
    found = list((folder / "checkpoints" / "outage").glob("*/gpt-seed0/step_*.pt"))
    return max((int(p.stem.split("_")[1]) for p in found), default=0)


def _wait(condition, proc, what: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        if proc.poll() is not None:
            pytest.fail(f"runner ended before {what}: {proc.stderr.read()[-3000:]}")
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def test_server_lost_mid_run_and_back_loses_nothing(tmp_path, data_dir):
    from mlflow import MlflowClient

    server = Server(tmp_path)
    server.start()
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(RUN))
    env = {**os.environ, "MLFLOW_TRACKING_URI": server.uri}
    proc = subprocess.Popen([sys.executable, str(ROOT / "runner.py"), "run.yaml", "--no-progress"], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        client = MlflowClient(server.uri)

        def first_batch_stored() -> bool:  # the run has handed MLflow its first batch of metrics
            exp = client.get_experiment_by_name("outage")
            runs = client.search_runs([exp.experiment_id]) if exp else []
            child = [r for r in runs if r.data.tags.get(record.TAG_ROLE) == record.ROLE_CHILD]
            return bool(child) and bool(client.get_metric_history(child[0].info.run_id, record.TRAIN_LOSS))

        _wait(first_batch_stored, proc, "the first metrics batch")
        server.stop()  # the server goes away while the run trains on
        lost_at = _latest_step(tmp_path)
        # train on through a checkpoint (which gives up waiting for the server) and a batch hand-over
        _wait(lambda: _latest_step(tmp_path) >= min(lost_at + 60, STEPS - 20), proc, "training without a server")
        server.start()  # ... and comes back before the run ends
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        assert lost_at < STEPS - 60, "the outage must cover a batch hand-over: make the run longer"

        unsynced = list((tmp_path / "mlflow-unsynced").glob("*.jsonl"))
        for path in unsynced:  # what could not be sent is kept locally: upload it as README says
            sync = subprocess.run([sys.executable, "-m", "training.tracking", "sync", str(path)], cwd=tmp_path,
                                  env=env, capture_output=True, text=True, timeout=300)
            assert sync.returncode == 0, sync.stderr
        client = MlflowClient(server.uri)
        runs = client.search_runs([client.get_experiment_by_name("outage").experiment_id])
        (child,) = [r for r in runs if r.data.tags[record.TAG_ROLE] == record.ROLE_CHILD]
        (parent,) = [r for r in runs if r.data.tags[record.TAG_ROLE] == record.ROLE_PARENT]
        assert child.info.status == "FINISHED" and parent.info.status == "FINISHED"
        for key in (record.TRAIN_LOSS, record.LR, record.TOKENS):
            steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, key))
            expected = list(range(1, STEPS + 1)) if key != record.TOKENS else list(range(0, STEPS + 1))
            assert steps == expected, key  # every step once: nothing lost, nothing twice
        evals = sorted(m.step for m in client.get_metric_history(child.info.run_id, record.VAL_LOSS))
        assert evals == [0, 50, 100, 150, 200]
        assert record.answer_metric("gpt", "final_val_loss") in parent.data.metrics
    finally:
        if proc.poll() is None:
            proc.kill()
        server.stop()
