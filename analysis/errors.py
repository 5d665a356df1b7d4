"""Exception and warning types of the analysis package (kept import-light)."""

from __future__ import annotations

import warnings


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
