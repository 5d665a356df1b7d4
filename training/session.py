"""One runner invocation: the MLflow parent run, a child run per unit (each (seed, arm), or each unit of a
sweep: training/sweep.py), checkpoints and resume.

Sweeps: the learning-rate search trains first; its choice (analysis.sweeps.select_lr) decides the main
stage's units. A cooldown branch starts from its trunk's `branch_<step>.pt` and copies the trunk's
metrics up to that step into its own MLflow run.

Where each arm starts (resume, `init_from`) is decided in training/resume.py; what a finished run attaches to
MLflow (checkpoint tag, diagnostics, samples, model, the parent's report) in training/artifacts.py. A run's
lineage goes to `datgpt.init_from*` tags of its child run.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

import torch

from analysis import record
from training import sweep
from training.artifacts import PROJECT_DIR, end_of_run, log_report
from training.checkpoint import CheckpointError, Invocation, branch_path, check_writable, load_branch, load_latest
from training.config import ArmConfig, ExperimentConfig, arm_to_dict, flatten, local_accum_steps
from training.data.corpus import Splits
from training.data.tokenizer import UNIT as TOKENIZER_UNIT
from training.distributed import DistInfo, barrier, broadcast_object
from training.errors import UsageError
from training.mlflow_view import answer_columns, runs_view_json
from training.resume import check_resumable, find_invocation, resolve_init_from
from training.runtime import measure_peak_flops, resolve_runtime
from training.tracking import NullTracker, Tracker, TrackingError, git_commit
from training.trainer import (ArmResult, CheckpointPlan, Preempted, StopFlag, TrainingDiverged, final_model,
                              train_arm)


def check_runtime(cfg: ExperimentConfig, dist: DistInfo, processes: str | None = None) -> dict:
    """What is checked of the arms' runtime before anything is trained or logged, by a real run and by a dry
    run alike: each arm's device and precision resolve (a `Runtime` per arm name), and its grad_accum_steps
    splits evenly over the `dist.world_size` processes (named `processes` in the message)."""
    try:
        runtimes = {arm.name: resolve_runtime(arm, dist) for arm in cfg.arms}
    except RuntimeError as err:
        raise UsageError(str(err)) from None
    for arm in cfg.arms:
        local_accum_steps(arm.train.grad_accum_steps, dist.world_size, arm=arm.name, processes=processes)
    return runtimes


def _precision_parity(runtimes: dict) -> tuple[str, bool]:
    """Each arm's device, precision, compile and parameter storage, and whether all arms agree.

    Parameters are always stored in float32 (bf16 runs autocast the matrix products), so the
    comparison never gives one arm bf16 weights; device, precision and compile come from each arm's
    `train` section and may differ only if the YAML says so.
    """
    described = {name: f"{rt.device.type}/{rt.precision}{'/compiled' if rt.compile else ''}/float32 weights"
                 for name, rt in runtimes.items()}
    same = len(set(described.values())) == 1
    text = next(iter(described.values())) if same else ", ".join(f"{k}: {v}" for k, v in described.items())
    return ("same for all arms: " if same else "DIFFERS: ") + text, same


def _child_params(cfg: ExperimentConfig, arm: ArmConfig, seed: int, runtime, peak, dist: DistInfo) -> dict:
    resolved = cfg.to_dict()
    return {**flatten(arm_to_dict(arm)), **flatten({"data": resolved["data"]}),
            "tokenizer": cfg.tokenizer, "arm": arm.name, "seed": seed,
            "derived.tokens_per_step": arm.tokens_per_step(), "derived.steps": arm.steps(),
            record.PARAM_TOKENS_TRAINED: arm.steps() * arm.tokens_per_step(),
            "derived.world_size": dist.world_size, "derived.device": str(runtime.device),
            "derived.precision": runtime.precision, "derived.compile": runtime.compile,
            "derived.peak_flops": peak, "derived.torch_version": torch.__version__,
            **(flatten({"eval": resolved["eval"]}) if cfg.eval.active else {})}


def run_experiment(cfg: ExperimentConfig, splits: Splits, dist: DistInfo, *, progress: bool = True,
                   resume: str = "auto", force: bool = False, stop: StopFlag | None = None) -> int:
    """Train every unit of the experiment (each (seed, arm), or the sweep's units); returns the exit code.

    Every rank runs this same code. Rank 0 logs through a `Tracker` and prints; the other ranks get a
    `NullTracker` and `dist.print` says nothing there, so what is logged needs no rank test. What only rank 0
    does besides logging (the files of the checkpoint folder, the downstream tasks, the end-of-run
    artifacts and the report) says `dist.is_main`."""
    runtimes = check_runtime(cfg, dist)
    parity, same_precision = _precision_parity(runtimes)
    if not same_precision and len(cfg.arms) > 1:
        dist.print(f"warning: the arms do not train alike ({parity}); set train.device/precision/compile in the "
                   f"shared train section for a fair comparison", file=sys.stderr)

    invocation = None
    if cfg.checkpoint.enabled:
        invocation = find_invocation(cfg, resume)
        if invocation is not None:
            check_resumable(cfg, invocation, force)
        if dist.is_main:
            try:
                check_writable(Path(cfg.checkpoint.dir) / cfg.experiment_name)
            except CheckpointError as err:
                raise UsageError(str(err)) from None
    elif resume not in ("auto", "never"):
        raise UsageError("--resume: checkpoint.enabled is false in this experiment, so there is nothing to resume")
    init_sources = resolve_init_from(cfg, invocation)  # every rank: each loads the weights it starts from
    eval_tasks = _check_eval_tasks(cfg) if dist.is_main else None  # before anything is logged
    barrier(dist)  # every rank has decided the same before rank 0 creates anything

    tracker = Tracker() if dist.is_main else NullTracker()
    experiment_id, parent_id = _open_parent(cfg, dist, tracker, invocation, parity)
    parent_id = broadcast_object(parent_id, dist)
    if cfg.checkpoint.enabled and invocation is None:  # every rank needs the folder (cooldown branches, resume)
        invocation = Invocation(Path(cfg.checkpoint.dir) / cfg.experiment_name / parent_id, parent_id,
                                cfg.config_hash())
        if dist.is_main:
            invocation.save()

    session = _Session(cfg, splits, dist, runtimes, invocation, init_sources, tracker, parent_id, experiment_id,
                       progress, stop)
    session.eval_tasks = eval_tasks
    status = "FAILED"  # what the parent run becomes if anything below raises
    try:
        best = session.search_learning_rates()
        for unit in sweep.main_units(cfg, best):
            session.train(unit)
        with _stop_at_once(stop, dist):  # the report: no step is left to stop at
            failed = sum(r is None for r in session.results.values())
            dist.print(f"\n{cfg.name}: {len(session.results)} runs ({failed} failed)")
            if dist.is_main:
                _print_and_log_answer(tracker, cfg, parent_id)
                _set_runs_view(tracker, cfg, experiment_id, parent_id)
            tracker.finish(parent_id, "FINISHED")
            status = "FINISHED"
            if invocation is not None and dist.is_main:
                invocation.finished = True
                invocation.save()
    except Preempted as err:
        status = "KILLED"
        return 128 + err.signum
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if status != "FINISHED":
            tracker.finish(parent_id, status)

    dist.print(f"\nFigures and tables: python -m analysis figures --experiment {cfg.experiment_name}\n"
               f"Runs in MLflow: {tracker.runs_url(experiment_id)}\n"
               f"Curves in MLflow: {tracker.curves_url(experiment_id)}")
    return 0


@contextlib.contextmanager
def _stop_at_once(stop: StopFlag | None, dist: DistInfo):
    """After the last unit (the report, finishing the parent run) a SIGTERM or Ctrl-C stops at once, with
    `Preempted` (StopFlag.at_once), rather than after a step: the parent run is marked KILLED and the same
    command finishes the invocation (every unit is trained, so only the report is made again)."""
    if stop is None:
        yield
        return
    where = "during the report (every run is trained)"
    try:
        if stop.signum:  # it came during the last unit's end of run
            raise Preempted(stop.signum, None, where)
        stop.at_once = where
        yield
    except Preempted as err:
        dist.print(f"\n{err}. Run the same command again to finish.", file=sys.stderr)
        raise
    finally:
        stop.at_once = None


def _open_parent(cfg: ExperimentConfig, dist: DistInfo, tracker, invocation: Invocation | None,
                 parity: str) -> tuple[str | None, str | None]:
    """The experiment's id and the parent run: `invocation`'s, reopened, or a new one with the config. On
    ranks other than 0 the experiment's id is None, and so is a new parent run's (rank 0 broadcasts it)."""
    try:
        tracker.check()
        experiment_id = tracker.experiment_id(cfg.experiment_name)
        if invocation is not None:
            tracker.reopen(invocation.parent_run_id)
    except TrackingError as err:
        raise UsageError(str(err)) from None
    except Exception as err:  # the parent run of the checkpoint is gone from the store
        if invocation is None:
            raise
        raise UsageError(f"--resume: MLflow run {invocation.parent_run_id} of {invocation.folder} cannot be "
                         f"continued in {tracker.uri} ({type(err).__name__}); start fresh with --no-resume") from None
    if invocation is not None:
        dist.print(f"MLflow: resuming parent run {invocation.parent_run_id} of experiment {cfg.experiment_name!r} "
                   f"from {invocation.folder} ({tracker.uri})")
        return experiment_id, invocation.parent_run_id
    run_name = cfg.tracking.run_name or f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    parent_id = tracker.start_run(
        experiment_id, run_name,
        tags={record.TAG_ROLE: record.ROLE_PARENT, record.TAG_TARGETS: str(list(cfg.targets)),
              record.TAG_BASELINE: cfg.baseline_arm, record.TAG_CONFIG_HASH: cfg.config_hash(),
              record.TAG_GIT_COMMIT: git_commit(PROJECT_DIR), record.TAG_PRECISION: parity,
              record.TAG_LOSS_UNIT: TOKENIZER_UNIT[cfg.tokenizer]},
        params={"name": cfg.name, "seeds": cfg.seeds, "arms": [a.name for a in cfg.arms],
                "targets": cfg.targets, "world_size": dist.world_size,
                **flatten({"data": cfg.to_dict()["data"]}), "tokenizer": cfg.tokenizer,
                **(flatten({"sweep": cfg.to_dict()["sweep"]}) if cfg.sweep.active else {})})
    tracker.log_text(parent_id, cfg.to_yaml(), record.CONFIG_ARTIFACT)
    dist.print(f"MLflow: experiment {cfg.experiment_name!r}, parent run {parent_id} ({tracker.uri})")
    return experiment_id, parent_id


def _set_runs_view(tracker: Tracker, cfg: ExperimentConfig, experiment_id: str, parent_id: str) -> None:
    """Rank 0, once the answer is logged: the runs table's shared view shows it (the answer metrics the parent
    run holds that `answer_columns` picks), for the runs link the runner prints."""
    contexts = {arm.name: arm.model.context_length for arm in cfg.arms}
    several = len(set(contexts.values())) > 1  # the answer's names then carry the context length
    try:
        columns = answer_columns([arm.name for arm in cfg.arms], cfg.baseline_arm, cfg.targets,
                                 tracker.metrics(parent_id), contexts if several else None)
        tracker.set_runs_view(experiment_id, runs_view_json(columns))
    except Exception as err:  # the answer is logged; the view is a convenience
        print(f"warning: could not store the runs table's view on the experiment ({type(err).__name__})",
              file=sys.stderr)


def _print_and_log_answer(tracker: Tracker, cfg: ExperimentConfig, parent_id: str) -> None:
    """Rank 0, after the last unit: the report of this invocation on the parent run, its summary printed
    (the same summary as the report's tables and the analysis CLI) and logged as the parent's metrics."""
    report = log_report(tracker, cfg, parent_id)
    if report is None:
        return
    from analysis.summary import answer_metrics
    from analysis.tables import format_cooldown_table, format_summary

    print(format_summary(report.summary))
    if report.cooldown_vs_full is not None:
        print(f"\ncooldown branches vs full runs:\n{format_cooldown_table(report.cooldown_vs_full)}")
    try:
        tracker.log_metrics(parent_id, answer_metrics(report.summary))
    except Exception as err:  # the tables are logged already; the metrics are a convenience
        print(f"warning: could not log the summary metrics on the parent run ({type(err).__name__})",
              file=sys.stderr)


class _Session:
    """One invocation's units: trains each once (or picks up its finished checkpoint) and keeps the results."""

    def __init__(self, cfg, splits, dist, runtimes, invocation, init_sources, tracker, parent_id, experiment_id,
                 progress, stop):
        self.cfg, self.splits, self.dist, self.runtimes = cfg, splits, dist, runtimes
        self.invocation, self.init_sources = invocation, init_sources
        self.tracker, self.parent_id, self.experiment_id = tracker, parent_id, experiment_id
        self.progress, self.stop = progress, stop
        self.results: dict[str, ArmResult | None] = {}  # unit key -> result (None: the run diverged)
        self.run_ids: dict[str, str] = {}  # unit key -> MLflow child run id (rank 0)
        self.peak_cache: dict = {}
        self.eval_tasks = None  # lm-eval's TaskManager when the experiment has an `eval` section (rank 0)

    def search_learning_rates(self) -> dict[tuple[str, int | None], float]:
        """Stage 1 of a sweep with `sweep.lr`: train the grid, choose, tag and report the choice."""
        cfg, units = self.cfg, sweep.search_units(self.cfg)
        if not units:
            return {}
        from analysis.sweeps import chosen_lrs, edge_warnings, select_lr

        for unit in units:
            self.train(unit)
        table = select_lr([{"arm": u.arm.name, "budget": u.budget, "lr": u.lr, "seed": u.seed,
                            "final_val_loss": (self.results[u.key].final_val_loss
                                               if self.results.get(u.key) is not None else None)}
                           for u in units])
        per_budget = cfg.sweep.lr_budget == "each"
        best = {(arm, budget if per_budget else None): lr for (arm, budget), lr in chosen_lrs(table).items()}
        missing = [a.name for a in sweep.grid_arms(cfg) if not any(k[0] == a.name for k in best)]
        if missing:
            raise UsageError(f"sweep.lr.{missing[0]}: every learning rate of the grid diverged; no run to choose")
        if per_budget:
            for arm in sweep.grid_arms(cfg):
                for budget in sweep.budgets_of(cfg, arm):
                    if (arm.name, budget) not in best:
                        raise UsageError(f"sweep.lr.{arm.name}: every learning rate diverged at budget {budget}")
        from analysis.tables import format_lr_table

        text = format_lr_table(table)
        self.dist.print(f"\nlearning-rate search (lowest mean final validation loss over seeds "
                        f"{sweep.search_seeds(cfg)}):\n{text}")
        for line in edge_warnings(table):
            self.dist.print(f"warning: {line}", file=sys.stderr)
        self.tracker.log_text(self.parent_id, text + "\n", record.LR_SELECTION_TXT)
        self.tracker.log_text(self.parent_id, table.to_csv(index=False), record.LR_SELECTION_CSV)
        for (arm, budget), lr in best.items():
            self.tracker.set_tag(self.parent_id, record.best_lr_tag(arm, budget), f"{lr:g}")
        for unit in units:
            if unit.key in self.run_ids:
                chosen = best.get((unit.arm.name, unit.budget if per_budget else None)) == unit.lr
                self.tracker.set_tag(self.run_ids[unit.key], record.TAG_LR_SELECTED, str(chosen).lower())
        return broadcast_object(best, self.dist)

    def train(self, unit: sweep.Unit) -> ArmResult | None:
        """Train `unit` unless this invocation has it already; returns its result (None if it diverged)."""
        if unit.key in self.results:
            return self.results[unit.key]
        cfg, dist, arm, seed = self.cfg, self.dist, unit.arm, unit.seed
        folder = self.invocation.folder / unit.key if self.invocation is not None else None
        state = load_latest(folder) if folder is not None else None
        if state is not None and state["finished"]:
            self.results[unit.key] = ArmResult.from_state(state["result"])
            self.run_ids[unit.key] = state["run_id"]
            dist.print(f"{unit.label}: finished earlier ({state['path']}), not trained again")
            self._supersede_others(unit, state["run_id"])
            if dist.is_main and self.tracker.run_status(state["run_id"]) != "FINISHED":
                self._finish_end_of_run(unit, state)  # the process died after its final checkpoint
            return self.results[unit.key]
        branch_state = None
        if state is None and unit.branch_of is not None:
            barrier(dist)  # rank 0 wrote the trunk's branch checkpoint
            try:
                branch_state = load_branch(self.invocation.folder / unit.branch_of, unit.branch_step)
            except CheckpointError as err:  # the same computation from step 0 costs more but gives the same run
                dist.print(f"warning: {err}; training {unit.key} in full instead", file=sys.stderr)
        runtime = self.runtimes[arm.name]
        peak = arm.train.peak_flops
        if peak is None and runtime.device.type == "cuda":
            peak = self.peak_cache.setdefault("measured", measure_peak_flops(runtime.device))
        pretrained = self.init_sources.get((arm.name, seed)) if state is None else None
        child_id = self._open_child(unit, state, branch_state, pretrained, runtime, peak)
        logger = self.tracker.logger(child_id)
        plan = None
        if self.invocation is not None:  # every rank checks at the same steps; rank 0 writes (trainer.py)
            plan = CheckpointPlan(folder, cfg.checkpoint.every_tokens, cfg.checkpoint.keep_last,
                                  identity={"config_hash": cfg.arm_hash(arm, seed), "run_id": child_id,
                                            "parent_run_id": self.parent_id, "arm": arm.name, "seed": seed,
                                            "unit": unit.key, "tokenizer": cfg.tokenizer},
                                  branch_steps=tuple(unit.branch_steps))
        try:
            if pretrained is not None:
                dist.print(f"{arm.name} seed {seed}: starting from {pretrained.path} (step {pretrained.step})")
            result = train_arm(arm, seed, self.splits, dist, logger, runtime=runtime, peak_flops=peak,
                               progress=self.progress, checkpoints=plan, resume=state or branch_state, stop=self.stop,
                               init_state=pretrained.weights() if pretrained is not None else None,
                               desc=unit.label, diagnostics=cfg.tracking.log_diagnostics,
                               downstream=self._downstream(runtime, child_id))
            logger.flush(wait=True)  # the final metrics are in the run before the model links to them
            if dist.is_main:  # samples and the model are made on rank 0 only
                end_of_run(self.tracker, cfg, arm, seed, result, child_id, self.experiment_id, plan, runtime)
        except TrainingDiverged as err:  # this unit stops; the others still run
            dist.print(f"\nwarning: {err}; run marked FAILED", file=sys.stderr)
            self.tracker.set_tag(child_id, record.TAG_FAILURE, str(err))
            _close(logger, "FAILED")
            self.results[unit.key] = None
            return None
        except CheckpointError as err:
            _close(logger, "FAILED")
            raise UsageError(str(err)) from None
        except Preempted as err:
            _close(logger, "KILLED")
            dist.print(f"\n{unit.label}: {err}. Run the same command again to resume.", file=sys.stderr)
            raise
        except BaseException:
            _close(logger, "KILLED" if isinstance(sys.exc_info()[1], KeyboardInterrupt) else "FAILED")
            raise
        result.model = result.diagnostics = None  # results outlive the loop: keep no model (or GPU memory)
        _close(logger, "FINISHED")
        self.results[unit.key] = result
        if branch_state is not None and dist.is_main:  # its own final checkpoint marks it done: free the disk
            branch_path(self.invocation.folder / unit.branch_of, unit.branch_step).unlink(missing_ok=True)
        return result

    def _open_child(self, unit: sweep.Unit, state: dict | None, branch_state: dict | None, pretrained, runtime,
                    peak) -> str | None:
        """The unit's child run: reopened when `state` resumes it, else new (a cooldown branch gets its trunk's
        curve up to the branch point); its id, None on ranks other than 0 for a new run."""
        cfg, arm, seed, tracker = self.cfg, unit.arm, unit.seed, self.tracker
        if state is not None:
            child_id = state["run_id"]
            tracker.reopen(child_id)
            self.dist.print(f"{unit.label}: resuming at step {state['step']} from {state['path']}")
        else:
            tags = {record.TAG_PARENT: self.parent_id, record.TAG_ROLE: record.ROLE_CHILD, record.TAG_ARM: arm.name,
                    record.TAG_SEED: str(seed), record.TAG_MODEL_KIND: arm.model.kind, record.TAG_STAGE: unit.stage,
                    record.TAG_METHOD: unit.method, **(pretrained.tags() if pretrained is not None else {})}
            if branch_state is not None:
                tags.update({record.TAG_BRANCH_OF: branch_state["run_id"],
                             record.TAG_BRANCH_STEP: str(unit.branch_step)})
            child_id = tracker.start_run(self.experiment_id, unit.key, tags=tags,
                                         params=_child_params(cfg, arm, seed, runtime, peak, self.dist))
            if branch_state is not None:
                tracker.copy_history(branch_state["run_id"], child_id, unit.branch_step)
                self.dist.print(f"{unit.key}: cooldown branch of {unit.branch_of} from step {unit.branch_step}")
        self.run_ids[unit.key] = child_id
        self._supersede_others(unit, child_id)
        return child_id

    def _supersede_others(self, unit: sweep.Unit, child_id: str | None) -> None:
        """Earlier child runs of `unit` under this parent run other than `child_id`, the one the invocation
        continues: a process that died before the unit's first checkpoint left them (RUNNING if killed, FAILED
        after an exception). They are tagged superseded by `child_id` and, if still RUNNING, marked KILLED."""
        superseded = self.tracker.supersede_others(self.experiment_id, self.parent_id, unit.key, child_id)
        if superseded:
            self.dist.print(f"{unit.label}: earlier run{'s' if len(superseded) > 1 else ''} {', '.join(superseded)} "
                            f"of this unit (stopped before its first checkpoint) marked superseded by {child_id}")

    def _finish_end_of_run(self, unit: sweep.Unit, state: dict) -> None:
        """Rank 0: the end of run of a unit whose final checkpoint was written but whose child run was not
        closed (the process died in between, e.g. while logging the model): the same artifacts from the
        checkpoint's weights, then the run is FINISHED."""
        cfg, arm, runtime = self.cfg, unit.arm, self.runtimes[unit.arm.name]
        result = ArmResult.from_state(state["result"])
        result.model, result.diagnostics = final_model(arm, state, self.splits, runtime,
                                                        diagnostics=cfg.tracking.log_diagnostics)
        plan = CheckpointPlan(self.invocation.folder / unit.key, cfg.checkpoint.every_tokens, cfg.checkpoint.keep_last,
                              identity={})
        self.dist.print(f"{unit.label}: its run {state['run_id']} was not closed; logging its end of run now")
        end_of_run(self.tracker, cfg, arm, unit.seed, result, state["run_id"], self.experiment_id, plan, runtime)
        self.tracker.finish(state["run_id"], "FINISHED")

    def _downstream(self, runtime, child_id: str | None):
        """The `eval` section's plan for one child run (rank 0), logging each results JSON to it."""
        if self.eval_tasks is None or child_id is None:
            return None
        from analysis.record import eval_results_artifact
        from training.downstream import DownstreamPlan, results_json

        e = self.cfg.eval

        def log_results(step: int, results: dict) -> None:
            self.tracker.log_text(child_id, results_json(results), eval_results_artifact(step, e.tasks))

        return DownstreamPlan(tasks=list(e.tasks), every_tokens=e.every_tokens, limit=e.limit, batch_size=e.batch_size,
                              manager=self.eval_tasks, device=runtime.device, autocast=runtime.autocast,
                              tokenizer=self.cfg.tokenizer, log_results=log_results)


def _check_eval_tasks(cfg: ExperimentConfig):
    """lm-eval's TaskManager for the `eval` section, every task's data loaded once; None without one."""
    if not cfg.eval.active:
        return None
    from training.downstream import EvalSetupError, check_tasks

    try:
        return check_tasks(cfg.eval.tasks, option="eval.tasks")
    except EvalSetupError as err:
        raise UsageError(str(err)) from None


def _close(logger, status: str) -> None:
    record = logger.close(status)
    if record is not None:
        error = getattr(logger, "last_error", None)
        print(f"warning: MLflow did not take all metrics of run {logger.run_id} ({type(error).__name__}); "
              f"they are kept in {record}: upload them with `python -m training.tracking sync {record}`",
              file=sys.stderr)


