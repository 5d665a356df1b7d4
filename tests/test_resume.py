"""Checkpoints, exact resume, preemption and faults."""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from training import checkpoint as ckpt
from training import trainer as trainer_mod
from training.checkpoint import CheckpointError, checkpoints_in, load_latest
from training.data.corpus import load_splits
from training.distributed import DistInfo
from training.experiment import load_experiment
from training.run_logger import RunLogger, sync_unsynced
from training.trainer import CheckpointPlan, TrainingDiverged, train_arm

from test_runner import MUON_ARMS

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "name": "tiny_resume",
    "data": {"dataset": "verdict"},
    "model": {"n_layers": 2, "n_heads": 2, "n_embd": 32, "context_length": 32},
    "train": {"tokens": 6144, "micro_batch_size": 4, "grad_accum_steps": 2, "eval_every_tokens": 1024,
              "eval_tokens": 256},
    "optim": {"lr": 3e-3, "warmup_tokens": 256},
    "checkpoint": {"every_tokens": 256, "keep_last": 2},
    # resume is tested here; diagnostics, samples and model logging in test_runner/test_diagnostics/test_sample
    "tracking": {"log_diagnostics": False, "log_samples": False, "log_models": False},
    "arms": {"gpt": {"model": {"kind": "gpt"}},
             "ngpt": {"model": {"kind": "ngpt"}, "optim": {"lr": 1e-2, "weight_decay": 0.0, "warmup_tokens": 0}}},
    "targets": [10.6, 10.3, 10.0],  # reached within the run: the resumed summary has numbers to compare
}
TINY_MUON = {**TINY, "arms": MUON_ARMS}  # GPT + QK-norm trained by Muon, alone: checkpoints hold Muon's buffers


def write_yaml(folder: Path, raw: dict = TINY) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def start(folder: Path, *args: str, entry: list[str] | None = None) -> subprocess.Popen:
    """The runner on folder/tiny.yaml in a process of its own (`entry`: another command that runs it)."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder}/mlflow.db"}
    entry = entry or [sys.executable, str(ROOT / "runner.py")]
    return subprocess.Popen([*entry, str(folder / "tiny.yaml"), "--no-progress", *args], cwd=folder, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 600) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def wait_for_checkpoint(folder: Path, arm: str, step: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = list((folder / "checkpoints" / "tiny_resume").glob(f"*/{arm}-seed0/step_*.pt"))
        if any(int(p.stem.split("_")[1]) >= step for p in found):
            return
        if proc.poll() is not None:
            pytest.fail(f"runner ended early: {proc.stderr.read()[-2000:]}")
        time.sleep(0.02)
    pytest.fail("no checkpoint appeared")


def histories(folder: Path) -> dict:
    """Per arm: status, run id, and train/val loss per step (last value logged for a step wins)."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{folder}/mlflow.db")
    exp = client.get_experiment_by_name("tiny_resume")
    runs = client.search_runs([exp.experiment_id])
    out = {"parents": [r.info.status for r in runs if r.data.tags.get("datgpt.role") == "parent"]}
    for run in runs:
        if run.data.tags.get("datgpt.role") != "child":
            continue
        curves = {}
        for key in ("train/loss", "val/loss", "tokens"):
            by_step = {}
            for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.timestamp):
                by_step[m.step] = m.value
            curves[key] = [by_step[s] for s in sorted(by_step)]
        assert run.data.tags["datgpt.arm"] not in out, "one child run per arm"
        out[run.data.tags["datgpt.arm"]] = {"status": run.info.status, **curves}
    # the answer on the parent run, but for wall-clock numbers (a resumed run's time differs)
    (parent,) = [r for r in runs if r.data.tags.get("datgpt.role") == "parent"]
    out["answer"] = {k: v for k, v in parent.data.metrics.items() if "seconds" not in k and "time_" not in k}
    return out


def _uninterrupted(folder: Path, raw: dict) -> dict:
    write_yaml(folder, raw)
    code, out, err = finish(start(folder))
    assert code == 0, err[-3000:]
    return histories(folder)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_dir=None):
    return _uninterrupted(tmp_path_factory.mktemp("uninterrupted"), TINY)


def _assert_same_curves(resumed: dict, reference: dict, arms: tuple[str, ...] = ("gpt", "ngpt")) -> None:
    for arm in arms:
        assert resumed[arm]["status"] == "FINISHED"
        for key in ("train/loss", "val/loss", "tokens"):
            assert len(resumed[arm][key]) == len(reference[arm][key]) > 5
            assert resumed[arm][key] == reference[arm][key], (arm, key)  # bitwise on CPU
    assert resumed["parents"] == ["FINISHED"]
    # the invocation's answer (tokens to each target, speedups, final losses) is the uninterrupted one's
    reached = [k for k in reference["answer"] if "tokens_to_target" in k]
    assert reached and resumed["answer"] == reference["answer"]


