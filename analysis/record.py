"""The MLflow record's names for downstream evaluation: the one place training writes them from and
analysis reads them from (torch-free; this module will hold the whole record contract).

Downstream accuracy (lm-evaluation-harness, training/downstream.py) goes into a **child run**:

* metrics ``eval/<task>/<metric>`` (:func:`eval_metric`), logged at the optimizer step the model was
  evaluated at, with the run's ``tokens`` metric at the same step. ``<metric>`` is lm-eval's metric
  name with its filter (:func:`metric_from_lm_eval`): ``acc``, ``acc_norm``, ``perplexity``, their
  standard errors ``acc_stderr`` ..., and ``<metric>_<filter>`` for a filter other than ``none``
  (``exact_match_strict-match``);
* the full lm-eval results (no per-document samples) as the JSON artifact
  :func:`eval_results_artifact` under ``eval/``.
"""

from __future__ import annotations

import hashlib
import re

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


__all__ = ["EVAL_PREFIX", "EVAL_RESULTS_DIR", "STDERR_SUFFIX", "eval_metric", "parse_eval_metric",
           "metric_from_lm_eval", "eval_results_artifact"]
