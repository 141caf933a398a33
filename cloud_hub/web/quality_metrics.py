"""Prometheus metrics of model quality from labels (cloud_hub.quality.report): per model version
over the labels received in the last day, each metric with its 95% interval, whether the version
is below its accuracy floor, and what happened to the labels, per source and outcome."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from cloud_hub.quality.metrics import METRICS


def quality_metrics(report: Mapping[str, Any]) -> Iterator[Metric]:
    """The gauges of a `quality_report` by version (one row per model version)."""
    labels = ["model", "version", "metric"]
    value = GaugeMetricFamily(
        "edgefleet_model_quality",
        "A model version's accuracy, precision, recall, F1 (macro) or RMSE, MAE from the labels "
        "received in the last day",
        labels=labels,
    )
    low = GaugeMetricFamily(
        "edgefleet_model_quality_low", "Lower end of the metric's 95% interval", labels=labels
    )
    high = GaugeMetricFamily(
        "edgefleet_model_quality_high", "Upper end of the metric's 95% interval", labels=labels
    )
    joined = GaugeMetricFamily(
        "edgefleet_model_labels",
        "Labels joined to a model version's predictions, received in the last day",
        labels=["model", "version"],
    )
    below = GaugeMetricFamily(
        "edgefleet_model_below_floor",
        "1 while a model version's accuracy is surely below its floor (the upper end of its "
        "99% interval under it), 0 while not; versions without a floor are left out",
        labels=["model", "version"],
    )
    for row in report["rows"]:
        key = [row["model"], str(row["version"])]
        joined.add_metric(key, row["labels"])
        if row["floor"] is not None:
            below.add_metric(key, int(row["alert"]))
        for name in METRICS:
            interval = row[name]
            if interval is None:
                continue
            value.add_metric([*key, name], interval["value"])
            if interval["low"] is not None:
                low.add_metric([*key, name], interval["low"])
                high.add_metric([*key, name], interval["high"])
    outcomes = CounterMetricFamily(
        "edgefleet_labels",
        "Labels the hub received, per source (device, api, csv) and outcome (joined, late, "
        "partial, duplicate, unknown, foreign, malformed)",
        labels=["source", "outcome"],
    )
    for source, counts in sorted(report["labels"]["counts"].items()):
        for outcome, n in sorted(counts.items()):
            outcomes.add_metric([source, outcome], n)
    yield from (value, low, high, joined, below, outcomes)
