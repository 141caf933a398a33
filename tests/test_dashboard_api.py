"""The dashboard's JSON API and /metrics against a running hub, simulated devices and mosquitto:
every answer checked against the app's own OpenAPI description."""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from prometheus_client.parser import text_string_to_metric_families

from cloud_hub.broker.local import RunningBroker
from cloud_hub.experiments import engine as en
from cloud_hub.experiments.design import A, B, Rate
from edge_agent.protocol.messages import Batch, ModelRef, Record, StorageCondition
from edge_agent.protocol.records import Labels, TelemetryWindow, WindowRows
from tests.support.dashboard_fleet import TOKEN, HubWithDashboard, SimDevice, http, running_hub

pytestmark = pytest.mark.broker
V1, V2 = ModelRef("climate", 1), ModelRef("climate", 2)
PORT = {"name": "serial:/dev/ttyUSB0", "open": True, "lost": 0, "reopened": 0}


class OpenApi:
    """Validates answers against the served /openapi.json."""

    def __init__(self, base: str) -> None:
        status, _, body = http(base + "openapi.json")
        assert status == 200
        self.doc = json.loads(body)
        self.checked: set[tuple[str, str, int]] = set()

    def check(self, base: str, template: str, url_path: str, method: str = "get", **kw: Any) -> Any:
        status, ctype, body = http(base + url_path.lstrip("/"), method.upper(), **kw)
        responses = self.doc["paths"][template][method]["responses"]
        assert str(status) in responses, f"{method} {url_path}: {status} is not documented"
        content = responses[str(status)].get("content", {})
        if "application/json" not in content:
            return status, body
        assert ctype.startswith("application/json"), (url_path, ctype)
        data = json.loads(body)
        schema = {**content["application/json"]["schema"], "components": self.doc["components"]}
        errors = sorted(Draft202012Validator(schema).iter_errors(data), key=str)
        assert not errors, (
            f"{method} {url_path} ({status}): {errors[0].message} at {errors[0].json_path}"
        )
        self.checked.add((template, method, status))
        return status, data


def experiments(rollout: str) -> list[en.Experiment]:
    """A running experiment and a decided one (climate@2 against climate@1)."""
    plan = en.Design("error-rate", 0.05)
    running = en.start("e-running", V2, V1, "all", plan, ["pi-1", "pi-2"], time.time())
    decided = en.start("e-decided", V2, V1, "all", plan, ["pi-1", "pi-2"], time.time())
    for e in (running, decided):
        e.rollouts = {A: rollout, B: rollout}
    en.step(
        decided,
        time.time(),
        {},
        {A: ("running", ""), B: ("running", "")},
        lambda cohort, _devices: Rate(10 if cohort == A else 90, 2000),
    )
    return [running, decided]


@pytest.fixture
def dash(broker: RunningBroker, tmp_path: Path) -> Iterator[HubWithDashboard]:
    with running_hub(broker, tmp_path / "hub") as running:
        yield running


@pytest.fixture
def fleet(broker: RunningBroker, dash: HubWithDashboard) -> Iterator[list[SimDevice]]:
    devices = [SimDevice(broker, name) for name in ("pi-1", "pi-2")]
    for i, d in enumerate(devices):
        d.model = V1
        d.stats = {"inferences": 10, "dropped": {"telemetry": 3 * i, "drift": i}, "buffered": 1}
        d.stats["inputs"] = [{**PORT, "idle_s": 75.0 * i, "no_input": i == 1, "lost": 3 * i}]
        d.status()
        d.telemetry(count=40, p95=1.5, errors=2, ts=1000.0)
        d.telemetry(count=60, p95=1.7, ts=1001.0)
        d.drift({"temperature": 0.05, "humidity": 0.3 * i}, ts=1002.0)
    dash.wait("the fleet's records", lambda: dash.hub.store.count("drift") == 2)
    yield devices
    for d in devices:
        d.stop()


