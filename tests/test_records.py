"""Typed record bodies (edge_agent.protocol.records): every kind round-trips, a field of the wrong
type is one clear MessageError, older agents' bodies still decode; the hub refuses a body that
does not decode (confirmed, counted, the rest stored); readers skip rows an older hub stored;
and the README names exactly the bundle refusal reasons of edge_agent.protocol.reasons."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cloud_hub.broker.local import RunningBroker
from cloud_hub.cli import app as cli
from cloud_hub.store.database import Store, drift_summary, typed
from cloud_hub.store.url import store_url
from cloud_hub.web.views import drift_map
from edge_agent.drift import DriftMonitor
from edge_agent.errors import MessageError
from edge_agent.protocol.card import parse_card
from edge_agent.protocol.inputs import InputState
from edge_agent.protocol.messages import Batch, ModelRef, Record, StorageCondition
from edge_agent.protocol.reasons import DESCRIPTIONS, Reason
from edge_agent.protocol.records import (
    DeviceEvent,
    DeviceStats,
    DriftReport,
    Labels,
    RawSample,
    ShadowReport,
    TelemetryWindow,
    WindowInputs,
    decode,
)
from edge_agent.uplink.telemetry import Window
from tests.support.dashboard_fleet import card_json, predict_sign
from tests.support.device_rig import Device
from tests.support.hub_thread import DEVICE, new_hub, run_hub

pytestmark = pytest.mark.usefixtures("each_store")  # on SQLite and on PostgreSQL

ROOT = Path(__file__).resolve().parent.parent
MODEL = ModelRef("iris", 3)


def drift_body() -> dict[str, Any]:
    """A report as the agent's monitor writes it (with predictions and a capture)."""
    features = ["a", "b"]
    rng = np.random.default_rng(0)
    card = parse_card(card_json(rng.normal(size=(2000, 2)), features, MODEL))
    monitor = DriftMonitor(card, 50, capture=5)
    x = rng.normal(size=(50, 2)) + 5.0  # far off: an alert, so a capture
    report = monitor.add(x, predict_sign(x))
    assert report is not None and report["status"] == "alert" and "capture" in report
    return report


def window_body() -> dict[str, Any]:
    w = Window(100.0)
    w.add(1.5, np.array([0, 1, 1]))
    w.reject("garbage")
    record = w.to_record(102.0, MODEL)
    states = [InputState("serial:a", True, lost=1, reopened=1, idle_s=0.5)]
    full = TelemetryWindow(
        **{
            **record.__dict__,
            "resources": {"cpu_pct": 3.5, "rss_mb": 40.1},
            "inputs": WindowInputs.of(states),
            "dropped": {"telemetry": 2},
            "storage": StorageCondition(False, "disk full", 5.0, {"drift": 1}, ("disk-full",)),
        }
    )
    return full.to_body()


SHADOW = ShadowReport(
    MODEL, 200, 0.985, 1, {"current": {"p50": 0.02, "p95": 0.03}, "candidate": {"p50": 0.04}}
)


def bodies() -> dict[str, tuple[str, type, dict[str, Any]]]:
    return {
        "telemetry window": ("telemetry", TelemetryWindow, window_body()),
        "raw sample": (
            "telemetry",
            RawSample,
            RawSample(MODEL, {"a": 5.1, "b": None}, "setosa").to_body(),
        ),
        "drift report": ("drift", DriftReport, drift_body()),
        "event": ("events", DeviceEvent, DeviceEvent("rejected", MODEL, "tampered: x").to_body()),
        "shadow report": (
            "events",
            DeviceEvent,
            DeviceEvent("shadow-report", ModelRef("iris", 4), "ok", "r-1", SHADOW).to_body(),
        ),
        "labels": ("labels", Labels, Labels((("p-1", "setosa"), ("p-2", 2))).to_body()),
    }


@pytest.mark.parametrize("name", list(bodies()))
def test_every_record_kind_round_trips(name: str) -> None:
    kind, cls, body = bodies()[name]
    wire = json.loads(json.dumps(body))  # as JSON carries it
    record = decode(kind, wire, name)
    assert isinstance(record, cls)
    assert record.to_body() == wire
    assert decode(kind, wire | {"added_by_a_newer_agent": [1, 2]}, name) == record


