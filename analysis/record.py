"""The MLflow record: every name training writes and analysis reads, in one place.

This module is the one seam between training and analysis (DESIGN.md, "MLflow layout"). Training
writes through these names, analysis reads through them, and no other file spells one of them as a
literal (``tests/test_record.py`` checks). It imports nothing but the standard library, so the runner,
the analysis and a notebook can all use it without torch or MLflow.

The layout, one MLflow experiment per experiment YAML (``name`` or ``tracking.experiment``):

* **parent run**: one per runner invocation (``ROLE_PARENT``). Tags: targets, baseline arm, config hash,
  git commit, precision parity, the learning rates a sweep chose. Params: the shared config. Artifacts:
  the resolved YAML, the report (figures and tables), a sweep's learning-rate table. Metrics: the
  answer (:func:`answer_metric`): each arm's final validation loss, tokens to each target, the speedups
  with their confidence limits, and beside each number that can be a bound its direction
  (:func:`answer_bound_metric`), all computed by :func:`analysis.summary.summarize`.
* **child run**: one per unit (``ROLE_CHILD``): an (arm, seed), or in a sweep an (arm, learning rate,
  budget, budget method, seed). Its stage (``STAGE_SEARCH`` or ``STAGE_MAIN``) and method
  (``METHOD_FULL`` or ``METHOD_COOLDOWN``) say whether it is a learning-rate search unit, a main run or
  a cooldown branch (``TAG_BRANCH_OF`` set). Params: the flattened resolved config plus ``derived.*``.
  Metrics against the optimizer step, with :data:`TOKENS` logged at the same steps; of the hypersphere
  diagnostics only a few summaries (:data:`DIAG_SUMMARY`) are metrics, the per-layer values are one
  table artifact per evaluation (:func:`diagnostics_artifact`) plus :data:`DIAGNOSTICS_ARTIFACT`.
* **downstream accuracy** (lm-evaluation-harness, training/downstream.py), in a child run: metrics
  ``eval/<task>/<metric>`` (:func:`eval_metric`) at the optimizer step the model was evaluated at, with
  the run's ``tokens`` at the same step; ``<metric>`` is lm-eval's metric name with its filter
  (:func:`metric_from_lm_eval`: ``acc``, ``acc_norm``, ``acc_stderr``, ``exact_match_strict-match``); the
  full lm-eval results (no per-document samples) as the JSON artifact :func:`eval_results_artifact`.
* **experiment tags**: :data:`TAG_EXPERIMENT_KIND` (MLflow opens the runs, not GenAI traces),
  :data:`TAG_RUNS_VIEW` (the shared view of the runs table with the answer's columns) and
  :data:`TAG_CURVES_VIEW` (the shared view of the runs page that shows the losses against tokens first).
"""

from __future__ import annotations

import hashlib
import math
import re

# ------------------------------------------------------------------ run roles and their tag values
TAG_ROLE = "datgpt.role"
ROLE_PARENT = "parent"
ROLE_CHILD = "child"
TAG_PARENT = "mlflow.parentRunId"  # MLflow's own: nests a child run under its parent in the UI
TAG_RUN_NAME = "mlflow.runName"  # MLflow's own: the run's name

TAG_STAGE = "datgpt.sweep_stage"
STAGE_SEARCH = "lr_search"  # a learning-rate search unit
STAGE_MAIN = "main"  # a main-stage run (every run outside a sweep)
TAG_METHOD = "datgpt.budget_method"
METHOD_FULL = "full"  # its own full schedule over its budget
METHOD_COOLDOWN = "cooldown"  # a WSD cooldown branch (or its trunk)
TAG_LR_SELECTED = "datgpt.lr_selected"  # on search units once the choice is made: "true" | "false"
TAG_BRANCH_OF = "datgpt.branch_of"  # a cooldown branch: its trunk's run id
TAG_BRANCH_STEP = "datgpt.branch_step"  # ... and the trunk step it starts from