def test_every_answer_matches_the_openapi_description(
    dash: HubWithDashboard, fleet: list[SimDevice]
) -> None:
    api, base = OpenApi(dash.url), dash.url
    r = dash.start_rollout(ModelRef("climate", 2), [["pi-1"], ["pi-2"]])
    fleet[0].wait_command()

    _, data = api.check(base, "/api/fleet", "/api/fleet")
    assert [d["id"] for d in data["devices"]] == ["pi-2", "pi-1"]  # worst first
    assert (data["fleet"], data["total"], data["offset"], data["limit"]) == (2, 2, 0, 50)
    assert data["counts"] == {"ok": 1, "warn": 0, "alert": 1}
    pi2 = data["devices"][0]
    assert (pi2["severity"], pi2["concerns"]) == (
        "alert",
        ["drift alert", "input: no input 75s, port lost x3"],
    )
    assert (data["devices"][1]["severity"], data["devices"][1]["concerns"]) == ("ok", [])
    assert (pi2["status"], pi2["model"], pi2["version"], pi2["profile"]) == (
        "online",
        "climate",
        1,
        "raspberry-pi-4",
    )
    assert (pi2["dropped"], pi2["latency_p95_ms"], pi2["drift_status"]) == (4, 1.7, "alert")
    assert (data["devices"][1]["input"], pi2["input"]) == ("ok", "no input 75s, port lost x3")
    pages = {
        "limit=1&offset=1": (["pi-1"], 2),
        "severity=alert": (["pi-2"], 1),
        "severity=ok&severity=warn": (["pi-1"], 1),
        "model=climate": (["pi-2", "pi-1"], 2),
        "model=climate@2": ([], 0),
        "sort=id": (["pi-1", "pi-2"], 2),
        "offset=5": ([], 2),
    }
    for query, (ids, total) in pages.items():
        _, page = api.check(base, "/api/fleet", f"/api/fleet?{query}")
        assert ([d["id"] for d in page["devices"]], page["total"]) == (ids, total), query

    _, versions = api.check(base, "/api/versions", "/api/versions")
    (v1,) = versions["versions"]
    assert (v1["label"], v1["devices"], v1["online"], v1["windows"]) == ("climate@1", 2, 2, 2)
    # each device's newest window: 60 rows in 1 s, no errors, p95 1.7 ms
    assert (v1["rows_per_s"], v1["errors_per_s"], v1["error_rate"]) == (120.0, 0.0, 0.0)
    assert v1["latency_ms"] == {"p50": 0.85, "p95": 1.7}
    assert (v1["drift_warn"], v1["drift_alert"]) == (0, 1)
    _, over_time = api.check(
        base, "/api/fleet/series", "/api/fleet/series?since_s=7200&bucket_s=600"
    )
    (whole,) = over_time["series"]  # the windows are stamped 1970: none in the last 2 hours
    assert (whole["model"], len(whole["points"])) == ("fleet", 12)
    assert {p["rows_per_s"] for p in whole["points"]} == {0.0}
    assert pi2["inputs"] == [{**PORT, "idle_s": 75.0, "no_input": True, "lost": 3}]

    _, one = api.check(base, "/api/devices/{device}", "/api/devices/pi-2")
    assert one == pi2 | {"last_seen": one["last_seen"]}

    _, series = api.check(
        base, "/api/devices/{device}/telemetry", "/api/devices/pi-1/telemetry?since=999&limit=10"
    )
    points = series["points"]
    assert [p["ts"] for p in points] == [1000.0, 1001.0]
    assert (points[0]["throughput_per_s"], points[0]["errors"], points[0]["model"]) == (
        40.0,
        2,
        "climate@1",
    )
    assert points[1]["latency_ms"] == {"p50": 0.85, "p95": 1.7, "p99": pytest.approx(2.55)}
    _, newest = api.check(
        base, "/api/devices/{device}/telemetry", "/api/devices/pi-1/telemetry?limit=1"
    )
    assert [p["ts"] for p in newest["points"]] == [1001.0]

    _, drift = api.check(base, "/api/drift", "/api/drift")
    assert drift["features"] == ["temperature", "humidity"]
    assert drift["rows"][1]["levels"] == {"temperature": "ok", "humidity": "alert"}
    _, none = api.check(base, "/api/drift", "/api/drift?model=other")
    assert none["rows"] == []
    _, hist = api.check(
        base, "/api/devices/{device}/drift", "/api/devices/pi-2/drift?feature=humidity"
    )
    assert hist["features"] == {"humidity": [{"ts": 1002.0, "psi": 0.3}]}

    _, merged = api.check(base, "/api/drift/fleet", "/api/drift/fleet?since_s=86400")
    (climate,) = merged["models"]  # reports without window counts, of an unpublished model
    assert [(r["cohort"], r["status"]) for r in climate["rows"]] == [("fleet", "unknown")]
    assert climate["rows"][0]["note"] == "no card for climate@1: it is not published on this hub"
    api.check(base, "/api/drift/fleet", "/api/drift/fleet?since_s=0")

    _, rollouts = api.check(base, "/api/rollouts", "/api/rollouts")
    assert [x["id"] for x in rollouts["rollouts"]] == [r.id]
    _, view = api.check(base, "/api/rollouts/{rollout}", f"/api/rollouts/{r.id}")
    assert (view["state"], view["wave"], view["model"]) == ("running", 1, "climate@2")
    assert [w["state"] for w in view["waves"]] == ["in progress", "pending"]
    assert view["progress"] == {"sent": 1, "waiting": 1}
    assert [
        (c["wave"], c["name"], c["value"], c["limit"], c["passed"], c["live"])
        for c in view["checks"]
    ] == [(1, "failures", 0, 0, True, True), (1, "healthy", 0, 0, True, True)]
    assert view["soak"] is None  # the canary has not answered yet

    for e in experiments(r.id):
        dash.hub.store.add_experiment(e.id, e.state, e.to_json())
    _, listed = api.check(base, "/api/experiments", "/api/experiments")
    assert {x["id"]: x["state"] for x in listed["experiments"]} == {
        "e-decided": "decided",
        "e-running": "running",
    }
    _, decided = api.check(base, "/api/experiments/{experiment}", "/api/experiments/e-decided")
    assert (decided["winner"], decided["metric"], decided["outcome"]) == (
        "climate@2",
        "error-rate",
        "winner",
    )
    assert [(c["cohort"], c["value"]) for c in decided["cohorts"]] == [("A", 0.005), ("B", 0.045)]
    assert decided["low"] < decided["difference"] < decided["high"] < 0
    api.check(base, "/api/experiments/{experiment}", "/api/experiments/e-nope")

    status, _ = api.check(base, "/metrics", "/metrics")
    assert status == 200

    # ground truth in, quality out (tests/test_ground_truth.py joins a real agent's predictions)
    window = TelemetryWindow(window_s=1.0, model=V1, count=3, rows=WindowRows(1, 0, (0, 1, 1)))
    fleet[0].send("telemetry", window.to_body())
    fleet[1].send("labels", Labels((("pi-1/1/0", 1),)).to_body())  # not pi-2's to say
    dash.wait(
        "the window and the labels",
        lambda: dash.hub.store.record_counts() == {"telemetry": 5, "drift": 2, "labels": 1},
    )
    labels = [{"prediction": f"pi-1/1/{i}", "label": y} for i, y in enumerate((0, 0, 1))]
    body = json.dumps([*labels, {"prediction": "nope", "label": 1}])
    _, answer = api.check(base, "/api/labels", "/api/labels", "post", body=body)
    assert answer == {"received": 4, "outcomes": {"joined": 3, "malformed": 1}}
    _, quality = api.check(base, "/api/metrics", "/api/metrics?by=device&since_s=3600")
    (row,) = quality["rows"]
    assert (row["model"], row["version"], row["group"], row["labels"]) == ("climate", 1, "pi-1", 3)
    assert row["task"] == "classification"  # no card here: told by its predictions
    assert row["accuracy"]["value"] == pytest.approx(2 / 3) and row["rmse"] is None
    assert quality["labels"]["counts"] == {
        "api": {"joined": 3, "malformed": 1},
        "device": {"foreign": 1},
    }
    status, _, text = http(base + "metrics")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }
    climate = (("metric", "accuracy"), ("model", "climate"), ("version", "1"))
    assert samples[("edgefleet_model_quality", climate)] == pytest.approx(2 / 3)
    assert samples[("edgefleet_model_labels", (("model", "climate"), ("version", "1")))] == 3
    joined = (("outcome", "joined"), ("source", "api"))
    assert samples[("edgefleet_labels_total", joined)] == 3
    api.check(base, "/api/labels", "/api/labels", "post", body='[{"prediction": "pi-1/1/0"}]')
    api.check(base, "/api/labels", "/api/labels", "post", token=None, body="[]")
    api.check(base, "/api/metrics", "/api/metrics?model=Bad!")
    # the error answers are documented too
    api.check(base, "/api/fleet", "/api/fleet", token=None)
    api.check(base, "/api/devices/{device}", "/api/devices/nobody")
    api.check(base, "/api/devices/{device}/telemetry", "/api/devices/pi-1/telemetry?limit=0")
    api.check(base, "/api/rollouts/{rollout}/{action}", f"/api/rollouts/{r.id}/resume", "post")
    documented = {(path, method) for path, ops in api.doc["paths"].items() for method in ops}
    assert {(t, m) for t, m, _ in api.checked} | {("/metrics", "get")} == documented


