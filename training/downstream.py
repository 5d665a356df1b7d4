"""Downstream accuracy through lm-evaluation-harness: which tasks, whether their data can be reached,
one evaluation of a model, and its metrics under the record's names (analysis/record.py).

Used by `python -m training.evaluate` (a checkpoint or a run, afterwards) and by the trainer (the `eval`
section of an experiment: both arms at the same token counts). The model side is
training/lm_eval_adapter.py.

Tasks are looked up by lm-eval's `TaskManager` with this project's local tasks added
(training/eval_tasks, `include_path`); when every task asked for is local, lm-eval's own ~15,000
task definitions are not indexed (that takes seconds). Before anything is evaluated,
:func:`check_tasks` loads each task's data once: an unknown task, or a task whose data is on the
Hugging Face Hub while the Hub cannot be reached, is one line (:class:`EvalSetupError`) naming the
task (:func:`check_task_names` catches most unknown names first, without lm-eval's task index).
`HF_DATASETS_OFFLINE=1` (or `HF_HUB_OFFLINE=1`) skips the network check and uses the copy in the
Hugging Face cache, if there is one.

An evaluation leaves the global random state (Python, NumPy, torch) as it found it: lm-eval seeds
all three, and a training run must not depend on whether it was evaluated.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.util
import io
import json
import logging
import math
import os
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from analysis.record import eval_metric, metric_from_lm_eval
from training.eval_tasks import LOCAL_TAG, LOCAL_TASKS, TASKS_DIR
from training.lm_eval_adapter import DatgptLM, EvalSetupError, require_lm_eval

BOOTSTRAP_ITERS = 1000  # lm-eval's bootstrap of non-mean metrics' stderr (perplexity); its default 100,000 takes minutes
_OFFLINE_VARS = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
_TASK_MANAGERS: dict[bool, object] = {}


def is_local(name: str) -> bool:
    """Whether a task (or tag) is one of the shipped local tasks, which need no network."""
    return name in LOCAL_TASKS or name == LOCAL_TAG


def task_manager(names: list[str]):
    """lm-eval's `TaskManager` with the local tasks added (lm-eval's own tasks only when some name
    is not local); built once per process."""
    require_lm_eval()
    defaults = not all(is_local(n) for n in names)
    if defaults not in _TASK_MANAGERS:
        from lm_eval.tasks import TaskManager

        with _quiet():
            _TASK_MANAGERS[defaults] = TaskManager(include_path=str(TASKS_DIR), include_defaults=defaults)
    return _TASK_MANAGERS[defaults]


def _offline_env() -> str | None:
    for var in _OFFLINE_VARS:
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return var
    return None


def _unknown_task(option: str, name: str, known) -> EvalSetupError:
    close = difflib.get_close_matches(name, sorted({*known, *LOCAL_TASKS, LOCAL_TAG}), n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return EvalSetupError(f"{option}: unknown lm-eval task {name!r}{hint}; the local tasks (no network) are "
                          f"{', '.join(LOCAL_TASKS)}, or all of them as the tag {LOCAL_TAG}")


def _lm_eval_task_files() -> list[Path]:
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or spec.origin is None:
        return []
    return sorted((Path(spec.origin).parent / "tasks").rglob("*.y*ml"))


def check_task_names(names: list[str], option: str = "--tasks") -> None:
    """The fast part of :func:`check_tasks`: a name that is not a local task and that no lm-eval task file
    contains as a word is unknown, said in one line in well under a second, without indexing lm-eval's
    ~14,000 task files into a `TaskManager` (seconds). Names that do occur there are left to `check_tasks`."""
    if not names:
        raise EvalSetupError(f"{option}: give at least one lm-eval task, e.g. {LOCAL_TASKS[0]}")
    remote = [n for n in names if not is_local(n)]
    if not remote:
        return
    texts = [path.read_text(encoding="utf-8", errors="replace") for path in _lm_eval_task_files()]
    if not texts:
        return  # an lm-eval without task files here: the TaskManager decides
    text = "\n".join(texts)
    for name in remote:
        if not re.search(rf"(?<![\w.-]){re.escape(name)}(?![\w.-])", text):
            known = re.findall(r"^\s*(?:task|tag|group)\s*:\s*([\w.-]+)\s*$", text, flags=re.M)
            raise _unknown_task(option, name, known)


def check_tasks(names: list[str], option: str = "--tasks") -> object:
    """Check that every task exists and its data loads (downloading it from the Hub once if needed);
    returns the `TaskManager`. Raises `EvalSetupError` naming `option` or the task."""
    check_task_names(names, option)
    manager = task_manager(names)
    known = set(manager.all_tasks)
    for name in names:
        if name not in known:
            raise _unknown_task(option, name, known)
    remote = [n for n in names if not is_local(n)]
    if remote and _offline_env() is None:
        from training.data.sources import hub_unreachable

        reason = hub_unreachable()
        if reason is not None:
            raise EvalSetupError(
                f"task {remote[0]}: its data is on the Hugging Face Hub, which this machine cannot reach "
                f"(network: {reason}); run it where huggingface.co is reachable, or set HF_DATASETS_OFFLINE=1 to use "
                f"a copy in the Hugging Face cache (local tasks: {', '.join(LOCAL_TASKS)})")
    for name in names:
        try:
            with _quiet():
                if hasattr(manager, "load"):  # lm-eval >= 0.4.10
                    manager.load([name])
                else:
                    from lm_eval.tasks import get_task_dict

                    get_task_dict([name], manager)
        except Exception as err:  # noqa: BLE001 - datasets/hub raise many kinds
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            where = (f"not in the Hugging Face cache and {_offline_env()} is set (no network)" if _offline_env()
                     and not is_local(name) else f"{type(err).__name__}: {first}")
            raise EvalSetupError(f"task {name}: could not load its data ({where})") from None
    return manager


@contextlib.contextmanager
def _quiet():
    """lm-eval, datasets and huggingface_hub at WARNING: no INFO lines per task and evaluation."""
    loggers = [logging.getLogger(n) for n in ("lm-eval", "lm_eval", "datasets", "huggingface_hub")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


@contextlib.contextmanager
def _console(progress: bool):
    """lm-eval's prints go to stderr (stdout stays for results); without `progress`, its progress bars
    are dropped too (they are tqdm bars on stderr that no option of `simple_evaluate` turns off): what it
    writes to stderr is held back and only lines that mention a warning or an error are passed on."""
    held = io.StringIO()
    with contextlib.redirect_stdout(held if not progress else sys.stderr), \
            (contextlib.redirect_stderr(held) if not progress else contextlib.nullcontext()):
        try:
            yield
        finally:
            for line in held.getvalue().replace("\r", "\n").splitlines():
                if "warn" in line.lower() or "error" in line.lower():
                    print(line, file=sys.stderr)


def _datgpt_commit() -> str:
    from pathlib import Path

    from training.tracking import git_commit

    return git_commit(Path(__file__).resolve().parents[1])


@contextlib.contextmanager
def _patched(module, name: str, value):
    before = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, before)


@contextlib.contextmanager
def _no_worker_processes():
    """lm-eval bootstraps the standard error of some metrics (perplexity) in a forked process pool,
    which deadlocks in a process with other threads (MLflow's async logging while training);
    `DISABLE_MULTIPROC` makes it bootstrap in this process."""
    before = os.environ.get("DISABLE_MULTIPROC")
    os.environ["DISABLE_MULTIPROC"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("DISABLE_MULTIPROC", None)
        else:
            os.environ["DISABLE_MULTIPROC"] = before


@contextlib.contextmanager
def _random_state_kept():
    """Restore Python's, NumPy's and torch's (CPU and CUDA) global random state afterwards."""
    import numpy as np

    py, npy = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


def evaluate_model(model: torch.nn.Module, names: list[str], *, manager=None, limit: int | None = None,
                   batch_size: int = 16, device: torch.device | str | None = None, autocast=None,
                   tokenizer: str = "gpt2", progress: bool = True, env_info: bool = True) -> dict:
    """Run lm-eval's `simple_evaluate` on `model` (zero-shot, the tasks' own settings); returns its
    results dict without per-document samples. `limit`: at most this many documents per task.
    `env_info=False` leaves out lm-eval's description of the environment (it runs `pip list` and
    other commands, about 0.5 s or more: most of a small evaluation; the trainer's repeated
    evaluations skip it)."""
    manager = manager if manager is not None else check_tasks(names)
    import lm_eval.evaluator
    from lm_eval import simple_evaluate

    lm = DatgptLM(model, tokenizer=tokenizer, batch_size=batch_size, device=device, autocast=autocast,
                  progress=progress)
    skip_env = (not env_info and hasattr(lm_eval.evaluator, "add_env_info")
                and _patched(lm_eval.evaluator, "add_env_info", lambda storage: None))
    # lm-eval records the git commit of the working folder (and git prints "fatal: not a git repository"
    # outside one); the results record datgpt's own commit instead, as the runs' datgpt.git_commit tag does
    own_commit = (hasattr(lm_eval.evaluator, "get_git_commit_hash")
                  and _patched(lm_eval.evaluator, "get_git_commit_hash", _datgpt_commit))
    with _random_state_kept(), _quiet(), _console(progress), _no_worker_processes(), \
            (skip_env or contextlib.nullcontext()), (own_commit or contextlib.nullcontext()):
        results = simple_evaluate(model=lm, tasks=list(names), task_manager=manager, limit=limit, log_samples=False,
                                  bootstrap_iters=BOOTSTRAP_ITERS)
    results.pop("samples", None)
    return results


def metrics_of(results: dict) -> dict[str, float]:
    """The finite numbers of lm-eval's `results` (tasks and groups) as `eval/<task>/<metric>`."""
    metrics = {}
    for section in ("results", "groups"):
        for task, values in (results.get(section) or {}).items():
            for key, value in values.items():
                if "," not in key or isinstance(value, bool) or not isinstance(value, (int, float)):
                    continue
                if math.isfinite(float(value)):
                    metrics[eval_metric(task, metric_from_lm_eval(key))] = float(value)
    return metrics


def results_json(results: dict) -> str:
    """lm-eval's results as JSON (what `lm_eval --output_path` writes, without samples)."""
    from lm_eval.utils import handle_non_serializable

    return json.dumps(results, indent=2, default=handle_non_serializable, ensure_ascii=False) + "\n"


def format_results(results: dict) -> str:
    """lm-eval's own table: one row per task, filter and metric, with its standard error."""
    from lm_eval.utils import make_table

    text = make_table(results)
    if results.get("groups"):
        text += "\n" + make_table(results, "groups")
    return text


@dataclass
class DownstreamPlan:
    """When and what the trainer evaluates downstream (the `eval` section), and how it logs it.

    `every_tokens` > 0: at step 0, whenever a multiple of it is crossed and at the end (the rule of
    `train.eval_every_tokens`, so arms with the same tokens per step are evaluated at the same token
    counts); 0: at the end only. `log_results(step, results)` stores the results JSON (rank 0)."""

    tasks: list[str]
    every_tokens: int
    limit: int | None
    batch_size: int
    manager: object
    device: torch.device
    autocast: object = None
    tokenizer: str = "gpt2"
    log_results: object = None

    def due(self, step: int, steps: int, tokens_per_step: int) -> bool:
        from training.trainer import eval_due

        return step == steps if self.every_tokens == 0 else eval_due(step, steps, tokens_per_step, self.every_tokens)

    def __call__(self, model: torch.nn.Module, step: int) -> dict[str, float]:
        results = evaluate_model(model, self.tasks, manager=self.manager, limit=self.limit,
                                 batch_size=self.batch_size, device=self.device, autocast=self.autocast,
                                 tokenizer=self.tokenizer, progress=False, env_info=False)
        if self.log_results is not None:
            try:
                self.log_results(step, results)
            except Exception as err:  # noqa: BLE001 - the metrics still go to the run
                print(f"warning: could not log the lm-eval results at step {step} ({type(err).__name__})",
                      file=sys.stderr)
        return metrics_of(results)


__all__ = ["EvalSetupError", "check_tasks", "evaluate_model", "metrics_of", "results_json", "format_results",
           "DownstreamPlan", "is_local", "task_manager"]