# ------------------------------------------------------------------ experiment tags
#: MLflow 3 reads this tag to choose the UI of an experiment; "custom_model_development" is its
#: "Model training" kind, so the UI opens on the runs table rather than on GenAI traces.
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND_TRAINING = "custom_model_development"
#: MLflow 3's UI keeps a shared view of the runs page (filter, grouping, chart layout, x axis) in the
#: experiment tag ``mlflow.sharedViewState.<key>`` and opens it from ``...?viewStateShareKey=<key>``.
#: datgpt writes one, the training curves (training/mlflow_view.py ``curves_view``), under this key.
CURVES_VIEW_KEY = "datgpt-curves"
TAG_CURVES_VIEW = f"mlflow.sharedViewState.{CURVES_VIEW_KEY}"
#: ... and one of the runs table, whose columns are the answer (training/mlflow_view.py ``runs_view``).
RUNS_VIEW_KEY = "datgpt-runs"
TAG_RUNS_VIEW = f"mlflow.sharedViewState.{RUNS_VIEW_KEY}"

# ------------------------------------------------------------------ parent tags
TAG_TARGETS = "datgpt.targets"  # JSON list of the target validation losses
TAG_BASELINE = "datgpt.baseline_arm"
TAG_LOSS_UNIT = "datgpt.loss_unit"  # what one token id is, so what a loss is per: "token" (GPT-2 BPE) or "byte"
LOSS_UNIT_DEFAULT = "token"  # parent runs written before the tag existed were all GPT-2
TAG_CONFIG_HASH = "datgpt.config_hash"
TAG_GIT_COMMIT = "datgpt.git_commit"
TAG_PRECISION = "datgpt.precision"  # each arm's device/precision/compile/parameter dtype, and parity
TAG_BEST_LR_PREFIX = "datgpt.best_lr"


def best_lr_tag(arm: str, budget: int | None = None) -> str:
    """The parent tag holding the learning rate the search chose for ``arm`` (at ``budget``, if per budget)."""
    return f"{TAG_BEST_LR_PREFIX}.{arm}" + (f".{budget}" if budget else "")


# ------------------------------------------------------------------ child tags
TAG_ARM = "datgpt.arm"
TAG_SEED = "datgpt.seed"
TAG_MODEL_KIND = "datgpt.model_kind"
TAG_FAILURE = "datgpt.failure"  # a child run that diverged (a non-finite training loss, FAILED): the message
#: A child run its invocation no longer continues: the process died before the unit's first checkpoint, and
#: the same command trained the unit again in the child run this tag names (training/session.py). KILLED
#: if it was left RUNNING, else FAILED as it ended; the analysis skips it.
TAG_SUPERSEDED_BY = "datgpt.superseded_by"
TAG_CHECKPOINT = "datgpt.checkpoint"  # its final checkpoint (absolute path)
TAG_INIT_FROM = "datgpt.init_from"  # fine-tuning: the spec as written in the YAML
TAG_INIT_CHECKPOINT = "datgpt.init_from_checkpoint"  # ... the checkpoint it resolved to (absolute path)
TAG_INIT_RUN_ID = "datgpt.init_from_run_id"  # ... the child run that wrote that checkpoint
TAG_INIT_PARENT_RUN_ID = "datgpt.init_from_parent_run_id"
TAG_INIT_STEP = "datgpt.init_from_step"
TAG_INIT_TOKENS = "datgpt.init_from_tokens"

# ------------------------------------------------------------------ child params (flattened config keys)
PARAM_BUDGET = "train.tokens"
PARAM_LR = "optim.lr"
PARAM_CONTEXT = "model.context_length"
PARAM_TOKENS_TRAINED = "derived.tokens_trained"  # steps x tokens per step: the budget as trained
DERIVED_PREFIX = "derived"  # derived.steps, derived.tokens_per_step, derived.device, ...

# ------------------------------------------------------------------ child metrics (against the optimizer step)
TOKENS = "tokens"  # tokens trained so far, logged at every step that logs anything
VAL_LOSS = "val/loss"  # at step 0, every train.eval_every_tokens, and at the end
TRAIN_LOSS = "train/loss"
GRAD_NORM = "train/grad_norm"
LR = "lr"
TOKENS_PER_S = "throughput/tokens_per_s"
STEP_MS = "time/step_ms"
ELAPSED_S = "time/elapsed_s"  # training seconds so far, evaluations excluded
MFU = "mfu"  # CUDA only
DIAG_PREFIX = "diag"  # hypersphere diagnostics: diag/<group>/... (the per-layer values, in table artifacts)


