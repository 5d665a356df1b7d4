"""What a runner that dies leaves in MLflow. After each death (SIGKILL as a unit's child run appears, an
exception in a unit, SIGTERM during the report, SIGKILL between two units, a rank other than 0 killed under
torchrun) the same command again leaves one live child run per unit, one parent run, and nothing RUNNING.

Most deaths are placed exactly with a runner whose `training.session.<function>` signals its own process
when called (`dying_at`); the first test polls the store and kills from outside, as `kill -9` would."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import pytest

import runner
from analysis import record
from test_resume import ROOT, finish, start, wait_for_checkpoint, write_yaml
from training import session
from training.checkpoint import checkpoints_in

EXPERIMENT = "tiny_resume"  # test_resume.TINY: arms gpt and ngpt, seed 0, 24 steps each
UNITS = ["gpt-seed0", "ngpt-seed0"]
LATE_CHECKPOINT = ("--set", "checkpoint.every_tokens=4096")  # the first checkpoint at step 16 of 24
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]

DYING_RUNNER = """import os, signal, sys
sys.path.insert(0, {root!r})
import runner
from training import session

real = session.{function}


def dying(*args, **kwargs):
    if {condition}:
        os.kill(os.getpid(), signal.{sig})
    return real(*args, **kwargs)


session.{function} = dying
sys.exit(runner.main())
"""


def dying_at(folder: Path, function: str, sig: str, condition: str = "True") -> Path:
    """A script that runs the runner as runner.py does, but whose `training.session.<function>` sends
    `sig` to its own process when called with arguments (`args`, `kwargs`) for which `condition` holds."""
    script = folder / f"dying_at_{function}.py"
    script.write_text(DYING_RUNNER.format(root=str(ROOT), function=function, sig=sig, condition=condition))
    return script


def store_runs(folder: Path) -> tuple[list, dict[str, list]]:
    """The experiment's parent runs, and its child runs by unit (run name)."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{folder}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    parents = [r for r in runs if r.data.tags.get(record.TAG_ROLE) == record.ROLE_PARENT]
    children: dict[str, list] = {}
    for r in runs:
        if r.data.tags.get(record.TAG_ROLE) == record.ROLE_CHILD:
            children.setdefault(r.info.run_name, []).append(r)
    return parents, children


def assert_one_live_child_per_unit(folder: Path) -> dict:
    """One parent run, FINISHED; per unit one live child run, FINISHED, any other child of the unit tagged
    superseded by it (and KILLED or FAILED); no run RUNNING. Returns each unit's live child run."""
    parents, children = store_runs(folder)
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert sorted(children) == UNITS
    live = {}
    for unit, runs in children.items():
        alive = [r for r in runs if record.TAG_SUPERSEDED_BY not in r.data.tags]
        assert len(alive) == 1, f"{unit}: {len(alive)} live child runs ({[r.info.status for r in runs]})"
        live[unit] = alive[0]
        assert alive[0].info.status == "FINISHED"
        for r in runs:
            if r is not alive[0]:
                assert r.data.tags[record.TAG_SUPERSEDED_BY] == alive[0].info.run_id
                assert r.info.status in ("KILLED", "FAILED")
    assert not [r for runs in children.values() for r in runs if r.info.status == "RUNNING"]
    return live


def superseded(folder: Path, unit: str) -> list:
    return [r for r in store_runs(folder)[1][unit] if record.TAG_SUPERSEDED_BY in r.data.tags]


def invocation_folder(folder: Path) -> Path:
    (found,) = (folder / "checkpoints" / EXPERIMENT).glob("*/invocation.json")
    return found.parent


def wait_for_child_run(folder: Path, unit: str, proc, timeout: float = 300) -> str:
    """Poll the store until the child run of `unit` appears; its id."""
    from mlflow import MlflowClient

    wait_for_checkpoint(folder, "gpt", 16, proc)  # the store exists: the gpt arm is at its first checkpoint
    client = MlflowClient(f"sqlite:///{folder}/mlflow.db")
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = client.search_runs([experiment_id], f"attributes.run_name = '{unit}'")
        if found:
            return found[0].info.run_id
        if proc.poll() is not None:
            pytest.fail(f"runner ended early: {proc.stderr.read()[-2000:]}")
        time.sleep(0.01)
    pytest.fail(f"no child run {unit} appeared")