def test_metrics_parse_with_the_prometheus_parser(
    dash: HubWithDashboard, fleet: list[SimDevice]
) -> None:
    dash.start_rollout(ModelRef("climate", 2), [["pi-1"], ["pi-2"]])
    fleet[0].stats = {**fleet[0].stats, "dropped": {"telemetry": 7}}
    fleet[0].status()
    dash.hub.store.add_refusals({"pi-1": Counter(rate=5, quota=2)}, 1.0)
    fleet[1].stop()  # says it goes offline
    dash.wait(
        "pi-2 offline",
        lambda: [d["online"] for d in dash.hub.store.devices()] == [True, False],
    )
    status, ctype, body = http(dash.url + "metrics")
    assert status == 200 and ctype.startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }
    assert samples[("edgefleet_devices_online", ())] == 1
    assert samples[("edgefleet_devices", ())] == 2
    assert samples[("edgefleet_rollouts", (("state", "running"),))] == 1
    assert samples[("edgefleet_records_stored_total", (("kind", "telemetry"),))] == 4
    assert samples[("edgefleet_records_stored_total", (("kind", "drift"),))] == 2
    dropped = (("device", "pi-1"), ("kind", "telemetry"))
    assert samples[("edgefleet_device_dropped_records_total", dropped)] == 7
    refused = "edgefleet_hub_refused_total"
    assert samples[(refused, (("device", "pi-1"), ("reason", "rate")))] == 5
    assert samples[(refused, (("device", "pi-1"), ("reason", "quota")))] == 2
    assert not any(name == refused and ("device", "pi-2") in labels for name, labels in samples)
    port = (("device", "pi-1"), ("input", PORT["name"]))
    assert samples[("edgefleet_device_input_lost_total", port)] == 0
    assert samples[("edgefleet_device_input_open", port)] == 1
    assert samples[("edgefleet_device_no_input", port)] == 0
    assert samples[("edgefleet_device_input_idle_seconds", port)] == 0
    offline = (("device", "pi-2"), ("input", PORT["name"]))
    assert samples[("edgefleet_device_input_lost_total", offline)] == 3  # what it last told
    assert ("edgefleet_device_no_input", offline) not in samples  # gone quiet with it
    climate = (("model", "climate"), ("version", "1"))
    assert samples[("edgefleet_model_devices", climate)] == 2
    assert samples[("edgefleet_model_devices_online", climate)] == 1
    assert samples[("edgefleet_model_rows_per_second", climate)] == 60  # pi-1's newest window
    assert samples[("edgefleet_model_errors_per_second", climate)] == 0
    assert samples[("edgefleet_model_error_rate", climate)] == 0
    assert (
        samples[
            (
                "edgefleet_model_latency_ms",
                (("model", "climate"), ("quantile", "0.95"), ("version", "1")),
            )
        ]
        == 1.7
    )
    assert (
        samples[
            (
                "edgefleet_model_latency_ms",
                (("model", "climate"), ("quantile", "0.5"), ("version", "1")),
            )
        ]
        == 0.85
    )
    drifting = "edgefleet_model_drift_devices"
    assert (
        samples[(drifting, (*climate[:1], ("status", "alert"), climate[1]))] == 1
    )  # pi-2's newest report
    assert samples[(drifting, (*climate[:1], ("status", "warn"), climate[1]))] == 0
    psi = "edgefleet_drift_psi"
    assert samples[(psi, (("feature", "humidity"), ("model", "climate")))] == 0.3
    assert samples[(psi, (("feature", "temperature"), ("model", "climate")))] == 0.05


