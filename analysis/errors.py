"""How bad input reaches the user, and the analysis package's exception and warning types (import-light).

`OneLineParser` is the argument parser of every datgpt command line (runner.py, `python -m analysis`, the
training tools): it lives here, in the lowest layer, because analysis imports nothing from training.
"""

from __future__ import annotations

import argparse
import warnings
from typing import NoReturn

EXIT_BAD_INPUT = 2  # bad arguments, config, data or store: one line on stderr, no traceback


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr, `error: MESSAGE (see PROG --help)`, with exit
    code 2, instead of argparse's usage block. Pass it as `parser_class` to `add_subparsers` too."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"error: {message} (see {self.prog} --help)\n")


class AnalysisError(Exception):
    """Base class of every error the analysis package raises on purpose.

    The CLI turns these into one line on stderr and exit code 2.
    """


class TrackingStoreError(AnalysisError):
    """The MLflow tracking store cannot be found or opened."""


class UnknownExperimentError(AnalysisError, LookupError):
    """No MLflow experiment has the requested name.

    ``available`` holds the names of the experiments that do exist.
    """

    def __init__(self, name: str, available: list[str], tracking_uri: str | None = None):
        self.name = name
        self.available = list(available)
        self.tracking_uri = tracking_uri
        where = f" in {tracking_uri}" if tracking_uri else ""
        listing = ", ".join(repr(a) for a in self.available) if self.available else "(none)"
        super().__init__(f"unknown experiment {name!r}{where}; existing experiments: {listing}")


class UnknownParentRunError(AnalysisError, LookupError):
    """The requested parent run id is not a parent run of the experiment."""


class NoRunsError(AnalysisError):
    """The experiment (or the chosen parent run) has no usable child runs."""


class AnalysisWarning(UserWarning):
    """Warnings about skipped runs, missing metrics and figures that do not apply."""


def warn(msg: str) -> None:
    """An `AnalysisWarning` attributed to the caller of the function that calls this."""
    warnings.warn(msg, AnalysisWarning, stacklevel=3)
