"""One runner invocation: the MLflow parent run, each (seed, arm) child run, checkpoints and resume.

Resume: an invocation that did not finish (killed, preempted, crashed) leaves
`<checkpoint.dir>/<experiment>/<parent_run_id>/` behind. The next invocation of the same experiment
picks it up automatically (or `--resume [PARENT_RUN_ID|FOLDER]` names one): arms that finished are
not trained again, an interrupted arm continues from its last checkpoint in the same MLflow child
run, and the rest start fresh under the same parent run. A checkpoint written under another config
is refused unless `--force`.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

from training.checkpoint import CheckpointError, Invocation, check_writable, find_unfinished, load_latest
from training.config import ArmConfig, ExperimentConfig, flatten
from training.data import Splits
from training.distributed import DistInfo, barrier
from training.summary import format_table, summary_frame
from training.tracking import (MLFLOW_PARENT_TAG, TAG_ARM, TAG_BASELINE, TAG_CONFIG_HASH, TAG_FAILURE,
                               TAG_GIT_COMMIT, TAG_KIND, TAG_ROLE, TAG_SEED, TAG_TARGETS, NullLogger, Tracker,
                               TrackingError, git_commit)
from training.trainer import (ArmResult, CheckpointPlan, Preempted, StopFlag, TrainingDiverged,
                              measure_peak_flops, resolve_runtime, train_arm)

PROJECT_DIR = Path(__file__).resolve().parents[1]


class UsageError(Exception):
    """Bad input found before training (runtime, tracking, checkpoints); the runner exits 2."""


def _find_invocation(cfg: ExperimentConfig, resume: str) -> Invocation | None:
    """`resume`: "auto" (an unfinished invocation if any), "never", "latest", or a parent run id / folder."""
    root = Path(cfg.checkpoint.dir) / cfg.experiment_name
    if resume == "never":
        return None
    if resume in ("auto", "latest"):
        found = find_unfinished(root)
        if found is None and resume == "latest":
            raise UsageError(f"--resume: no unfinished run of experiment {cfg.experiment_name!r} under {root}")
        return found
    folder = Path(resume) if Path(resume).is_dir() else root / resume
    if not (folder / "invocation.json").is_file():
        raise UsageError(f"--resume: {resume} is neither a checkpoint folder nor a parent run id under {root}")
    try:
        return Invocation.load(folder)
    except CheckpointError as err:
        raise UsageError(f"--resume: {err}") from None


def _check_resumable(cfg: ExperimentConfig, invocation: Invocation, force: bool) -> None:
    for seed in cfg.seeds:
        for arm in cfg.arms:
            state = load_latest(invocation.arm_folder(arm.name, seed))
            if state is not None and state["config_hash"] != cfg.arm_hash(arm, seed) and not force:
                raise UsageError(
                    f"checkpoint {state['path']} was written under another config (arm {arm.name}, seed {seed}, "
                    f"config hash {state['config_hash']}, now {cfg.arm_hash(arm, seed)}); "
                    f"resume it anyway with --force, or start fresh with --no-resume")


def _child_params(cfg: ExperimentConfig, arm: ArmConfig, seed: int, runtime, peak, dist: DistInfo) -> dict:
    resolved = cfg.to_dict()
    return {**flatten(resolved["arms"][arm.name]), **flatten({"data": resolved["data"]}),
            "tokenizer": cfg.tokenizer, "arm": arm.name, "seed": seed,
            "derived.tokens_per_step": arm.tokens_per_step(), "derived.steps": arm.steps(),
            "derived.tokens_trained": arm.steps() * arm.tokens_per_step(),
            "derived.world_size": dist.world_size, "derived.device": str(runtime.device),
            "derived.precision": runtime.precision, "derived.compile": runtime.compile,
            "derived.peak_flops": peak, "derived.torch_version": torch.__version__}


def run_experiment(cfg: ExperimentConfig, splits: Splits, dist: DistInfo, *, progress: bool = True,
                   resume: str = "auto", force: bool = False, stop: StopFlag | None = None) -> int:
    """Train every (seed, arm) of the experiment; returns the process exit code."""
    try:
        runtimes = {arm.name: resolve_runtime(arm, dist) for arm in cfg.arms}
    except RuntimeError as err:
        raise UsageError(str(err)) from None
    for arm in cfg.arms:
        if arm.train.grad_accum_steps % dist.world_size:
            raise UsageError(f"train.grad_accum_steps: {arm.train.grad_accum_steps} (arm {arm.name}) is not "
                             f"divisible by the {dist.world_size} processes")

    invocation = None
    if cfg.checkpoint.enabled:
        invocation = _find_invocation(cfg, resume)
        if invocation is not None:
            _check_resumable(cfg, invocation, force)
        if dist.is_main:
            try:
                check_writable(Path(cfg.checkpoint.dir) / cfg.experiment_name)
            except CheckpointError as err:
                raise UsageError(str(err)) from None
    elif resume not in ("auto", "never"):
        raise UsageError("--resume: checkpoint.enabled is false in this experiment, so there is nothing to resume")
    barrier(dist)  # every rank has decided the same before rank 0 creates anything

    tracker = parent_id = experiment_id = None
    if dist.is_main:
        tracker = Tracker()
        try:
            tracker.check()
            experiment_id = tracker.experiment_id(cfg.experiment_name)
            if invocation is not None:
                parent_id = invocation.parent_run_id
                tracker.reopen(parent_id)
        except TrackingError as err:
            raise UsageError(str(err)) from None
        except Exception as err:  # the parent run of the checkpoint is gone from the store
            raise UsageError(f"--resume: MLflow run {invocation.parent_run_id} of {invocation.folder} cannot be "
                             f"continued in {tracker.uri} ({type(err).__name__}); start fresh with --no-resume") from None
        if parent_id is None:
            run_name = cfg.tracking.run_name or f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
            parent_id = tracker.start_run(
                experiment_id, run_name,
                tags={TAG_ROLE: "parent", TAG_TARGETS: str(list(cfg.targets)), TAG_BASELINE: cfg.baseline_arm,
                      TAG_CONFIG_HASH: cfg.config_hash(), TAG_GIT_COMMIT: git_commit(PROJECT_DIR)},
                params={"name": cfg.name, "seeds": cfg.seeds, "arms": [a.name for a in cfg.arms],
                        "targets": cfg.targets, "world_size": dist.world_size,
                        **flatten({"data": cfg.to_dict()["data"]}), "tokenizer": cfg.tokenizer})
            tracker.log_text(parent_id, cfg.to_yaml(), "config/resolved.yaml")
            if cfg.checkpoint.enabled:
                invocation = Invocation(Path(cfg.checkpoint.dir) / cfg.experiment_name / parent_id, parent_id,
                                        cfg.config_hash())
                invocation.save()
            print(f"MLflow: experiment {cfg.experiment_name!r}, parent run {parent_id} ({tracker.uri})")
        else:
            print(f"MLflow: resuming parent run {parent_id} of experiment {cfg.experiment_name!r} from "
                  f"{invocation.folder} ({tracker.uri})")

    results, status = [], "FINISHED"
    peak_cache: dict = {}
    try:
        for seed in cfg.seeds:
            for arm in cfg.arms:
                state = load_latest(invocation.arm_folder(arm.name, seed)) if invocation is not None else None
                if state is not None and state["finished"]:
                    results.append(ArmResult.from_state(state["result"]))
                    if dist.is_main:
                        print(f"{arm.name} seed {seed}: finished earlier ({state['path']}), not trained again")
                    continue
                runtime = runtimes[arm.name]
                peak = arm.train.peak_flops
                if peak is None and runtime.device.type == "cuda":
                    peak = peak_cache.setdefault("measured", measure_peak_flops(runtime.device))
                logger, child_id, plan = NullLogger(), None, None
                if dist.is_main:
                    if state is not None:
                        child_id = state["run_id"]
                        tracker.reopen(child_id)
                        print(f"{arm.name} seed {seed}: resuming at step {state['step']} from {state['path']}")
                    else:
                        child_id = tracker.start_run(
                            experiment_id, f"{arm.name}-seed{seed}",
                            tags={MLFLOW_PARENT_TAG: parent_id, TAG_ROLE: "child", TAG_ARM: arm.name,
                                  TAG_SEED: str(seed), TAG_KIND: arm.model.kind},
                            params=_child_params(cfg, arm, seed, runtime, peak, dist))
                    logger = tracker.logger(child_id)
                    if invocation is not None:
                        plan = CheckpointPlan(
                            invocation.arm_folder(arm.name, seed), cfg.checkpoint.every_tokens,
                            cfg.checkpoint.keep_last,
                            identity={"config_hash": cfg.arm_hash(arm, seed), "run_id": child_id,
                                      "parent_run_id": parent_id, "arm": arm.name, "seed": seed})
                try:
                    result = train_arm(arm, seed, splits, dist, logger, runtime=runtime, peak_flops=peak,
                                       progress=progress, checkpoints=plan, resume=state, stop=stop)
                except TrainingDiverged as err:  # this arm stops; the others still run
                    if dist.is_main:
                        print(f"\nwarning: {err}; run marked FAILED", file=sys.stderr)
                        tracker.set_tag(child_id, TAG_FAILURE, str(err))
                    _close(logger, "FAILED")
                    continue
                except CheckpointError as err:
                    _close(logger, "FAILED")
                    raise UsageError(str(err)) from None
                except Preempted as err:
                    status = "KILLED"
                    _close(logger, "KILLED")
                    if dist.is_main:
                        print(f"\n{arm.name} seed {seed}: {err}. Run the same command again to resume.",
                              file=sys.stderr)
                    return 128 + err.signum
                except BaseException:
                    _close(logger, "KILLED" if isinstance(sys.exc_info()[1], KeyboardInterrupt) else "FAILED")
                    raise
                _close(logger, "FINISHED")
                results.append(result)
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except BaseException:
        status = "FAILED"
        raise
    finally:
        if dist.is_main and status != "FINISHED" and parent_id is not None:
            tracker.finish(parent_id, status)

    if dist.is_main:
        table = summary_frame(results, cfg.targets, cfg.baseline_arm)
        text = format_table(table)
        print(f"\n{cfg.name}: {len(results)} runs; tokens to target = first crossing of the validation loss "
              f"(linear interpolation); speedup = {cfg.baseline_arm} tokens / arm tokens")
        print(text)
        tracker.log_text(parent_id, text + "\n", "summary/summary.txt")
        tracker.log_text(parent_id, table.to_csv(index=False), "summary/summary.csv")
        log_report(tracker, cfg, parent_id)
        tracker.finish(parent_id, "FINISHED")
        if invocation is not None:
            invocation.finished = True
            invocation.save()
        print(f"\nFigures and tables: python -m analysis figures --experiment {cfg.experiment_name}   "
              f"Runs: mlflow ui")
    return 0


def _close(logger, status: str) -> None:
    record = logger.close(status)
    if record is not None:
        error = getattr(logger, "last_error", None)
        print(f"warning: MLflow did not take all metrics of run {logger.run_id} ({type(error).__name__}); "
              f"they are kept in {record}: upload them with `python -m training.tracking sync {record}`",
              file=sys.stderr)


def log_report(tracker: Tracker, cfg: ExperimentConfig, parent_id: str) -> None:
    """Build the analysis figures of this invocation and attach them to the parent run."""
    try:
        from analysis.report import build_report

        with tempfile.TemporaryDirectory() as folder:
            build_report(cfg.experiment_name, Path(folder), parent_run_id=parent_id, tracking_uri=tracker.uri)
            tracker.log_artifacts(parent_id, Path(folder), "report")
    except Exception as err:  # figures are a convenience here; the runs themselves are safe in MLflow
        print(f"warning: could not build the figures ({type(err).__name__}: {err}); rerun "
              f"`python -m analysis figures --experiment {cfg.experiment_name}`", file=sys.stderr)