def test_a_full_disk_shows_in_the_api_and_the_metrics(
    dash: HubWithDashboard, fleet: list[SimDevice]
) -> None:
    full = StorageCondition(
        False,
        "disk full: /var/lib/edgefleet/buffer/3.log: No space left on device",
        1000.0,
        {"telemetry": 12, "drift": 1},
        ("disk-full",),
    )
    fleet[0].stats = {**fleet[0].stats, "storage": StorageCondition().to_json()}
    fleet[1].stats = {**fleet[1].stats, "storage": full.to_json()}
    for d in fleet:
        d.status()
    dash.wait(
        "both statuses",
        lambda: all("storage" in (d["stats"] or {}) for d in dash.hub.store.devices()),
    )
    api = OpenApi(dash.url)
    _, data = api.check(dash.url, "/api/fleet", "/api/fleet?sort=id")
    pi1, pi2 = data["devices"]
    assert (pi2["severity"], pi2["concerns"][:2]) == (
        "alert",
        ["drift alert", "storage: disk-full"],
    )
    assert pi1["storage"] == {"ok": True, "error": None, "reasons": [], "since": None, "unkept": {}}
    assert pi2["storage"] == {
        "ok": False,
        "error": full.error,
        "reasons": ["disk-full"],
        "since": 1000.0,
        "unkept": {"telemetry": 12, "drift": 1},
    }
    _, one = api.check(dash.url, "/api/devices/{device}", "/api/devices/pi-2")
    assert one["storage"] == pi2["storage"]

    _, _, body = http(dash.url + "metrics")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }
    assert samples[("edgefleet_device_storage_ok", (("device", "pi-1"),))] == 1
    assert samples[("edgefleet_device_storage_ok", (("device", "pi-2"),))] == 0
    unkept = "edgefleet_device_unkept_records_total"
    assert samples[(unkept, (("device", "pi-2"), ("kind", "telemetry")))] == 12
    assert samples[(unkept, (("device", "pi-2"), ("kind", "drift")))] == 1
    assert not [k for k in samples if k[0] == unkept and ("device", "pi-1") in k[1]]


