"""Prometheus metrics, read from the hub's store at each scrape (the store is the one truth, so
every hub process and a restarted hub report the same numbers)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cloud_hub.drift.fleet import STATUS_RANK
from cloud_hub.drift.source import FleetQuery, PublishedCards, read_fleet_drift
from cloud_hub.quality.report import MetricsQuery, quality_report
from cloud_hub.store.database import Store, stats_of, typed
from cloud_hub.web import views
from cloud_hub.web.fleet_rows import FleetRows
from cloud_hub.web.quality_metrics import quality_metrics
from edge_agent.protocol.records import DriftReport

FLEET_DRIFT_SINCE_S = 3600.0  # the metrics' fleet drift merges the last hour's windows


class StoreCollector(Collector):
    def __init__(
        self, store: Store, cards: PublishedCards | None = None, rows: FleetRows | None = None
    ) -> None:
        self.store = store
        self.rows = rows or FleetRows(store)
        self.cards = cards or PublishedCards(None)  # None: no cards, no fleet drift gauges

    def collect(self) -> Iterator[Metric]:
        devices = self.store.devices()
        online = GaugeMetricFamily("edgefleet_devices_online", "Devices whose status is online")
        online.add_metric([], sum(1 for d in devices if d["online"]))
        yield online
        known = GaugeMetricFamily("edgefleet_devices", "Devices the hub knows (enrolled or seen)")
        known.add_metric([], len(devices))
        yield known

        rollouts = GaugeMetricFamily("edgefleet_rollouts", "Rollouts by state", labels=["state"])
        by_state: dict[str, int] = {}
        for row in self.store.rollouts():
            by_state[row["state"]] = by_state.get(row["state"], 0) + 1
        for state, n in sorted(by_state.items()):
            rollouts.add_metric([state], n)
        yield rollouts

        stored = CounterMetricFamily(
            "edgefleet_records_stored",
            "Device records stored (each once); rate() of it is the ingest rate",
            labels=["kind"],
        )
        counts = self.store.record_counts()
        for kind in ("telemetry", "drift", "events"):
            stored.add_metric([kind], counts.get(kind, 0))
        yield stored

        dropped = CounterMetricFamily(
            "edgefleet_device_dropped_records",
            "Records a device's buffer dropped past its cap, as its last status reported",
            labels=["device", "kind"],
        )
        for d in devices:
            for kind, n in sorted(stats_of(d).dropped.items()):
                dropped.add_metric([d["id"], kind], n)
        yield dropped
        yield from storage_metrics(devices)
        yield from _inputs(devices)

        refused = CounterMetricFamily(
            "edgefleet_hub_refused",
            "What the hub refused of a device: messages past its rate, records past its quota",
            labels=["device", "reason"],
        )
        for d in devices:
            for reason, n in sorted(views.counts(d.get("refused")).items()):
                refused.add_metric([d["id"], reason], n)
        yield refused

        rows, telemetry = self.rows.read()
        yield from version_metrics(views.version_summary(rows, telemetry))

        psi = GaugeMetricFamily(
            "edgefleet_drift_psi",
            "Highest PSI of a feature across the devices running a model (their latest reports)",
            labels=["model", "feature"],
        )
        worst: dict[tuple[str, str], float] = {}
        for _, report in typed(self.store.latest_records("drift").values(), DriftReport):
            if report.model is None:
                continue
            for feature, value in report.psi.items():
                key = (report.model.name, feature)
                worst[key] = max(value, worst.get(key, value))
        for (model, feature), value in sorted(worst.items()):
            psi.add_metric([model, feature], value)
        yield psi
        yield from fleet_drift_metrics(
            read_fleet_drift(self.store, self.cards, FleetQuery(FLEET_DRIFT_SINCE_S))["rows"]
        )
        yield from quality_metrics(quality_report(self.store, self.cards, MetricsQuery()))


def version_metrics(summary: Sequence[Mapping[str, Any]]) -> Iterator[Metric]:
    """Per model version (`views.version_summary`): devices running it, and from the online
    devices' newest telemetry windows the rows and errors per second, the error rate and the
    latency quantiles; devices whose newest drift report warns or alerts. The devices report
    percentiles of each window, not latency buckets, so latency is a gauge per quantile."""
    labels = ["model", "version"]

    def gauge(name: str, text: str, extra: Sequence[str] = ()) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, text, labels=[*labels, *extra])

    devices = gauge("edgefleet_model_devices", "Devices running a model version")
    online = gauge("edgefleet_model_devices_online", "Online devices running a model version")
    rows = gauge(
        "edgefleet_model_rows_per_second",
        "Rows a model version infers per second, summed over its online devices' newest windows",
    )
    errors = gauge(
        "edgefleet_model_errors_per_second",
        "Lines rejected per second (malformed, NaN, ...) by devices running a model version, "
        "summed over their newest windows",
    )
    rate = gauge(
        "edgefleet_model_error_rate",
        "Errors per inferred row in the newest windows of a model version's online devices",
    )
    latency = gauge(
        "edgefleet_model_latency_ms",
        "Inference latency of a model version: the row-weighted median across its online "
        "devices' newest windows of each window's quantile (0.5: p50, 0.95: p95)",
        ["quantile"],
    )
    alerts = gauge(
        "edgefleet_model_drift_devices",
        "Devices of a model version whose newest drift report warns or alerts",
        ["status"],
    )
    for v in summary:
        key = [v["model"], str(v["version"])]
        devices.add_metric(key, v["devices"])
        online.add_metric(key, v["online"])
        alerts.add_metric([*key, "warn"], v["drift_warn"])
        alerts.add_metric([*key, "alert"], v["drift_alert"])
        if not v["windows"]:
            continue  # no online device reports it: no rate to tell
        rows.add_metric(key, v["rows_per_s"])
        errors.add_metric(key, v["errors_per_s"])
        if v["error_rate"] is not None:
            rate.add_metric(key, v["error_rate"])
        for q, quantile in (("p50", "0.5"), ("p95", "0.95")):
            if v["latency_ms"][q] is not None:
                latency.add_metric([*key, quantile], v["latency_ms"][q])
    yield from (devices, online, rows, errors, rate, latency, alerts)


def fleet_drift_metrics(rows: Sequence[Mapping[str, Any]]) -> Iterator[Metric]:
    """Fleet drift of the last hour per model version and cohort (cloud_hub.drift.fleet):
    the family p-value, the status and the rows merged. Cohorts with nothing to test (no card,
    no counts) are left out."""
    labels = ["model", "version", "cohort"]
    p = GaugeMetricFamily(
        "edgefleet_fleet_drift_p",
        "p-value of the devices' drift windows of the last hour merged per model version and "
        "cohort, against the card (small: the cohort's inputs moved)",
        labels=labels,
    )
    status = GaugeMetricFamily(
        "edgefleet_fleet_drift_status",
        "Fleet drift status of the last hour per model version and cohort: 0 ok, 1 warn, 2 alert",
        labels=labels,
    )
    merged = GaugeMetricFamily(
        "edgefleet_fleet_drift_rows",
        "Rows merged in the fleet drift test of the last hour",
        labels=labels,
    )
    for r in rows:
        if r["p"] is None:
            continue
        key = [r["model"], str(r["version"]), r["cohort"]]
        p.add_metric(key, r["p"])
        status.add_metric(key, STATUS_RANK[r["status"]])
        merged.add_metric(key, r["rows"])
    yield from (p, status, merged)


def storage_metrics(devices: Sequence[Mapping[str, Any]]) -> Iterator[Metric]:
    """Each device's own storage, as its last status said (devices that said nothing are left
    out): whether it can write (alert on 0), and what it inferred but could not keep."""
    ok = GaugeMetricFamily(
        "edgefleet_device_storage_ok",
        "1 while a device can write its state folder and buffer, 0 while it cannot "
        "(a full or read-only disk), as its last status said",
        labels=["device"],
    )
    unkept = CounterMetricFamily(
        "edgefleet_device_unkept_records",
        "Records a device inferred but could not keep (its disk refused them) since it started, "
        "as its last status said",
        labels=["device", "kind"],
    )
    for d in devices:
        storage = views.device_storage(stats_of(d))
        if storage is None:
            continue
        ok.add_metric([d["id"]], 1 if storage["ok"] else 0)
        for kind, n in sorted(storage["unkept"].items()):
            unkept.add_metric([d["id"], kind], n)
    yield ok
    yield unkept


def _inputs(devices: list[dict[str, Any]]) -> Iterator[Metric]:
    """Each device's inputs, per source, as its last status told. The gauges only for devices
    online now: an offline device's idle time stopped when it went away."""
    labels = ["device", "input"]
    lost = CounterMetricFamily(
        "edgefleet_device_input_lost",
        "Times an input's serial port went away since the agent started",
        labels=labels,
    )
    reopened = CounterMetricFamily(
        "edgefleet_device_input_reopened",
        "Times an input's serial port came back since the agent started",
        labels=labels,
    )
    is_open = GaugeMetricFamily(
        "edgefleet_device_input_open", "1 while an input is open (online devices)", labels=labels
    )
    idle = GaugeMetricFamily(
        "edgefleet_device_input_idle_seconds",
        "Seconds since an input's last line (online devices)",
        labels=labels,
    )
    quiet = GaugeMetricFamily(
        "edgefleet_device_no_input",
        "1 while an online device's input is idle past its telemetry.no_input_s",
        labels=labels,
    )
    for d in devices:
        for state in stats_of(d).inputs:
            key = [d["id"], state.name]
            lost.add_metric(key, state.lost)
            reopened.add_metric(key, state.reopened)
            if d["online"]:
                is_open.add_metric(key, int(state.open))
                idle.add_metric(key, state.idle_s)
                quiet.add_metric(key, int(state.no_input))
    yield from (lost, reopened, is_open, idle, quiet)


def registry_for(
    store: Store, cards: PublishedCards | None = None, rows: FleetRows | None = None
) -> CollectorRegistry:
    """The hub's metrics over `store`; `rows` shares the device rows with the dashboard."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store, cards, rows))
    return registry
