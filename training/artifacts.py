"""What rank 0 attaches to MLflow when a run ends, besides its metrics.

A child run that trained to the end is tagged with its final checkpoint (`datgpt.checkpoint`, which makes
the run id usable as an `init_from`) and gets its diagnostics, text sampled from fixed prompts
(`samples/samples.txt`, if `tracking.log_samples`) and the model in MLflow's PyTorch flavour (artifact
`model`, if `tracking.log_models`, with the `models` package shipped inside so it loads in a fresh process).
The parent run gets the analysis report (figures and tables) of its invocation.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

import torch

from analysis import record
from training.checkpoint import checkpoints_in
from training.config import ArmConfig, ExperimentConfig
from training.tracking import Tracker
from training.trainer import ArmResult, CheckpointPlan


PROJECT_DIR = Path(__file__).resolve().parents[1]


def end_of_run(tracker: Tracker, cfg: ExperimentConfig, arm: ArmConfig, seed: int, result: ArmResult,
                run_id: str, experiment_id: str, plan: CheckpointPlan | None, runtime) -> None:
    """Rank 0, after a child run trained to the end: its checkpoint tag, samples and model. Failures
    here are warnings: the run itself is complete in MLflow and in its checkpoint."""
    if plan is not None and checkpoints_in(plan.folder):
        try:
            tracker.set_tag(run_id, record.TAG_CHECKPOINT, str(checkpoints_in(plan.folder)[-1].resolve()))
        except Exception as err:
            print(f"warning: {arm.name} seed {seed}: could not tag the run with its checkpoint "
                  f"({type(err).__name__})", file=sys.stderr)
    if result.diagnostics is not None:
        try:
            tracker.log_text(run_id, result.diagnostics.to_json(), record.DIAGNOSTICS_ARTIFACT)
        except Exception as err:
            print(f"warning: {arm.name} seed {seed}: could not log the diagnostics ({type(err).__name__})",
                  file=sys.stderr)
    model = result.model
    if model is None:
        return
    if cfg.tracking.log_samples:
        try:
            from training.sample import sample_report

            text = sample_report(model, cfg.tokenizer, runtime.device, runtime.autocast,
                                 header=f"{arm.name} seed {seed}, {result.tokens_seen:,} tokens trained")
            tracker.log_text(run_id, text, record.SAMPLES_ARTIFACT)
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
    logged = tracker.client.create_logged_model(experiment_id, name=record.MODEL_ARTIFACT, source_run_id=run_id)
    quiet = logging.getLogger("mlflow.pytorch")  # its warning about pickled models, once per run
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        info = mlflow.pytorch.log_model(clean, name=record.MODEL_ARTIFACT, run_id=run_id, model_id=logged.model_id, step=step,
                                        serialization_format="pickle", pip_requirements=requirements,
                                        code_paths=[str(PROJECT_DIR / "models")])
    finally:
        quiet.setLevel(level)
    return info.model_uri


def log_report(tracker: Tracker, cfg: ExperimentConfig, parent_id: str):
    """Build the analysis figures of this invocation and attach them to the parent run; returns the Report."""
    try:
        import warnings

        from analysis.report import build_report

        with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. runs of this invocation that diverged: already reported
            report = build_report(cfg.experiment_name, Path(folder), parent_run_id=parent_id,
                                  tracking_uri=tracker.uri)
            tracker.log_artifacts(parent_id, Path(folder), record.REPORT_DIR)
        return report
    except Exception as err:  # figures are a convenience here; the runs themselves are safe in MLflow
        print(f"warning: could not build the figures ({type(err).__name__}: {err}); rerun "
              f"`python -m analysis figures --experiment {cfg.experiment_name}`", file=sys.stderr)
        return None