def test_writes_need_the_token_and_follow_the_rollout_state(
    dash: HubWithDashboard, fleet: list[SimDevice]
) -> None:
    r = dash.start_rollout(ModelRef("climate", 2), [["pi-1"], ["pi-2"]])
    fleet[0].wait_command()
    url = f"{dash.url}api/rollouts/{r.id}/pause"
    status, _, body = http(url, "POST", token=None)
    assert status == 401 and b"Bearer" in body
    for read in ("openapi.json", "api/fleet"):  # every read too, the API's description included
        assert http(dash.url + read, token=None)[0] == 401, read
        assert http(dash.url + read, token="a-wrong-token-of-some-length")[0] == 403, read
    assert http(url, "POST", token="a-wrong-token-of-some-length")[0] == 403
    assert http(url, "GET")[0] == 405
    store = dash.hub.store

    def state() -> str:
        row = store.rollout(r.id)
        assert row is not None
        return str(row["state"])

    assert state() == "running"
    status, _, body = http(url, "POST")
    assert status == 200, body
    assert json.loads(body) == {
        "id": r.id,
        "action": "pause",
        "previous_state": "running",
        "state": "paused",
    }
    # paused: the canary's healthy report no longer starts the next wave
    fleet[0].events(r.id, ModelRef("climate", 2), "healthy")
    dash.wait("the event stored", lambda: store.count("events") == 1)
    dash.hub.tick()  # what the hub's loop does every quarter second
    row = store.rollout(r.id)
    assert row is not None and row["body"]["devices"] == {"pi-1": "healthy", "pi-2": "waiting"}
    status, _, body = http(url, "POST")
    assert status == 409 and b"is paused; only a running rollout can be paused" in body
    assert http(f"{dash.url}api/rollouts/{r.id}/resume", "POST")[0] == 200
    assert fleet[1].wait_command().rollout == r.id  # running again: wave 2 goes out
    assert http(f"{dash.url}api/rollouts/{r.id}/abort", "POST")[0] == 200
    assert state() == "aborted"
    assert http(f"{dash.url}api/rollouts/{r.id}/rollback", "POST")[0] == 200
    assert state() == "rolled-back"
    status, _, body = http(f"{dash.url}api/rollouts/{r.id}/rollback", "POST")
    assert status == 409 and b"is rolled-back" in body