def _kill_and_resume(folder: Path, reference: dict, raw: dict, arm: str) -> tuple[dict, str]:
    """SIGKILL the runner once `arm` checkpointed a random step, run the same command again, and check every
    arm's curves and the answer against `reference`; returns the killed run's last checkpoint and what the
    resumed run printed."""
    write_yaml(folder, raw)
    # a new step each run; a failure names its seed, and DATGPT_TEST_KILL_SEED=<seed> replays it
    seed = int(os.environ.get("DATGPT_TEST_KILL_SEED", time.time_ns() % 100_000))
    kill_at = random.Random(seed).randint(3, 16)  # of 24 steps per arm (the kill lands a step or two later)
    proc = start(folder)
    wait_for_checkpoint(folder, arm, kill_at, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = load_latest(next((folder / "checkpoints" / "tiny_resume").glob(f"*/{arm}-seed0")))
    replay = f"killed at {arm} step >= {kill_at}; replay with DATGPT_TEST_KILL_SEED={seed}"
    code, out, err = finish(start(folder))  # same command: resumes automatically
    assert code == 0, (replay, err[-3000:])
    assert f"{arm} seed 0: resuming at step" in out, (replay, out)
    try:
        _assert_same_curves(histories(folder), reference, tuple(raw["arms"]))
    except AssertionError as err:
        raise AssertionError(f"{replay}: {err}") from err
    return killed, out


def test_sigkill_at_a_random_step_then_resume_gives_the_same_curve(tmp_path, uninterrupted, data_dir):
    _, out = _kill_and_resume(tmp_path, uninterrupted, TINY, "ngpt")
    assert "gpt seed 0: finished earlier" in out


def test_sigkill_of_a_muon_arm_then_resume_gives_the_same_curve(tmp_path, data_dir):
    """The same with Muon: its momentum buffers (and the AdamW part's moments) are in the checkpoint."""
    reference = _uninterrupted(tmp_path / "uninterrupted", TINY_MUON)
    killed, _ = _kill_and_resume(tmp_path / "killed", reference, TINY_MUON, "gpt_muon")
    muon, adamw = killed["optimizer"]["muon"], killed["optimizer"]["adamw"]
    assert len(muon["state"]) == 8 and all(s["momentum_buffer"].abs().sum() > 0 for s in muon["state"].values())
    assert [g["parts"] for g in muon["param_groups"]] == [3, 1, 2]  # qkv, the projections, SwiGLU's fc
    assert len(adamw["state"]) == 2 + 5 + 4  # embedding and head; RMSNorm and QK-norm weights


def test_sigterm_saves_a_checkpoint_that_resumes(tmp_path, uninterrupted, data_dir):
    write_yaml(tmp_path)
    proc = start(tmp_path)
    wait_for_checkpoint(tmp_path, "gpt", 5, proc)
    proc.send_signal(signal.SIGTERM)
    code, out, err = finish(proc)
    assert code == 128 + signal.SIGTERM, err[-3000:]
    assert "checkpoint saved at" in err and "Run the same command again to resume" in err
    mid = histories(tmp_path)
    assert mid["gpt"]["status"] == "KILLED" and mid["parents"] == ["KILLED"] and "ngpt" not in mid
    saved = load_latest(next((tmp_path / "checkpoints" / "tiny_resume").glob("*/gpt-seed0")))
    assert not saved["finished"] and saved["step"] >= 5

    changed = finish(start(tmp_path, "--set", "optim.lr=1e-3"))  # another config: refused
    assert changed[0] == 2 and "was written under another config" in changed[2]
    assert changed[2].count("\n") == 1

    code, out, err = finish(start(tmp_path))
    assert code == 0, err[-3000:]
    assert f"gpt seed 0: resuming at step {saved['step']}" in out
    _assert_same_curves(histories(tmp_path), uninterrupted)


def test_resume_needs_an_unfinished_invocation(tmp_path, data_dir):
    """--no-resume, --resume ID|FOLDER and --force are run in test_resume_options.py."""
    write_yaml(tmp_path)
    code, _, err = finish(start(tmp_path, "--resume"))
    assert code == 2 and "--resume: no unfinished run of experiment 'tiny_resume'" in err


def _tiny_arm(tmp_path: Path, arm_name: str = "gpt"):
    cfg = load_experiment(write_yaml(tmp_path))
    arm = next(a for a in cfg.arms if a.name == arm_name)
    return cfg, arm, load_splits(cfg.data, cfg.tokenizer, arm.model.context_length)


class ListLogger:
    run_id = "test"

    def __init__(self):
        self.rows = []

    def log(self, step, metrics):
        self.rows.append((step, metrics))

    def flush(self, wait=False):
        pass

    def close(self, status="FINISHED"):
        pass


def test_nan_is_caught_at_its_step_without_a_checkpoint(tmp_path, monkeypatch, data_dir):
    cfg, arm, splits = _tiny_arm(tmp_path)
    real_build = trainer_mod.build_model
    nan_step = 7

    def build_with_fault(config):
        model = real_build(config)
        original = model.forward
        calls = {"n": 0}

        def forward(idx, targets=None):
            logits, loss = original(idx, targets)
            if targets is not None and model.training:
                calls["n"] += 1  # 2 micro-batches per step
                if calls["n"] == 2 * nan_step:
                    loss = loss * float("nan")
            return logits, loss

        model.forward = forward
        return model

    monkeypatch.setattr(trainer_mod, "build_model", build_with_fault)
    folder = tmp_path / "ckpt"
    plan = CheckpointPlan(folder, every_tokens=256, keep_last=100, identity={"config_hash": "x", "run_id": "r"})
    with pytest.raises(TrainingDiverged, match=f"training loss is nan at step {nan_step}"):
        train_arm(arm, 0, splits, DistInfo(), ListLogger(), progress=False, checkpoints=plan)
    steps = [int(p.stem.split("_")[1]) for p in checkpoints_in(folder)]
    assert steps == list(range(1, nan_step))  # the good checkpoints stay; none of the NaN step
    assert torch.isfinite(load_latest(folder)["model"]["lm_head.weight"]).all()


def test_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch, data_dir):
    cfg, arm, splits = _tiny_arm(tmp_path)
    real_save = torch.save
    calls = {"n": 0}

    def failing_save(obj, f):
        calls["n"] += 1
        if calls["n"] == 3:
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f)

    monkeypatch.setattr(ckpt.torch, "save", failing_save)
    folder = tmp_path / "ckpt"
    plan = CheckpointPlan(folder, every_tokens=256, keep_last=1, identity={"config_hash": "x", "run_id": "r"})
    with pytest.raises(CheckpointError, match="No space left on device.*previous checkpoint is intact"):
        train_arm(arm, 0, splits, DistInfo(), ListLogger(), progress=False, checkpoints=plan)
    assert [p.name for p in folder.iterdir()] == ["step_00000002.pt"]  # no temp file left behind
    assert load_latest(folder)["step"] == 2


