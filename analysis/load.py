"""Load datgpt runs and their full metric histories from MLflow into one tidy pandas frame.

The store is reached through analysis/store.py; which runs are kept is decided in analysis/runs.py; this
module builds the frame (``load_experiment``).

The MLflow layout written by the runner (the contract this module reads):

* one experiment per experiment YAML;
* one **parent** run per invocation: tags ``datgpt.role=parent``, ``datgpt.targets`` (JSON list of
  target validation losses), ``datgpt.baseline_arm``, ``datgpt.config_hash``, ``datgpt.git_commit``;
* one **child** run per (arm, seed[, budget]): tags ``mlflow.parentRunId``, ``datgpt.role=child``,
  ``datgpt.arm``, ``datgpt.seed``, ``datgpt.model_kind``; params ``train.tokens`` (budget) and
  ``model.context_length`` among the flattened config; metrics logged against the optimizer step,
  with a ``tokens`` metric (and ``time/elapsed_s``) at every logged step.

Which runs are loaded: by default **all** child runs of the experiment, across every parent run
(invocation). When the same (arm, seed, budget, context length) appears more than once (e.g. an
invocation was repeated), only the most recently started run is kept and the others are reported
in a warning. ``parent_run_id`` restricts the load to one invocation (``"latest"`` = the most
recently started parent). Child runs whose status is not FINISHED are skipped with a warning
unless ``include_unfinished=True``, except runs that diverged (FAILED with a ``datgpt.failure`` tag):
they are kept, marked in the ``diverged`` column, and the summary counts them as seeds that did not reach
what they had not reached by then (analysis/summary.py). Runs without any ``val/loss`` are skipped with a
warning. A child run tagged ``datgpt.superseded_by`` (an attempt whose process died before the unit's first
checkpoint, trained again in the run it names) is skipped without one, whatever ``include_unfinished`` says.
The ``budget`` of a run is the tokens it trained, steps x tokens per step (analysis/runs.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from analysis import record
from analysis.errors import NoRunsError, warn
from analysis.runs import choose_parent, dedupe, diverged, lr_search_table, run_label, run_meta
from analysis.store import ParentInfo, get_experiment, open_client, parent_info, search_all_runs

if TYPE_CHECKING:  # pragma: no cover
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient


__all__ = ["FRAME_COLUMNS", "RUN_COLUMNS", "ExperimentData", "load_experiment"]


FRAME_COLUMNS = [
    "experiment",
    "parent_run_id",
    "run_id",
    "arm",
    "seed",
    "budget",
    "context_length",
    "diverged",
    "step",
    "tokens",
    "elapsed_s",
    "metric",
    "value",
]

RUN_COLUMNS = [
    "run_id",
    "parent_run_id",
    "arm",
    "seed",
    "budget",
    "context_length",
    "diverged",
    "model_kind",
    "status",
    "start_time",
    "run_name",
    "lr",
    "method",
    "branch_of",
]


@dataclass
class ExperimentData:
    """Everything :func:`load_experiment` found.

    ``frame`` is the tidy frame (columns :data:`FRAME_COLUMNS`, one row per logged metric value;
    ``tokens`` and ``time/elapsed_s`` are not rows but the ``tokens`` / ``elapsed_s`` columns).
    ``runs`` has one row per kept child run. ``targets`` / ``baseline_arm`` come from the parent
    run tags (the most recent parent first). ``skipped`` lists ``(run_id, reason)`` of the runs
    left out.

    Sweeps: ``frame`` holds one budget method (``full`` runs when there are any, else ``cooldown``
    runs); when an invocation ran both, ``cooldown_frame`` holds the cooldown runs, for the
    comparison. Learning rates the search did not choose are not in ``frame``; ``lr_search`` has
    every search run's final validation loss with the choice re-derived
    (:func:`analysis.sweeps.select_lr`), or is None without a search.
    """

    experiment: str
    experiment_id: str
    tracking_uri: str
    frame: pd.DataFrame
    runs: pd.DataFrame
    parents: dict[str, ParentInfo]
    targets: list[float]
    baseline_arm: str
    skipped: list[tuple[str, str]] = field(default_factory=list)
    cooldown_frame: pd.DataFrame | None = None
    lr_search: pd.DataFrame | None = None
    loss_unit: str = record.LOSS_UNIT_DEFAULT  # "token" or "byte": the parent runs' datgpt.loss_unit tag

    @property
    def arms(self) -> list[str]:
        """Arms in display order: baseline first, then alphabetical."""
        arms = self.runs["arm"].dropna().unique().tolist()
        return sorted(arms, key=lambda a: (a != self.baseline_arm, str(a)))


def _history(client: "MlflowClient", run_id: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    """Full history of one metric as (step, value), one value per step (the last one logged)."""
    hist = client.get_metric_history(run_id, key)
    if not hist:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=float)
    steps = np.fromiter((m.step for m in hist), dtype=np.int64, count=len(hist))
    stamps = np.fromiter((m.timestamp for m in hist), dtype=np.int64, count=len(hist))
    values = np.fromiter((m.value for m in hist), dtype=float, count=len(hist))
    # a resumed run may re-log some steps: keep the most recently logged value of each step
    order = np.lexsort((np.arange(len(hist)), stamps, steps))
    steps, values = steps[order], values[order]
    last = np.ones(steps.size, dtype=bool)
    last[:-1] = steps[1:] != steps[:-1]
    return steps[last], values[last]


def _join_by_step(steps: np.ndarray, src_steps: np.ndarray, src_values: np.ndarray) -> np.ndarray:
    """Values of ``src`` at ``steps``: exact match, else linear in step inside the logged range."""
    out = np.full(steps.size, np.nan)
    if src_steps.size == 0:
        return out
    pos = np.searchsorted(src_steps, steps)
    pos_c = np.clip(pos, 0, src_steps.size - 1)
    exact = src_steps[pos_c] == steps
    out[exact] = src_values[pos_c[exact]]
    missing = ~exact & (steps >= src_steps[0]) & (steps <= src_steps[-1])
    if missing.any():
        out[missing] = np.interp(steps[missing], src_steps, src_values)
    return out


def load_experiment(
    experiment: str,
    *,
    parent_run_id: str | None = None,
    tracking_uri: str | None = None,
    include_unfinished: bool = False,
    metrics: list[str] | None = None,
    baseline_arm: str | None = None,
) -> ExperimentData:
    """Load the child runs of ``experiment`` with their full metric histories.

    Args:
        experiment: MLflow experiment name (the YAML's ``tracking.experiment``, default ``name``).
        parent_run_id: ``None`` = all invocations (parent runs) of the experiment; a run id (or a
            unique prefix of one) = only that invocation; ``"latest"`` = the most recent one.
        tracking_uri: MLflow tracking URI; default ``MLFLOW_TRACKING_URI``, else MLflow's default.
        include_unfinished: also load RUNNING/FAILED/KILLED child runs (default: skip them with a
            warning; a run that diverged is kept either way).
        metrics: metric keys to load (default: all); ``val/loss`` is always loaded; a key ending in
            ``/`` loads every metric under it (``eval/``).
        baseline_arm: the baseline arm; default the parent runs' ``datgpt.baseline_arm`` tag (the most
            recent parent's, with a warning, when the parents disagree).

    Raises:
        TrackingStoreError: the store does not exist or cannot be read.
        UnknownExperimentError: no experiment of that name (the message lists the existing ones).
        UnknownParentRunError: ``parent_run_id`` is not a parent run of the experiment.
        NoRunsError: no usable child run is left.
    """
    client, uri = open_client(tracking_uri)
    exp = get_experiment(client, uri, experiment)

    all_runs = search_all_runs(client, exp.experiment_id)  # newest first
    parents = {r.info.run_id: parent_info(r) for r in all_runs
               if r.data.tags.get(record.TAG_ROLE) == record.ROLE_PARENT}
    children = [r for r in all_runs
                if r.data.tags.get(record.TAG_ROLE) == record.ROLE_CHILD
                or (r.data.tags.get(record.TAG_ROLE) is None and record.TAG_ARM in r.data.tags)]

    if parent_run_id is not None:
        chosen = choose_parent(parent_run_id, parents, experiment)
        children = [r for r in children if r.data.tags.get(record.TAG_PARENT) == chosen]
        parents = {chosen: parents[chosen]}

    skipped: list[tuple[str, str]] = []
    superseded = [r for r in children if record.TAG_SUPERSEDED_BY in r.data.tags]
    skipped += [(r.info.run_id, f"superseded by run {r.data.tags[record.TAG_SUPERSEDED_BY]}") for r in superseded]
    children = [r for r in children if record.TAG_SUPERSEDED_BY not in r.data.tags]
    kept: list[Run] = []
    for r in children:
        label = run_label(r)
        if diverged(r) and r.data.tags.get(record.TAG_LR_SELECTED) != "false":
            warn(f"{label} diverged ({r.data.tags[record.TAG_FAILURE]}); it counts: a target it had not "
                 "reached by then is censored")
        elif r.info.status != "FINISHED" and not include_unfinished:
            reason = f"status {r.info.status}"
            skipped.append((r.info.run_id, reason))
            warn(f"skipping {label}: {reason} (use --include-unfinished to keep it)")
            continue
        if not r.data.tags.get(record.TAG_ARM):
            skipped.append((r.info.run_id, f"no {record.TAG_ARM} tag"))
            warn(f"skipping {label}: no {record.TAG_ARM} tag")
            continue
        if record.VAL_LOSS not in r.data.metrics:
            skipped.append((r.info.run_id, f"no {record.VAL_LOSS}"))
            warn(f"skipping {label}: it logged no {record.VAL_LOSS}")
            continue
        kept.append(r)

    lr_search = lr_search_table(children)
    kept = [r for r in kept if r.data.tags.get(record.TAG_LR_SELECTED) != "false"]  # grid runs not chosen
    methods = {r.data.tags.get(record.TAG_METHOD, record.METHOD_FULL) for r in kept}
    cooldown_runs = []
    if methods == {record.METHOD_FULL, record.METHOD_COOLDOWN}:
        cooldown_runs = dedupe([r for r in kept if r.data.tags.get(record.TAG_METHOD) == record.METHOD_COOLDOWN], skipped)
        kept = [r for r in kept if r.data.tags.get(record.TAG_METHOD, record.METHOD_FULL) == record.METHOD_FULL]
    kept = dedupe(kept, skipped)
    if not kept:
        where = f" under parent run {parent_run_id}" if parent_run_id else ""
        detail = f" ({len(skipped)} skipped: see warnings)" if skipped else ""
        raise NoRunsError(f"experiment {experiment!r} has no usable child runs{where}{detail}")

    run_rows: list[dict[str, Any]] = []
    frame = _frames(client, kept, experiment, metrics, run_rows)
    cooldown_frame = _frames(client, cooldown_runs, experiment, metrics, []) if cooldown_runs else None
    runs = pd.DataFrame(run_rows, columns=RUN_COLUMNS)
    for col in ("seed", "budget", "context_length"):
        runs[col] = pd.array(runs[col].tolist(), dtype="Int64")

    used_parents = {p for p in runs["parent_run_id"] if p in parents}
    ordered = sorted((parents[p] for p in used_parents),
                     key=lambda p: -(p.start_time or 0))
    targets: list[float] = []
    for p in ordered:
        for t in p.targets:
            if t not in targets:
                targets.append(t)
    baselines = [p.baseline_arm for p in ordered if p.baseline_arm]
    arms = sorted(runs["arm"].unique().tolist())
    if baseline_arm is not None:  # chosen by the caller (--baseline): the tags do not matter
        baseline = baseline_arm
    elif baselines:
        baseline = baselines[0]
        if len(set(baselines)) > 1:
            warn(f"parent runs disagree on the baseline arm {sorted(set(baselines))}; "
                  f"using {baseline!r} from the most recent one")
    else:
        baseline = "gpt" if "gpt" in arms else arms[0]
        warn(f"no {record.TAG_BASELINE} tag on the parent run(s); using {baseline!r} as baseline")
    if not targets:
        warn(f"no {record.TAG_TARGETS} tag on the parent run(s); no targets to summarise")
    units = list(dict.fromkeys(p.loss_unit for p in ordered))
    if len(units) > 1:
        warn(f"parent runs mix tokenizers (losses per {' and per '.join(units)}); their losses are not comparable, "
             f"labelled per {units[0]} as the most recent one")

    return ExperimentData(
        experiment=experiment,
        experiment_id=exp.experiment_id,
        tracking_uri=uri,
        frame=frame,
        runs=runs,
        parents=dict(sorted(parents.items(), key=lambda kv: -(kv[1].start_time or 0))),
        targets=targets,
        baseline_arm=baseline,
        skipped=skipped,
        cooldown_frame=cooldown_frame,
        lr_search=lr_search,
        loss_unit=units[0] if units else record.LOSS_UNIT_DEFAULT,
    )


def _frames(client: "MlflowClient", runs: list["Run"], experiment: str, metrics: list[str] | None,
            run_rows: list[dict[str, Any]]) -> pd.DataFrame:
    frames = []
    for r in runs:
        info = run_meta(r)
        run_rows.append(info)
        frames.append(_run_frame(client, r, info, experiment, metrics))
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=FRAME_COLUMNS)
    return _typed_frame(frame)


def _run_frame(client: "MlflowClient", r: "Run", meta: dict[str, Any], experiment: str,
               metrics: list[str] | None) -> pd.DataFrame:
    keys = sorted(r.data.metrics)
    tok_steps, tok_vals = (_history(client, r.info.run_id, record.TOKENS)
                           if record.TOKENS in keys else (np.empty(0, np.int64), np.empty(0)))
    el_steps, el_vals = (_history(client, r.info.run_id, record.ELAPSED_S)
                         if record.ELAPSED_S in keys else (np.empty(0, np.int64), np.empty(0)))
    if tok_steps.size == 0:
        warn(f"{run_label(r)} logged no '{record.TOKENS}' metric; its tokens are NaN")
    wanted = [k for k in keys if k not in (record.TOKENS, record.ELAPSED_S)]
    if metrics is not None:
        prefixes = tuple(m for m in metrics if m.endswith("/"))  # "eval/": every metric under it
        wanted = [k for k in wanted
                  if k in set(metrics) | {record.VAL_LOSS} or (prefixes and k.startswith(prefixes))]
    parts = []
    for key in wanted:
        steps, values = _history(client, r.info.run_id, key)
        if steps.size == 0:
            continue
        parts.append(pd.DataFrame({
            "step": steps,
            "tokens": _join_by_step(steps, tok_steps, tok_vals),
            "elapsed_s": _join_by_step(steps, el_steps, el_vals),
            "metric": key,
            "value": values,
        }))
    df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["step", "tokens", "elapsed_s", "metric", "value"])
    df.insert(0, "experiment", experiment)
    df.insert(1, "parent_run_id", meta["parent_run_id"])
    df.insert(2, "run_id", meta["run_id"])
    df.insert(3, "arm", meta["arm"])
    df.insert(4, "seed", meta["seed"])
    df.insert(5, "budget", meta["budget"])
    df.insert(6, "context_length", meta["context_length"])
    df.insert(7, "diverged", meta["diverged"])
    return df


def _typed_frame(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.reindex(columns=FRAME_COLUMNS)
    for col in ("seed", "budget", "context_length"):
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("Int64")
    frame["diverged"] = frame["diverged"].eq(True)
    frame["step"] = frame["step"].astype("int64")
    for col in ("tokens", "elapsed_s", "value"):
        frame[col] = frame[col].astype(float)
    return frame.sort_values(["arm", "seed", "budget", "run_id", "metric", "step"],
                             kind="stable", ignore_index=True)