def diag_metric(*parts: object) -> str:
    """``diag/<part>/<part>/...``: a per-layer hypersphere-diagnostics value (training/model_diagnostics.py),
    a key of the per-evaluation tables (:func:`diagnostics_artifact`), not an MLflow metric."""
    return "/".join([DIAG_PREFIX, *(str(p) for p in parts)])


#: The few diagnostics logged as metrics at every evaluation (training/model_diagnostics.py ``summarize``).
#: No "/" in the name: MLflow's chart view groups metrics by what comes before the last "/" and puts
#: the metrics without one ("Model metrics") after every other section, i.e. after the losses.
DIAG_SUMMARY_PREFIX = "diag."
DIAG_HIDDEN_NORM_LAST = DIAG_SUMMARY_PREFIX + "hidden_norm_last"  # mean token norm after the last block
DIAG_WEIGHT_NORM_MEAN = DIAG_SUMMARY_PREFIX + "weight_norm_mean"  # mean row norm of every layer matrix
DIAG_COND_MAX = DIAG_SUMMARY_PREFIX + "cond_max"  # largest condition number of a layer matrix
DIAG_ALPHA_A_MEAN = DIAG_SUMMARY_PREFIX + "alpha_A_mean"  # nGPT: mean effective alpha_A over layers
DIAG_ALPHA_M_MEAN = DIAG_SUMMARY_PREFIX + "alpha_M_mean"  # nGPT: mean effective alpha_M over layers
DIAG_SUMMARY = (DIAG_HIDDEN_NORM_LAST, DIAG_WEIGHT_NORM_MEAN, DIAG_COND_MAX, DIAG_ALPHA_A_MEAN, DIAG_ALPHA_M_MEAN)


# ------------------------------------------------------------------ artifacts
CONFIG_ARTIFACT = "config/resolved.yaml"  # parent: the resolved experiment YAML
REPORT_DIR = "report"  # parent: every figure and table of analysis.report.build_report
LR_SELECTION_TXT = "sweep/lr_selection.txt"  # parent: the learning-rate search and its choice
LR_SELECTION_CSV = "sweep/lr_selection.csv"
DIAGNOSTICS_ARTIFACT = "diagnostics/final.json"  # child: final hypersphere diagnostics (with distributions)
DIAGNOSTICS_DIR = "diagnostics"  # child: ... and one table per evaluation, diagnostics/step_XXXXXXXX.json
SAMPLES_ARTIFACT = "samples/samples.txt"  # child: text sampled from fixed prompts
MODEL_ARTIFACT = "model"  # child: the final model in MLflow's PyTorch flavour



def diagnostics_artifact(step: int) -> str:
    """``diagnostics/step_00000016.json``: the per-layer diagnostics of the evaluation at ``step``."""
    return f"{DIAGNOSTICS_DIR}/step_{int(step):08d}.json"


# ------------------------------------------------------------------ the answer, as parent metrics
ANSWER_PREFIX = "result"


def target_label(target: float) -> str:
    """A target as it appears in metric names: 6.0 -> ``6.0``, 5.25 -> ``5.25``."""
    text = f"{float(target):g}"
    return text if any(c in text for c in ".en") else text + ".0"


#: Quantities of :func:`answer_metric` that the runs table shows (training/mlflow_view.py ``answer_columns``).
ANSWER_FINAL_LOSS = "final_val_loss"
ANSWER_SPEEDUP_BOUND = "speedup_bound"  # the speedup's kind of number (answer_bound_metric, BOUND_*)
ANSWER_SPEEDUP_WITH_INTERVAL = ("speedup", ANSWER_SPEEDUP_BOUND, "speedup_ci_low", "speedup_ci_high")