def test_sigkill_as_a_child_run_appears_then_the_same_command(tmp_path, data_dir):
    """The issue's case: killed just after the ngpt child run was created, before its first checkpoint."""
    write_yaml(tmp_path)
    proc = start(tmp_path, *LATE_CHECKPOINT)
    killed = wait_for_child_run(tmp_path, "ngpt-seed0", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not checkpoints_in(invocation_folder(tmp_path) / "ngpt-seed0")  # before its first checkpoint
    assert [r.info.status for r in store_runs(tmp_path)[1]["ngpt-seed0"]] == ["RUNNING"]

    code, out, err = finish(start(tmp_path, *LATE_CHECKPOINT))  # the same command
    assert code == 0, err[-3000:]
    live = assert_one_live_child_per_unit(tmp_path)
    assert "gpt seed 0: finished earlier" in out and f"earlier run {killed} of this unit" in out
    (old,) = superseded(tmp_path, "ngpt-seed0")
    assert old.info.run_id == killed and old.info.status == "KILLED"
    assert old.data.tags[record.TAG_SUPERSEDED_BY] == live["ngpt-seed0"].info.run_id


def test_an_exception_in_a_unit_then_the_same_command(tmp_path, monkeypatch, data_dir):
    """A unit raises after logging a few steps, before its first checkpoint: its run is FAILED, and the same
    command trains it again in a new run that supersedes it."""
    path = write_yaml(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.chdir(tmp_path)
    real_train_arm = session.train_arm

    class FailingLogger:  # the ngpt unit's logger: raises once step 3 is logged
        def __init__(self, logger):
            self.logger = logger

        def log(self, step, metrics):
            self.logger.log(step, metrics)
            if step >= 3:
                raise RuntimeError("injected failure")

        def __getattr__(self, name):
            return getattr(self.logger, name)

    def failing(arm, seed, splits, dist, logger, **kwargs):
        return real_train_arm(arm, seed, splits, dist, FailingLogger(logger) if arm.name == "ngpt" else logger,
                              **kwargs)

    monkeypatch.setattr(session, "train_arm", failing)
    with pytest.raises(RuntimeError, match="injected failure"):
        runner.main([str(path), "--no-progress", *LATE_CHECKPOINT])
    parents, children = store_runs(tmp_path)
    assert [p.info.status for p in parents] == ["FAILED"] and children["ngpt-seed0"][0].info.status == "FAILED"

    monkeypatch.setattr(session, "train_arm", real_train_arm)
    assert runner.main([str(path), "--no-progress", *LATE_CHECKPOINT]) == 0  # the same command
    assert_one_live_child_per_unit(tmp_path)
    (old,) = superseded(tmp_path, "ngpt-seed0")
    assert old.info.status == "FAILED" and record.VAL_LOSS in old.data.metrics  # it had logged some steps


def test_sigterm_during_the_report_then_the_same_command(tmp_path, data_dir):
    """Every unit is trained; SIGTERM as the report starts stops at once (exit 143, parent KILLED); the
    same command makes only the report."""
    write_yaml(tmp_path)
    script = dying_at(tmp_path, "log_report", "SIGTERM")
    code, out, err = finish(start(tmp_path, entry=[sys.executable, str(script)]))
    assert code == 128 + signal.SIGTERM, err[-3000:]
    assert "stopped by signal 15; during the report" in err and "Run the same command again" in err
    parents, children = store_runs(tmp_path)
    assert [p.info.status for p in parents] == ["KILLED"]
    assert not [k for k in parents[0].data.metrics if k.startswith(record.ANSWER_PREFIX)]

    code, out, err = finish(start(tmp_path))  # the same command
    assert code == 0, err[-3000:]
    assert "gpt seed 0: finished earlier" in out and "ngpt seed 0: finished earlier" in out
    assert_one_live_child_per_unit(tmp_path)
    (parent,), _ = store_runs(tmp_path)
    assert record.answer_metric("ngpt", "final_val_loss") in parent.data.metrics  # the answer


def test_sigkill_between_two_units_then_the_same_command(tmp_path, data_dir):
    """Killed after the gpt unit's final checkpoint, while its run's end-of-run artifacts were being logged
    (its run still RUNNING): the same command does not train it again, logs them and finishes the run."""
    write_yaml(tmp_path)
    extras = ("--set", "tracking.log_samples=true", "--set", "tracking.log_diagnostics=true")
    script = dying_at(tmp_path, "end_of_run", "SIGKILL", condition="args[2].name == 'gpt'")
    code, _, err = finish(start(tmp_path, *extras, entry=[sys.executable, str(script)]))
    assert code == -signal.SIGKILL, err[-3000:]
    _, children = store_runs(tmp_path)
    assert [r.info.status for r in children["gpt-seed0"]] == ["RUNNING"] and "ngpt-seed0" not in children

    code, out, err = finish(start(tmp_path, *extras))  # the same command
    assert code == 0, err[-3000:]
    gpt = assert_one_live_child_per_unit(tmp_path)["gpt-seed0"]
    assert "gpt seed 0: finished earlier" in out and "was not closed; logging its end of run now" in out
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    assert Path(gpt.data.tags[record.TAG_CHECKPOINT]).name == "step_00000024.pt"
    assert {a.path for a in client.list_artifacts(gpt.info.run_id, "samples")} == {record.SAMPLES_ARTIFACT}
    assert record.DIAGNOSTICS_ARTIFACT in {a.path for a in client.list_artifacts(gpt.info.run_id,
                                                                                 record.DIAGNOSTICS_DIR)}


def test_a_rank_other_than_0_killed_under_torchrun_then_the_same_command(tmp_path, data_dir):
    """Two gloo processes; rank 1 is SIGKILLed as the ngpt unit starts (before its first checkpoint), so
    rank 0 fails or is stopped by torchrun; the same torchrun command finishes with one live run per unit."""
    write_yaml(tmp_path)
    script = dying_at(tmp_path, "train_arm", "SIGKILL",
                      condition="os.environ['RANK'] == '1' and args[0].name == 'ngpt'")
    code, _, err = finish(start(tmp_path, *LATE_CHECKPOINT, entry=[*TORCHRUN, str(script)]))
    assert code != 0, err[-3000:]
    _, children = store_runs(tmp_path)
    assert [r.info.status for r in children["gpt-seed0"]] == ["FINISHED"] and "ngpt-seed0" in children

    code, out, err = finish(start(tmp_path, *LATE_CHECKPOINT, entry=[*TORCHRUN, str(ROOT / "runner.py")]))
    assert code == 0, err[-3000:]
    assert "gpt seed 0: finished earlier" in out
    assert_one_live_child_per_unit(tmp_path)
    assert len(superseded(tmp_path, "ngpt-seed0")) == 1
