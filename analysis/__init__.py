"""datgpt analysis: MLflow -> tidy pandas frame -> tokens-to-target, speedups, figures, tables.

Kept light on purpose: importing ``analysis`` (or ``analysis.targets``) does not import MLflow or
matplotlib; the names below are resolved on first use.

    from analysis import build_report
    report = build_report("verdict_vs_baseline", Path("figures/verdict_vs_baseline"))

Command line: ``python -m analysis --help``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from analysis.errors import (
    AnalysisError,
    AnalysisWarning,
    NoRunsError,
    TrackingStoreError,
    UnknownExperimentError,
    UnknownParentRunError,
)

if TYPE_CHECKING:  # pragma: no cover
    from analysis.load import ExperimentData, load_experiment
    from analysis.report import Report, build_report
    from analysis.summary import summarize
    from analysis.targets import (
        budget_tokens_to_target,
        fieller_interval,
        seconds_to_target,
        speedup,
        tokens_to_target,
        x_to_target,
    )

_LAZY = {
    "build_report": "analysis.report",
    "Report": "analysis.report",
    "load_experiment": "analysis.load",
    "ExperimentData": "analysis.load",
    "summarize": "analysis.summary",
    "tokens_to_target": "analysis.targets",
    "seconds_to_target": "analysis.targets",
    "x_to_target": "analysis.targets",
    "budget_tokens_to_target": "analysis.targets",
    "speedup": "analysis.targets",
    "fieller_interval": "analysis.targets",
}

__all__ = [
    "AnalysisError",
    "AnalysisWarning",
    "NoRunsError",
    "TrackingStoreError",
    "UnknownExperimentError",
    "UnknownParentRunError",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'analysis' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
