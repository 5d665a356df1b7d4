"""Where each arm of an invocation starts: resuming an unfinished invocation, and fine-tuning from `init_from`.

Resume: an invocation that did not finish (killed, preempted, crashed) leaves
`<checkpoint.dir>/<experiment>/<parent_run_id>/` behind. The next invocation of the same experiment
picks it up automatically (or `--resume [PARENT_RUN_ID|FOLDER]` names one): arms that finished are
not trained again, an interrupted arm continues from its last checkpoint in the same MLflow child
run, and the rest start fresh under the same parent run. A checkpoint written under another config
is refused unless `--force`.

Fine-tuning: an arm with `init_from` starts from a pretrained checkpoint's weights (fresh optimizer and
schedule). The spec is resolved and checked against the arm's model for every seed before anything is
logged (training/pretrained.py).
"""

from __future__ import annotations

from pathlib import Path

from training import sweep
from training.checkpoint import CheckpointError, Invocation, checkpoints_in, find_unfinished, load_latest
from training.config import ExperimentConfig
from training.errors import UsageError
from training.pretrained import Pretrained, PretrainedError, check_model, resolve


def find_invocation(cfg: ExperimentConfig, resume: str) -> Invocation | None:
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


def check_resumable(cfg: ExperimentConfig, invocation: Invocation, force: bool) -> None:
    for unit in sweep.universe(cfg).values():
        state = load_latest(invocation.folder / unit.key)
        if state is not None and state["config_hash"] != cfg.arm_hash(unit.arm, unit.seed) and not force:
            raise UsageError(
                f"checkpoint {state['path']} was written under another config (run {unit.key}, config hash "
                f"{state['config_hash']}, now {cfg.arm_hash(unit.arm, unit.seed)}); "
                f"resume it anyway with --force, or start fresh with --no-resume")


def resolve_init_from(cfg: ExperimentConfig, invocation: Invocation | None) -> dict[tuple[str, int], Pretrained]:
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
                if pretrained.tokenizer != cfg.tokenizer:
                    raise PretrainedError(f"{pretrained.path} was trained with tokenizer {pretrained.tokenizer!r}, "
                                          f"this experiment uses {cfg.tokenizer!r}")
            except PretrainedError as err:
                raise UsageError(f"arms.{arm.name}.init_from: {err}") from None
            found[(arm.name, seed)] = pretrained
    return found