def test_device_stats_round_trip_as_the_status_carries_them() -> None:
    stats = DeviceStats(
        inferences=9,
        rejected={"garbage": 1},
        latency_ms={"p50": 0.1, "p99": 0.4},
        sent={"telemetry": 3},
        buffered=2,
        dropped={},
        bad_messages=0,
        storage=StorageCondition(),
        inputs=(InputState("serial:a", True),),
    )
    body = json.loads(json.dumps(stats.to_body()))
    assert DeviceStats.from_body(body, "stats") == stats
    assert DeviceStats.from_body({}, "stats") == DeviceStats()  # an agent that said nothing


WRONG = [
    # (kind, body, what the message must say)
    ("drift", {"max_psi": None}, "drift.max_psi: expected a number, got null"),
    ("drift", {"max_psi": float("nan")}, "drift.max_psi: expected a finite number, got float"),
    ("drift", {"window": "200"}, "drift.window: expected a count"),
    ("drift", {"status": "fine"}, "drift.status: expected one of ok, warn, alert, got str"),
    ("drift", {"psi": {"hue": "hot"}}, "drift.psi.hue: expected a number, got str"),
    ("drift", {"p": 2.0}, "drift.p: expected a number from 0 to 1, got float"),
    ("drift", {"levels": {"warn": 0.001, "alert": 0.01}}, "drift.levels: expected alert below"),
    ("drift", {"moved": "hue"}, "drift.moved: expected a list, got str"),
    ("drift", {"counts": {"rows": 5, "bins": {"a": [1, -1]}}}, "drift.counts.bins.a[1]"),
    ("drift", {"accuracy": {"sum": 5.0, "rows": 4, "reference": 0.9}}, "drift.accuracy: expected"),
    ("drift", {"capture": {"features": ["a"], "rows": [[1.0, 2.0]]}}, "drift.capture.rows[0]"),
    ("drift", {"model": {"name": "Bad Name", "version": 1}}, "drift.model"),
    ("telemetry", {"count": "many"}, "telemetry.count: expected a count from 0"),
    ("telemetry", {"count": True}, "telemetry.count: expected a count from 0"),
    ("telemetry", {"latency_ms": 5}, "telemetry.latency_ms: expected an object, got int"),
    ("telemetry", {"errors": {"nan": "x"}}, "telemetry.errors.nan: expected a count"),
    ("telemetry", {"storage": {"ok": "no"}}, "telemetry.storage.ok: expected bool"),
    ("telemetry", {"inputs": {"lost": -1}}, "telemetry.inputs.lost: expected a count"),
    ("telemetry", {"raw": {"features": {}}}, "telemetry.raw: missing field 'model'"),
    ("telemetry", {"raw": {"model": MODEL.to_json(), "features": {"a": "x"}}}, "raw.features.a"),
    ("events", {"model": None}, "events: missing field 'event'"),
    ("events", {"event": "exploded"}, "events.event: expected one of offered"),
    ("events", {"event": "offered", "rollout": 7}, "events.rollout: expected a string, got int"),
    ("events", {"event": "shadow-report", "shadow": {"rows": 5}}, "events.shadow: missing"),
    ("events", {"event": "shadow-report", "shadow": {"rows": 5, "agreement": 2}}, "agreement"),
    ("labels", {"labels": "cat"}, "labels.labels: expected a list"),
    ("labels", {"labels": [{"prediction": 1, "label": "cat"}]}, "labels.labels[0].prediction"),
    ("labels", {"labels": [{"prediction": "p"}]}, "labels.labels[0]: expected both"),
    ("drift", [1, 2], "drift: expected an object, got list"),
]


@pytest.mark.parametrize(("kind", "body", "says"), WRONG, ids=[w[2][:40] for w in WRONG])
def test_a_field_of_the_wrong_type_says_where_what_and_what_arrived(
    kind: str, body: Any, says: str
) -> None:
    with pytest.raises(MessageError) as caught:
        decode(kind, body, kind)
    assert says in str(caught.value)
    assert "\n" not in str(caught.value)


