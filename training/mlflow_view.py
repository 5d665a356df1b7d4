"""The shared views of the runs page that datgpt stores on each MLflow experiment: the training curves,
and the runs table with the answer's columns.

MLflow 3's runs page keeps a view in the experiment tag ``mlflow.sharedViewState.<key>`` and opens it from
``...?viewStateShareKey=<key>``. What such a view holds (MLflow 3.17's UI, ``useSharedExperimentViewState``):
the search facets ``searchFilter``, ``orderByKey``, ``orderByAsc``, ``startTime``, ``lifecycleFilter``,
``datasetsFilter``, ``modelVersionFilter``, and of the UI state ``selectedColumns``, ``columnOrder``,
``columnWidths``, ``groupBy``, the chart layout and options; not which parent runs are expanded, pinned or
hidden (the browser keeps those). Every key a view leaves out takes MLflow's default. training/tracking.py
writes the curves view when it creates (or next uses) an experiment and the runs view when an invocation
starts; the runner prints both links.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from analysis import record

#: The chart sections of the view, in order: (section name, metrics). Metrics not listed (new ones, or
#: `tokens` itself) get MLflow's default charts in sections after these.
CURVES_VIEW_SECTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Losses", (record.VAL_LOSS, record.TRAIN_LOSS)),
    ("Hypersphere diagnostics", record.DIAG_SUMMARY),  # per layer: the artifacts diagnostics/step_*.json
    ("Optimization", (record.LR, record.GRAD_NORM)),
    ("Speed", (record.TOKENS_PER_S, record.STEP_MS, record.ELAPSED_S, record.MFU)),
)


def _line_chart(uuid: str, section: str, metric: str) -> dict[str, Any]:
    """One line chart card as MLflow 3's runs page stores it (RunsChartsLineCardConfig)."""
    return {"uuid": uuid, "type": "LINE", "runsCountToCompare": 10, "metricSectionId": section,
            "deleted": False, "isGenerated": False, "displayName": metric, "metricKey": metric,
            "selectedMetricKeys": [metric], "lineSmoothness": 0, "xAxisScaleType": "linear",
            "scaleType": "linear", "range": {}, "xAxisKey": "metric", "selectedXAxisMetricKey": record.TOKENS,
            "yAxisKey": "metric", "yAxisExpressions": [], "ignoreOutliers": False,
            "useGlobalXaxisKey": True, "useGlobalLineSmoothing": True}


def curves_view() -> dict[str, Any]:
    """The shared view datgpt stores on each experiment (tag :data:`analysis.record.TAG_CURVES_VIEW`), as
    MLflow 3.17's runs page reads it: child runs only, grouped by arm with one curve per run, charts of
    the losses first, then the diagnostics summaries, optimization and speed, all against `tokens`.

    MLflow otherwise orders chart sections alphabetically by the metric name before its last "/" and
    draws against the step; its per-experiment chart layout lives in the browser only, so a shared view
    is the one layout a link can carry. Grouped values are off: MLflow's group averages map a metric
    x axis by position, which misplaces `val/loss` (logged at fewer steps than `tokens`)."""
    charts, sections = [], []
    for i, (name, metrics) in enumerate(CURVES_VIEW_SECTIONS):
        section = f"datgpt-section-{i}"
        sections.append({"uuid": section, "name": name, "display": True, "isReordered": True})
        charts += [_line_chart(f"datgpt-chart-{metric}", section, metric) for metric in metrics]
    return {
        "searchFilter": f"tags.`{record.TAG_ROLE}` = '{record.ROLE_CHILD}'",
        "groupBy": {"aggregateFunction": "average", "groupByKeys": [{"mode": "tag", "groupByData": record.TAG_ARM}]},
        "useGroupedValuesInCharts": False,
        "hideEmptyCharts": True,
        "compareRunCharts": charts,
        "compareRunSections": sections,
        "isAccordionReordered": True,
        "globalLineChartConfig": {"xAxisKey": "metric", "selectedXAxisMetricKey": record.TOKENS, "lineSmoothness": 0},
    }


