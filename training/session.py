"""One runner invocation: the MLflow parent run, each (seed, arm) child run, checkpoints and resume.

Resume: an invocation that did not finish (killed, preempted, crashed) leaves
`<checkpoint.dir>/<experiment>/<parent_run_id>/` behind. The next invocation of the same experiment
picks it up automatically (or `--resume [PARENT_RUN_ID|FOLDER]` names one): arms that finished are
not trained again, an interrupted arm continues from its last checkpoint in the same MLflow child
run, and the rest start fresh under the same parent run. A checkpoint written under another config
is refused unless `--force`.

Fine-tuning: an arm with `init_from` starts from a pretrained checkpoint's weights (fresh optimizer and
schedule). The spec is resolved and checked against the arm's model for every seed before anything is
logged (training/pretrained.py); the child run records the lineage in `datgpt.init_from*` tags.

When a child run ends, rank 0 tags it with its final checkpoint (`datgpt.checkpoint`, which makes the run
id usable as an `init_from`), logs text sampled from fixed prompts (`samples/samples.txt`, if
`tracking.log_samples`) and the model in MLflow's PyTorch flavour (artifact `model`, if `tracking.log_models`).
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

from training.checkpoint import (CheckpointError, Invocation, check_writable, checkpoints_in, find_unfinished,
                                 load_latest)
from training.config import ArmConfig, ExperimentConfig, flatten
from training.data import Splits
from training.distributed import DistInfo, barrier
from training.pretrained import TAG_CHECKPOINT, Pretrained, PretrainedError, check_model, resolve
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


def _resolve_init_from(cfg: ExperimentConfig, invocation: Invocation | None) -> dict[tuple[str, int], Pretrained]:
    """The pretrained checkpoint of every (arm, seed) with `init_from`, checked against the arm's model;
    (arm, seed) pairs that will resume from a checkpoint of their own are left out."""
    found = {}
    for arm in cfg.arms:
        if arm.init_from is None:
            continue
        for seed in cfg.seeds:
            if invocation is not None and checkpoints_in(invocation.arm_folder(arm.name, seed)):
                continue  # resumes: its weights come from its own checkpoint
            try:
                pretrained = resolve(arm.init_from, cfg.checkpoint.dir, arm.name, seed)
                check_model(pretrained, arm.model)
            except PretrainedError as err:
                raise UsageError(f"arms.{arm.name}.init_from: {err}") from None
            found[(arm.name, seed)] = pretrained
    return found


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
    init_sources = _resolve_init_from(cfg, invocation)  # every rank: each loads the weights it starts from
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
                pretrained = init_sources.get((arm.name, seed)) if state is None else None
                if dist.is_main:
                    if state is not None:
                        child_id = state["run_id"]
                        tracker.reopen(child_id)
                        print(f"{arm.name} seed {seed}: resuming at step {state['step']} from {state['path']}")
                    else:
                        child_id = tracker.start_run(
                            experiment_id, f"{arm.name}-seed{seed}",
                            tags={MLFLOW_PARENT_TAG: parent_id, TAG_ROLE: "child", TAG_ARM: arm.name,
                                  TAG_SEED: str(seed), TAG_KIND: arm.model.kind,
                                  **(pretrained.tags() if pretrained is not None else {})},
                            params=_child_params(cfg, arm, seed, runtime, peak, dist))
                    logger = tracker.logger(child_id)
                    if invocation is not None:
                        plan = CheckpointPlan(
                            invocation.arm_folder(arm.name, seed), cfg.checkpoint.every_tokens,
                            cfg.checkpoint.keep_last,
                            identity={"config_hash": cfg.arm_hash(arm, seed), "run_id": child_id,
                                      "parent_run_id": parent_id, "arm": arm.name, "seed": seed})
                try:
                    if pretrained is not None and dist.is_main:
                        print(f"{arm.name} seed {seed}: starting from {pretrained.path} (step {pretrained.step})")
                    result = train_arm(arm, seed, splits, dist, logger, runtime=runtime, peak_flops=peak,
                                       progress=progress, checkpoints=plan, resume=state, stop=stop,
                                       init_state=pretrained.weights() if pretrained is not None else None)
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
                if dist.is_main:
                    logger.flush(wait=True)  # the final metrics are in the run before the model links to them
                    _end_of_run(tracker, cfg, arm, seed, result, child_id, experiment_id, plan, runtime)
                result.model = None  # results outlive the loop: keep no model (or GPU memory) in them
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


def _end_of_run(tracker: Tracker, cfg: ExperimentConfig, arm: ArmConfig, seed: int, result: ArmResult,
                run_id: str, experiment_id: str, plan: CheckpointPlan | None, runtime) -> None:
    """Rank 0, after a child run trained to the end: its checkpoint tag, samples and model. Failures
    here are warnings: the run itself is complete in MLflow and in its checkpoint."""
    if plan is not None and checkpoints_in(plan.folder):
        try:
            tracker.set_tag(run_id, TAG_CHECKPOINT, str(checkpoints_in(plan.folder)[-1].resolve()))
        except Exception as err:
            print(f"warning: {arm.name} seed {seed}: could not tag the run with its checkpoint "
                  f"({type(err).__name__})", file=sys.stderr)
    model = result.model
    if model is None:
        return
    if cfg.tracking.log_samples:
        try:
            from training.sample import sample_report

            text = sample_report(model, cfg.tokenizer, runtime.device, runtime.autocast,
                                 header=f"{arm.name} seed {seed}, {result.tokens_seen:,} tokens trained")
            tracker.log_text(run_id, text, "samples/samples.txt")
        except Exception as err:
            print(f"warning: {arm.name} seed {seed}: could not log samples ({type(err).__name__}: {err})",
                  file=sys.stderr)
    if cfg.tracking.log_models:
        try:
            log_model(tracker, experiment_id, run_id, model, step=arm.steps())
        except Exception as err:
            print(f"warning: {arm.name} seed {seed}: could not log the model to MLflow ({type(err).__name__}: "
                  f"{err}); its checkpoint has the weights", file=sys.stderr)


def log_model(tracker: Tracker, experiment_id: str, run_id: str, model, step: int = 0) -> str:
    """Log `model` to run `run_id` in MLflow's PyTorch flavour as artifact `model`; returns its model URI.

    A clean float32 CPU copy is logged (no compile/DDP wrappers, loadable without a GPU), pickled
    (the default `pt2` format would export a fixed-shape graph without `generate`), with the `models`
    package shipped in the artifact (`code_paths`), so `mlflow.pytorch.load_model("runs:/<id>/model")`
    works in a fresh process with torch installed, datgpt or not. The pip requirements are given
    (torch, cloudpickle) rather than inferred, which would load the model again in a subprocess.
    """
    import cloudpickle
    import mlflow.pytorch

    from models import build_model

    clean = build_model(model.config)
    clean.load_state_dict({k: v.detach().float().cpu() for k, v in model.state_dict().items()})
    clean.eval()
    requirements = [f"torch=={torch.__version__.split('+')[0]}", f"cloudpickle=={cloudpickle.__version__}"]
    # MLflow 3: a LoggedModel created in the run's experiment (log_model given only run_id would put it in
    # the active experiment, the default one here), and `name=` (2.x's artifact_path is deprecated).
    logged = tracker.client.create_logged_model(experiment_id, name="model", source_run_id=run_id)
    quiet = logging.getLogger("mlflow.pytorch")  # its warning about pickled models, once per run
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        info = mlflow.pytorch.log_model(clean, name="model", run_id=run_id, model_id=logged.model_id, step=step,
                                        serialization_format="pickle", pip_requirements=requirements,
                                        code_paths=[str(PROJECT_DIR / "models")])
    finally:
        quiet.setLevel(level)
    return info.model_uri


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
