"""The MLflow tracking store as the analysis reads it: where it is (``MLFLOW_TRACKING_URI`` or ``mlruns``),
a check that a local store exists, the client, the experiments, and the parent runs (one per runner
invocation) with their tags parsed (``ParentInfo``). Torch-free; analysis/record.py names what is read.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from analysis import record
from analysis.errors import AnalysisWarning, TrackingStoreError, UnknownExperimentError

if TYPE_CHECKING:  # pragma: no cover
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient


@dataclass
class ParentInfo:
    """Metadata of one parent run (one runner invocation)."""

    run_id: str
    name: str | None
    targets: list[float]
    baseline_arm: str | None
    config_hash: str | None
    git_commit: str | None
    status: str
    start_time: int | None  # ms since the epoch
    loss_unit: str = record.LOSS_UNIT_DEFAULT  # what a loss is per: "token" or "byte" (the tokenizer's unit)


def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    """The URI to read: the argument, else MLflow's current one (``mlflow.set_tracking_uri``, else
    ``MLFLOW_TRACKING_URI``, else MLflow's default).

    MLflow 3's default is ``sqlite:///mlflow.db`` in the working folder (or ``./mlruns`` when that
    folder already holds data).
    """
    if tracking_uri:
        return tracking_uri
    import mlflow

    # honours mlflow.set_tracking_uri() (e.g. by the runner), then MLFLOW_TRACKING_URI, then default
    return mlflow.get_tracking_uri()


def check_local_store(uri: str) -> None:
    """Refuse to read a local store that does not exist (MLflow would silently create it)."""
    hint = "set MLFLOW_TRACKING_URI or pass --tracking-uri"
    if uri.startswith("sqlite:"):
        path = unquote(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else ""
        path = path.split("?", 1)[0]
        if path and path != ":memory:" and not os.path.exists(path):
            raise TrackingStoreError(f"no MLflow database at {os.path.abspath(path)} ({hint})")
        return
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        path = unquote(parsed.path) if parsed.scheme == "file" else uri
        if not os.path.isdir(path):
            raise TrackingStoreError(f"no MLflow store at {os.path.abspath(path)} ({hint})")


def open_client(tracking_uri: str | None) -> tuple["MlflowClient", str]:
    uri = resolve_tracking_uri(tracking_uri)
    check_local_store(uri)
    from mlflow.tracking import MlflowClient

    try:
        return MlflowClient(tracking_uri=uri), uri
    except Exception as exc:  # noqa: BLE001 - MLflow raises many types here
        raise TrackingStoreError(f"cannot open MLflow tracking store {uri}: {exc}") from exc


def list_experiments(tracking_uri: str | None = None) -> list[str]:
    """Names of the active experiments in the store."""
    client, uri = open_client(tracking_uri)
    return _experiment_names(client, uri)


def _experiment_names(client: "MlflowClient", uri: str) -> list[str]:
    try:
        exps = client.search_experiments()
    except Exception as exc:  # noqa: BLE001
        raise TrackingStoreError(f"cannot read experiments from {uri}: {exc}") from exc
    return sorted(e.name for e in exps)


def list_parents(experiment: str, tracking_uri: str | None = None) -> list[tuple[ParentInfo, int]]:
    """Parent runs (invocations) of ``experiment``, newest first, with their number of child runs.

    Reads run metadata only (no metric histories).
    """
    client, uri = open_client(tracking_uri)
    exp = get_experiment(client, uri, experiment)
    runs = search_all_runs(client, exp.experiment_id)
    counts: dict[str, int] = {}
    for r in runs:
        if r.data.tags.get(record.TAG_ROLE) != record.ROLE_PARENT and record.TAG_PARENT in r.data.tags:
            counts[r.data.tags[record.TAG_PARENT]] = counts.get(r.data.tags[record.TAG_PARENT], 0) + 1
    return [(parent_info(r), counts.get(r.info.run_id, 0)) for r in runs
            if r.data.tags.get(record.TAG_ROLE) == record.ROLE_PARENT]


def get_experiment(client: "MlflowClient", uri: str, experiment: str) -> Any:
    try:
        exp = client.get_experiment_by_name(experiment)
    except Exception as exc:  # noqa: BLE001
        raise TrackingStoreError(f"cannot read MLflow tracking store {uri}: {exc}") from exc
    if exp is None or exp.lifecycle_stage != "active":
        raise UnknownExperimentError(experiment, _experiment_names(client, uri), uri)
    return exp


def search_all_runs(client: "MlflowClient", experiment_id: str) -> list["Run"]:
    from mlflow.entities import ViewType

    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs(
            experiment_ids=[experiment_id],
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=1000,
            order_by=["attributes.start_time DESC"],
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def parse_int(value: Any) -> int | None:
    if value is None:
        return None
    text = str(value).strip().replace("_", "")
    if not text or text.lower() in ("none", "null", "nan"):
        return None
    try:
        f = float(text)
    except ValueError:
        return None
    if not math.isfinite(f):
        return None
    return int(round(f))


def _parse_targets(text: str | None, run_id: str) -> list[float]:
    if not text:
        return []
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        value = [v for v in str(text).strip("[]() ").split(",") if v.strip()]
    if isinstance(value, (int, float)):
        value = [value]
    out: list[float] = []
    try:
        for v in value:
            out.append(float(v))
    except (TypeError, ValueError):
        warnings.warn(
            f"parent run {run_id}: cannot parse tag {record.TAG_TARGETS}={text!r}; ignoring it",
            AnalysisWarning,
            stacklevel=3,
        )
        return []
    return out


def parent_info(run: "Run") -> ParentInfo:
    tags = run.data.tags
    return ParentInfo(
        run_id=run.info.run_id,
        name=run.data.params.get("name") or tags.get(record.TAG_RUN_NAME),
        targets=_parse_targets(tags.get(record.TAG_TARGETS), run.info.run_id),
        baseline_arm=tags.get(record.TAG_BASELINE) or None,
        config_hash=tags.get(record.TAG_CONFIG_HASH),
        git_commit=tags.get(record.TAG_GIT_COMMIT),
        status=run.info.status,
        start_time=run.info.start_time,
        loss_unit=tags.get(record.TAG_LOSS_UNIT) or record.LOSS_UNIT_DEFAULT,
    )
