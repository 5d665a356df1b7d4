"""The shared view of the training curves that datgpt stores on each MLflow experiment.

MLflow 3's runs page keeps a view (filter, grouping, chart sections, x axis) in the experiment tag
``mlflow.sharedViewState.<key>`` and opens it from ``...?viewStateShareKey=<key>``; training/tracking.py
writes this one when it creates (or next uses) an experiment, and the runner prints the link.
"""

from __future__ import annotations

import json
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