def test_unwritable_checkpoint_folder_is_reported_before_training(tmp_path, data_dir):
    write_yaml(tmp_path)
    (tmp_path / "blocker").write_text("a file where a folder should be")
    code, out, err = finish(start(tmp_path, "--set", "checkpoint.dir=blocker/ckpt"))
    assert code == 2 and err.startswith("error: checkpoint.dir: cannot write checkpoints to blocker/ckpt")
    assert "Traceback" not in err and not (tmp_path / "mlflow.db").exists()


class FailingOperation:
    def wait(self):
        raise ConnectionError("tracking server went away")


class LostServerClient:
    """A client whose server disappears: every batch fails, and so does ending the run."""

    def __init__(self):
        self.calls = 0

    def log_batch(self, run_id, metrics=(), synchronous=None):
        self.calls += 1
        if synchronous is False:
            return FailingOperation()
        raise ConnectionError("tracking server went away")

    def set_terminated(self, run_id, status="FINISHED"):
        raise ConnectionError("tracking server went away")


def test_lost_tracking_server_loses_no_training_and_no_metrics(tmp_path, data_dir):
    cfg, arm, splits = _tiny_arm(tmp_path)
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run_id = client.create_run(client.create_experiment("lost")).info.run_id
    logger = RunLogger(LostServerClient(), run_id, flush_every=20, unsynced_dir=tmp_path / "unsynced")
    result = train_arm(arm, 0, splits, DistInfo(), logger, progress=False)
    assert result.tokens_seen == 6144  # training went on
    record = logger.close("FINISHED")
    assert record == tmp_path / "unsynced" / f"{run_id}.jsonl"
    sent = sync_unsynced(record, client)  # the server is back: upload the local record
    assert sent > 24 * 5 and not record.exists()
    history = client.get_metric_history(run_id, "train/loss")
    assert len({m.step for m in history}) == 24
    assert client.get_run(run_id).info.status == "FINISHED"