@pytest.mark.parametrize(
    ("path", "method", "status", "says"),
    [
        ("api/devices/ghost", "GET", 404, "no device with id 'ghost'"),
        ("api/devices/bad%20id", "GET", 422, "path parameter device"),
        ("api/devices/-x/telemetry", "GET", 422, "path parameter device"),
        ("api/devices/pi-1/telemetry?limit=0", "GET", 422, "query parameter limit"),
        ("api/devices/pi-1/telemetry?limit=lots", "GET", 422, "got 'lots'"),
        ("api/devices/pi-1/telemetry?limit=999999", "GET", 422, "less than or equal to 5000"),
        ("api/devices/pi-1/telemetry?since=-1", "GET", 422, "query parameter since"),
        ("api/devices/pi-1/telemetry?since=nan", "GET", 422, "query parameter since"),
        ("api/devices/pi-1/drift?feature=" + "f" * 201, "GET", 422, "query parameter feature"),
        ("api/rollouts/r-nope", "GET", 404, "no rollout with id 'r-nope'"),
        ("api/rollouts/..", "GET", 422, "path parameter rollout"),
        ("api/rollouts/r%20x", "GET", 422, "path parameter rollout"),
        ("api/rollouts/r-nope/pause", "POST", 404, "no rollout with id 'r-nope'"),
        ("api/experiments/-x", "GET", 422, "path parameter experiment"),
        ("api/experiments/e-nope", "GET", 404, "no experiment with id 'e-nope'"),
        ("api/rollouts/r-nope/explode", "POST", 422, "path parameter action"),
        ("api/nothing", "GET", 404, "Not Found"),
        ("api/fleet?limit=0", "GET", 422, "query parameter limit"),
        ("api/fleet?limit=501", "GET", 422, "less than or equal to 500, got '501'"),
        ("api/fleet?offset=-1", "GET", 422, "query parameter offset"),
        ("api/fleet?severity=bad", "GET", 422, "query parameter severity.0: Input should be 'ok'"),
        ("api/fleet?sort=age", "GET", 422, "query parameter sort"),
        ("api/fleet?model=climate@two", "GET", 422, "query parameter model"),
        ("api/fleet/series?since_s=86400&bucket_s=1", "GET", 422, "at most 500 buckets"),
        ("api/fleet/series?bucket_s=0", "GET", 422, "query parameter bucket_s"),
    ],
)
def test_bad_requests_get_clear_json_errors(
    dash: HubWithDashboard, fleet: list[SimDevice], path: str, method: str, status: int, says: str
) -> None:
    got, ctype, body = http(dash.url + path, method)
    assert got == status, body
    assert ctype == "application/json"
    error = json.loads(body)["error"]
    assert says in error


def test_malformed_device_bodies_are_refused_and_old_rows_skipped(
    dash: HubWithDashboard, fleet: list[SimDevice]
) -> None:
    """Bodies that do not decode are refused on ingest (counted per device); a row an older hub
    stored without that check (max_psi null) is left out of /api/drift, not a 500."""
    pi = fleet[0]
    pi.send(
        "telemetry",
        {"window_s": 0, "count": "many", "latency_ms": 5, "errors": {"nan": "x", "eof": 2}},
    )
    pi.send("drift", {"psi": {"temperature": "hot", "humidity": 0.2}, "max_psi": None})
    dash.wait(
        "both refused",
        lambda: (dash.hub.store.device("pi-1") or {})["refused"].get("malformed") == 2,
    )
    old = {"model": {"name": "iris", "version": 1}, "psi": {"humidity": 0.2}, "max_psi": None}
    dash.hub.store.add_batch("drift", Batch("pi-1", (Record(1, 999, time.time(), old),)))
    api = OpenApi(dash.url)
    _, drift = api.check(dash.url, "/api/drift", "/api/drift")
    assert all(r["device"] != "pi-1" for r in drift["rows"])
    _, fleet_view = api.check(dash.url, "/api/fleet", "/api/fleet")
    row = next(d for d in fleet_view["devices"] if d["id"] == "pi-1")
    assert row["refused"] == {"malformed": 2} and row["drift_max_psi"] is None
    assert not math.isnan(fleet_view["now"])


def test_open_reads_still_guard_writes(broker: RunningBroker, tmp_path: Path) -> None:
    with running_hub(broker, tmp_path / "hub", open_reads=True) as dash:
        for path in ("api/fleet", "api/rollouts", "api/drift", "metrics", "openapi.json", ""):
            assert http(dash.url + path, token=None)[0] == 200, path
        r = dash.start_rollout(V1, [["pi-1"]])
        assert http(f"{dash.url}api/rollouts/{r.id}/abort", "POST", token=None)[0] == 401
        assert http(f"{dash.url}api/rollouts/{r.id}/abort", "POST", token=TOKEN)[0] == 200