def test_bodies_of_older_agents_still_decode() -> None:
    """Before p-values a report had PSI bands: no p, levels, moved or counts; before window
    extras a telemetry window had no resources or inputs; an event's reason may be null."""
    banded = {
        "model": MODEL.to_json(),
        "window": 200,
        "psi": {"hue": 0.4, "ash": 0.01},
        "max_psi": 0.4,
        "worst_feature": "hue",
        "status": "alert",
    }
    report = decode("drift", banded, "drift")
    assert isinstance(report, DriftReport)
    assert (report.p, report.levels, report.counts, report.moved) == (None, None, None, None)
    assert report.features_moved == ("hue",)  # the worst feature of a window that was not ok
    assert DriftReport.from_body({"psi": {"a": 0.3}}, "drift").max_psi == 0.3
    window = decode("telemetry", {"window_s": 5.0, "model": None, "count": 3}, "telemetry")
    assert isinstance(window, TelemetryWindow)
    assert (window.resources, window.inputs, window.errors) == (None, None, {})
    event = decode("events", {"event": "healthy", "reason": None}, "events")
    assert event == DeviceEvent("healthy")


# ---- the hub: checked once on ingest, skipped when an older hub stored it ------------------------
@pytest.mark.broker
def test_a_malformed_body_is_confirmed_counted_and_not_stored(
    broker: RunningBroker, tmp_path: Path
) -> None:
    device = Device(broker, tmp_path / "device", DEVICE, batch_size=10)
    hub = new_hub(tmp_path / "hub", broker)
    halt = run_hub(hub)
    try:
        for i in range(3):
            device.buffer.append("telemetry", {"count": i})
        device.buffer.append("telemetry", {"count": "many"})  # not a window
        for i in range(3, 5):
            device.buffer.append("telemetry", {"count": i})
        device.start()
        device.sender.wake.set()
        assert device.wait_drained(), f"{device.buffer.pending()} records never confirmed"
        assert hub.store.count("telemetry", DEVICE) == 5
        assert hub.store.telemetry_totals(DEVICE) == {"records": 5, "inferences": 10}
        assert hub.store.refusals() == {DEVICE: {"malformed": 1}}
    finally:
        device.close()
        halt()


def _stored_by_an_older_hub(home: Path) -> Store:
    """A drift record with max_psi null next to a good one, stored without the ingest check."""
    store = Store(store_url(home))
    good = {"model": MODEL.to_json(), "psi": {"a": 0.1}, "max_psi": 0.1, "status": "ok"}
    bad = {"model": MODEL.to_json(), "psi": {"a": 0.1}, "max_psi": None, "status": "ok"}
    now = time.time()
    store.add_batch("drift", Batch("pi-old", (Record(1, 0, now, bad),)))
    store.add_batch("drift", Batch("pi-new", (Record(1, 0, now, good),)))
    return store


def test_a_stored_max_psi_null_is_skipped_by_every_reader(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    home = tmp_path / "hub"
    home.mkdir()
    store = _stored_by_an_older_hub(home)
    assert [r["device"] for r in drift_summary(store)] == ["pi-new"]
    assert "skipped 1 stored record that do" in caplog.text
    assert "max_psi: expected a number, got null" in caplog.text
    assert [r["device"] for r in drift_map(store.latest_records("drift"))["rows"]] == ["pi-new"]
    assert len(typed(store.records("drift"), DriftReport)) == 1
    assert cli.main(["--home", str(home), "drift"]) == 0
    out = capsys.readouterr().out
    assert "pi-new" in out and "pi-old" not in out and "Traceback" not in out
    assert cli.main(["--home", str(home), "drift", "--fleet"]) == 0
    out = capsys.readouterr().out
    assert "iris@3" in out and "Traceback" not in out


# ---- the one list of refusal reasons ------------------------------------------------------------
def test_every_reason_has_a_one_line_description() -> None:
    assert set(DESCRIPTIONS) == set(Reason)
    assert all(d and "\n" not in d for d in DESCRIPTIONS.values())


def test_the_readme_names_exactly_the_refusal_reasons() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Keys, enrollment and what a device accepts", 1)[1].split("\n## ", 1)[0]
    sentence = section.split("Every refusal has a reason on the device's `events` topic:", 1)[1]
    sentence = sentence.split("\n\n", 1)[0]
    named = re.findall(r"`([a-z-]+)`", sentence)
    assert sorted(named) == sorted(r.value for r in Reason)
    assert len(named) == len(set(named))