#: each answer metric that can be a bound (tokens and seconds to target, speedups) has a sibling metric,
#: :func:`answer_bound_metric`, whose value says what kind of number it is: the sign of (true value - logged
#: value) as far as the seeds show it (censored seeds, analysis/summary.py)
BOUND_EXACT = 0.0  # the logged number is the estimate
BOUND_LOWER = 1.0  # "≥": a lower bound, the quantity is at least the logged number
BOUND_UPPER = -1.0  # "≤": an upper bound


def answer_metric(arm: str, quantity: str, target: float | None = None,
                  context_length: int | None = None) -> str:
    """The parent-run metric of one number of the answer, e.g. ``result/ngpt/speedup_at_6.0``.

    ``quantity`` is a column of the summary (``final_val_loss``, ``tokens_to_target``, ``speedup``,
    ``speedup_ci_low``, ...); ``target`` is omitted for per-arm numbers (the final loss);
    ``context_length`` is added (``ctx1024/``) only when an experiment has several.
    """
    parts = [ANSWER_PREFIX]
    if context_length is not None and not (isinstance(context_length, float) and math.isnan(context_length)):
        parts.append(f"ctx{int(context_length)}")
    parts.append(str(arm))
    name = "/".join(parts) + f"/{quantity}"
    return name if target is None else f"{name}_at_{target_label(target)}"


def answer_bound_metric(arm: str, quantity: str, target: float, context_length: int | None = None) -> str:
    """The sibling of the answer metric of ``quantity`` that holds its bound direction (:data:`BOUND_EXACT`,
    :data:`BOUND_LOWER`, :data:`BOUND_UPPER`), e.g. ``result/ngpt/speedup_bound_at_6.0``."""
    return answer_metric(arm, f"{quantity}_bound", target, context_length)


# ------------------------------------------------------------------ downstream accuracy (child metrics and artifacts)
EVAL_PREFIX = "eval"  # metrics eval/<task>/<metric>
EVAL_RESULTS_DIR = "eval"  # artifact folder of the lm-eval results JSON files
STDERR_SUFFIX = "_stderr"  # lm-eval's standard error of a metric: <metric>_stderr

_UNSAFE = re.compile(r"[^A-Za-z0-9_.\- ]")  # what an MLflow metric name may not hold (besides "/")


def eval_metric(task: str, metric: str) -> str:
    """``eval/<task>/<metric>``: the MLflow metric of one downstream task and metric (characters MLflow
    does not allow in a name become ``_``; a ``/`` in either part too, so the name splits back)."""
    return f"{EVAL_PREFIX}/{_UNSAFE.sub('_', task)}/{_UNSAFE.sub('_', metric)}"


def parse_eval_metric(name: str) -> tuple[str, str] | None:
    """``(task, metric)`` of an ``eval/<task>/<metric>`` name, else None."""
    parts = name.split("/")
    if len(parts) == 3 and parts[0] == EVAL_PREFIX and parts[1] and parts[2]:
        return parts[1], parts[2]
    return None


def metric_from_lm_eval(key: str) -> str:
    """lm-eval's result key ``<metric>,<filter>`` -> the ``<metric>`` part of the MLflow name:
    ``acc,none`` -> ``acc``, ``acc_stderr,none`` -> ``acc_stderr``, ``exact_match,strict-match`` ->
    ``exact_match_strict-match``."""
    metric, _, filter_name = key.partition(",")
    return metric if filter_name in ("", "none") else f"{metric}_{filter_name}"


def eval_results_artifact(step: int, tasks: list[str]) -> str:
    """The artifact file of one evaluation's lm-eval results: ``eval/step_XXXXXXXX_<tasks>.json``
    (the task names joined by ``+``, sorted; a hash when that is longer than 80 characters)."""
    joined = "+".join(sorted(tasks))
    if len(joined) > 80 or _UNSAFE.sub("", joined.replace("+", "")) != joined.replace("+", ""):
        joined = "tasks-" + hashlib.sha256(joined.encode()).hexdigest()[:12]
    return f"{EVAL_RESULTS_DIR}/step_{int(step):08d}_{joined}.json"
