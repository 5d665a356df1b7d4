"""Which child runs an analysis keeps: the parent (invocation) asked for, one run per (arm, seed, budget,
context length) when an invocation was repeated (the most recently started wins; the others are reported),
each run's identifying tags and params parsed into one row (``run_meta``), and the learning-rate search
table of a sweep. analysis/load.py builds the frame from what is kept.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import pandas as pd

from analysis import record
from analysis.errors import UnknownParentRunError, warn
from analysis.store import ParentInfo, parse_int

if TYPE_CHECKING:  # pragma: no cover
    from mlflow.entities import Run


def lr_search_table(runs: list["Run"]) -> pd.DataFrame | None:
    """Every learning-rate search run's final validation loss, with the choice re-derived (a run that
    failed, e.g. diverged, counts as diverged; the newest run of each (context length, arm, budget, lr,
    seed) is used). Each context length is a search of its own (an experiment may hold several: a
    context-length series), so the table has a ``context_length`` column."""
    from analysis.sweeps import select_lr

    newest: dict[tuple, dict] = {}
    for r in sorted(runs, key=lambda r: r.info.start_time or 0):
        if r.data.tags.get(record.TAG_STAGE) != record.STAGE_SEARCH or r.info.status == "RUNNING":
            continue
        m = run_meta(r)
        loss = r.data.metrics.get(record.VAL_LOSS, math.nan) if r.info.status == "FINISHED" else math.nan
        newest[(m["context_length"], m["arm"], m["budget"], m["lr"], m["seed"])] = {
            "context_length": m["context_length"], "arm": m["arm"], "budget": m["budget"], "lr": m["lr"],
            "seed": m["seed"], "final_val_loss": loss}
    return select_lr(list(newest.values())) if newest else None


def choose_parent(wanted: str, parents: dict[str, ParentInfo], experiment: str) -> str:
    if not parents:
        raise UnknownParentRunError(f"experiment {experiment!r} has no parent runs "
                                    f"({record.TAG_ROLE}=parent)")
    if wanted == "latest":
        return max(parents.values(), key=lambda p: p.start_time or 0).run_id
    if wanted in parents:
        return wanted
    matches = [p for p in parents if p.startswith(wanted)] if len(wanted) >= 4 else []
    if len(matches) == 1:
        return matches[0]
    listing = ", ".join(
        p.run_id for p in sorted(parents.values(), key=lambda p: -(p.start_time or 0))[:10])
    kind = "ambiguous" if len(matches) > 1 else "unknown"
    raise UnknownParentRunError(
        f"{kind} parent run {wanted!r} in experiment {experiment!r}; parent runs (newest first): "
        f"{listing}")


def run_label(r: "Run") -> str:
    tags = r.data.tags
    arm = tags.get(record.TAG_ARM, "?")
    seed = tags.get(record.TAG_SEED, "?")
    budget = r.data.params.get(record.PARAM_BUDGET)
    extra = f" budget={budget}" if budget else ""
    return f"run {r.info.run_id} (arm={arm} seed={seed}{extra})"


def diverged(r: "Run") -> bool:
    """Whether the run diverged: FAILED with the runner's ``datgpt.failure`` tag (a non-finite training loss)."""
    return r.info.status == "FAILED" and record.TAG_FAILURE in r.data.tags


def run_meta(r: "Run") -> dict[str, Any]:
    """A run's identity as the analysis uses it. ``budget`` is the tokens it was planned to train, steps x
    tokens per step (``derived.tokens_trained``; ``train.tokens`` in a record without it): a budget that
    is not a multiple of the tokens per step trains fewer tokens than the YAML says."""
    tags, params = r.data.tags, r.data.params
    seed = parse_int(tags.get(record.TAG_SEED))
    if seed is None:
        seed = parse_int(params.get("seed"))
    trained = parse_int(params.get(record.PARAM_TOKENS_TRAINED))
    return dict(
        run_id=r.info.run_id,
        parent_run_id=tags.get(record.TAG_PARENT, ""),
        arm=tags.get(record.TAG_ARM),
        seed=seed,
        budget=trained if trained is not None else parse_int(params.get(record.PARAM_BUDGET)),
        context_length=parse_int(params.get(record.PARAM_CONTEXT)),
        diverged=diverged(r),
        model_kind=tags.get(record.TAG_MODEL_KIND),
        status=r.info.status,
        start_time=r.info.start_time,
        run_name=tags.get(record.TAG_RUN_NAME),
        lr=_parse_float(params.get(record.PARAM_LR)),
        method=tags.get(record.TAG_METHOD, record.METHOD_FULL),
        branch_of=tags.get(record.TAG_BRANCH_OF),
    )


def _parse_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def dedupe(runs: list["Run"], skipped: list[tuple[str, str]]) -> list["Run"]:
    """Keep the most recently started run of each (arm, seed, budget, context length)."""
    best: dict[tuple, Run] = {}
    for r in runs:
        m = run_meta(r)
        key = (m["arm"], m["seed"], m["budget"], m["context_length"])
        prev = best.get(key)
        if prev is None or (r.info.start_time or 0) > (prev.info.start_time or 0):
            if prev is not None:
                _note_duplicate(prev, r, skipped)
            best[key] = r
        else:
            _note_duplicate(r, prev, skipped)
    keep_ids = {r.info.run_id for r in best.values()}
    return [r for r in runs if r.info.run_id in keep_ids]


def _note_duplicate(dropped: "Run", kept: "Run", skipped: list[tuple[str, str]]) -> None:
    reason = f"superseded by the newer run {kept.info.run_id}"
    skipped.append((dropped.info.run_id, reason))
    warn(f"skipping {run_label(dropped)}: {reason} (same arm/seed/budget/context; "
          "pick one invocation with --parent)")