def curves_view_json() -> str:
    return json.dumps(curves_view(), separators=(",", ":"))


#: Pixels of the runs table left to the answer's columns in a window 1,600 pixels wide, in MLflow 3.17 with
#: its left bar open and its Assistant panel closed, after the row checkbox, the run name and the created
#: columns (widths below; MLflow's duration column moves after the answer). Measured with
#: tools/mlflow_screenshots.py: the grid ends at x = 1,568 and the first answer column starts at 595. The
#: run name column is wide enough for a child run's name (``ngpt-seed0``) under its parent.
ANSWER_WIDTH = 970
RUN_NAME_COLUMN, RUN_NAME_WIDTH = "attributes.`Run Name`", 170  # MLflow's column ids
CREATED_COLUMN, CREATED_WIDTH = "runDateAndNestInfo", 130


def column_width(metric: str) -> int:
    """The pixels a metric column needs to show its whole name in the header (MLflow's 12-pixel font: about
    6 pixels a character, e.g. 155 for ``result/ngpt/speedup_at_6.2``, and 20 of padding)."""
    return 20 + 6 * len(metric)


def answer_columns(arms: Sequence[str], baseline: str, targets: Sequence[float], logged: Mapping[str, float],
                   context_lengths: dict[str, int] | None = None, width: int = ANSWER_WIDTH) -> list[str]:
    """The parent-run metrics the runs table shows (:func:`analysis.record.answer_metric`), of those `logged` on
    the parent run (`logged`: name -> value): for each arm but the baseline, its speedup at the targets, what
    kind of number it is where it is a bound (``speedup_bound``: 1 a lower bound, -1 an upper bound; an exact
    speedup's 0 is left out) and the interval's limits, then each arm's final validation loss. Targets are taken from the hardest (lowest loss) with a speedup
    logged while all these columns fit in `width` pixels, at least one, and shown in the experiment's order.
    ``context_lengths`` (arm -> context length) is given when the arms differ in it: the names then carry
    it, as the answer's do."""
    def name(arm: str, quantity: str, target: float | None = None) -> str:
        return record.answer_metric(arm, quantity, target, (context_lengths or {}).get(arm))

    others = [a for a in arms if a != baseline]
    final = [c for c in (name(arm, record.ANSWER_FINAL_LOSS) for arm in arms) if c in logged]

    exact = {c for c in (name(arm, record.ANSWER_SPEEDUP_BOUND, t) for arm in others for t in targets)
             if logged.get(c) == record.BOUND_EXACT}  # "0: exact" needs no column

    def columns(shown: list[float]) -> list[str]:
        every = [name(arm, q, t) for arm in others for t in targets if t in shown
                 for q in record.ANSWER_SPEEDUP_WITH_INTERVAL]
        return [c for c in every if c in logged and c not in exact] + final

    shown: list[float] = []
    for target in sorted(t for t in targets if columns([t]) != final):  # the hardest first
        if shown and sum(map(column_width, columns(shown + [target]))) > width:
            break
        shown.append(target)
    return columns(shown)


def runs_view(columns: Sequence[str]) -> dict[str, Any]:
    """The shared view of the runs table (tag :data:`analysis.record.TAG_RUNS_VIEW`): newest runs first, with
    MLflow's run name and created columns, then the parent-run metrics `columns` (:func:`answer_columns`) wide
    enough for their names, and no other metric or param, so the answer is on screen beside each parent run;
    its child runs are under the parent's expander (MLflow keeps which parents are expanded in the browser,
    not in a view)."""
    metrics = [f"metrics.`{c}`" for c in columns]
    return {"orderByKey": "attributes.start_time", "orderByAsc": False, "selectedColumns": metrics,
            "columnOrder": [RUN_NAME_COLUMN, CREATED_COLUMN, *metrics],
            "columnWidths": {RUN_NAME_COLUMN: RUN_NAME_WIDTH, CREATED_COLUMN: CREATED_WIDTH,
                             **{m: column_width(c) for m, c in zip(metrics, columns)}}}


def runs_view_json(columns: Sequence[str]) -> str:
    return json.dumps(runs_view(columns), separators=(",", ":"))
