"""What the dashboard computes from stored rows (no broker, no server)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from cloud_hub.rollout import engine as ro
from cloud_hub.rollout.gates import Check, Gates, Metrics, Verdict
from cloud_hub.store.database import Store, StoredRecord, stats_of
from cloud_hub.store.url import store_url
from cloud_hub.web.fleet_rows import FleetRows
from cloud_hub.web.views import (
    FleetQuery,
    device_row,
    drift_map,
    drift_series,
    fleet_page,
    fleet_series,
    rollout_view,
    telemetry_points,
    version_summary,
    weighted_median,
)
from edge_agent.errors import ConfigError
from edge_agent.protocol.messages import Batch, ModelRef, Record, Status, StorageCondition
from edge_agent.protocol.records import DeviceStats, DriftReport, TelemetryWindow
from tests.support.rollout import Sim


def row(body: dict[str, Any], state: str = "running") -> dict[str, Any]:
    return {"id": "r-1", "state": state, "created": 1.0, "updated": 2.0, "body": body}


def test_a_rollout_as_the_engine_stores_it() -> None:
    r = ro.start("r-1", ModelRef("m", 2), "m-2.zip", 1, [["a"], ["b", "c"]])
    sim = Sim(r)  # the hub's side of the loop, in memory (tests/support/rollout.py)
    assert sim.step(0.0) == [("a", "deploy")]
    sim.report("a", "healthy")
    assert sim.step(1e6) == [("b", "deploy"), ("c", "deploy")]
    sim.report("b", "rejected", "tampered: sha256 mismatch")
    assert sim.step(2e6) == [("a", "rollback")]
    view = rollout_view(row(r.to_json(), r.state))
    assert (view["model"], view["wave"], view["state"]) == ("m@2", 2, "halted")
    assert [w["state"] for w in view["waves"]] == ["done", "failed"]
    assert view["waves"][1]["devices"][0] == {
        "id": "b",
        "state": "failed",
        "reason": "tampered: sha256 mismatch",
    }
    assert view["progress"] == {"healthy": 1, "failed": 1, "sent": 1}
    assert view["halt_reason"].startswith("wave 2: 1 of 2 device(s) failed")
    assert set(view["gates"]) == {"wave 1", "wave 2"}  # each wave's stored verdict
    assert view["gates"]["wave 2"]["gate"]["outcome"] == "abort"


def test_keys_the_page_does_not_know_are_shown_as_stored() -> None:
    gates = [{"wave": 1, "gate": "error-rate", "passed": False, "value": 0.2, "limit": 0.05}]
    body = {
        "waves": [["a", "ghost"]],
        "devices": {"a": "verifying"},
        "wave": 0,
        "gate_results": gates,
        "schedule": {"next_wave_at": 99},
    }
    view = rollout_view(row(body, "paused"))
    assert view["gates"] == {"gate_results": gates}
    assert view["body"]["schedule"] == {"next_wave_at": 99}
    assert [d["state"] for d in view["waves"][0]["devices"]] == ["verifying", "unknown"]
    assert view["waves"][0]["state"] == "in progress"
    assert view["model"] is None
    empty = rollout_view(row({"waves": "not a list", "devices": [1, 2]}))
    assert (empty["waves"], empty["wave"], empty["progress"]) == ([], None, {})


def rec(ts: float, body: dict[str, Any], device: str = "d") -> StoredRecord:
    return StoredRecord("drift", device, 1, int(ts), ts, body)


def test_drift_map_colours_each_cell_and_filters_by_model() -> None:
    """Reports from before calibrated drift (no levels) are coloured by the old PSI bands; a
    row stored before the hub checked bodies that does not decode is left out."""
    m1 = {"name": "m", "version": 1}
    latest = {
        "b": rec(2, {"model": m1, "psi": {"x": 0.3, "y": 0.1}, "status": "alert"}, "b"),
        "a": rec(1, {"model": m1, "psi": {"z": 0.01, "x": 0.02}}, "a"),
        "c": rec(3, {"model": {"name": "other", "version": 1}, "psi": {"q": 1.0}}, "c"),
        "d": rec(4, {"model": m1, "psi": {"z": 0.01, "x": float("inf")}}, "d"),
    }
    view = drift_map(latest, model="m")
    assert view["features"] == ["z", "x", "y"]
    assert [r["device"] for r in view["rows"]] == ["a", "b"]
    assert view["rows"][0]["max_psi"] == 0.02  # an old report without max_psi: the largest
    assert view["rows"][1]["levels"] == {"x": "alert", "y": "warn"}
    series = drift_series([latest["b"], rec(4, {"psi": {"x": 0.5}})], feature="x")
    assert series == {"x": [{"ts": 2, "psi": 0.3}, {"ts": 4, "psi": 0.5}]}


def test_calibrated_reports_colour_cells_by_adjusted_p_not_by_psi() -> None:
    """A report with levels (every agent since calibrated drift): a cell's level is its q
    against the report's levels, whatever its PSI; a feature without q is unknown."""
    body = {
        "model": {"name": "m", "version": 2},
        "psi": {"x": 0.4, "y": 0.01, "z": 0.02, "w": 0.3},
        "q": {"x": 0.5, "y": 0.005, "z": 1e-6},
        "levels": {"warn": 0.01, "alert": 0.0001},
        "status": "alert",
    }
    view = drift_map({"d": rec(1, body)})
    assert view["rows"][0]["levels"] == {"x": "ok", "y": "warn", "z": "alert", "w": "unknown"}
    assert view["thresholds"] == {"warn": 0.01, "alert": 0.0001}
    # levels a device made up are not trusted: a stored report with them is left out
    for bad in ({"warn": "hi", "alert": None}, {"warn": 0.001, "alert": 0.01}, [0.01]):
        assert drift_map({"d": rec(1, body | {"levels": bad})})["rows"] == []


def test_telemetry_points_are_windows_that_decode() -> None:
    """A window shows what it holds (a percentile it lacks is null); a raw sample is not a
    window, and a row stored before the hub checked bodies that does not decode is left out."""
    window = {"window_s": 2.0, "count": 10, "latency_ms": {"p50": 1}, "errors": {"nan": 3}}
    odd = {"count": True, "errors": [1], "window_s": "1"}
    sample = {"raw": {"model": {"name": "m", "version": 1}, "features": {"x": 1.0}}}
    stored = [
        StoredRecord("telemetry", "d", 1, seq, float(seq), body)
        for seq, body in enumerate((window, odd, sample), start=5)
    ]
    (good,) = telemetry_points(stored)
    assert (good["throughput_per_s"], good["errors"], good["latency_ms"]["p95"]) == (5.0, 3, None)


def test_a_device_row_says_what_the_device_said_of_its_storage() -> None:
    device = {"id": "d", "online": True, "last_seen": 5.0}
    full = StorageCondition(
        False, "disk full: buffer/3.log: full", 4.0, {"telemetry": 3}, ("disk-full",)
    )
    row = device_row({**device, "stats": {"storage": full.to_json()}}, None, None)
    assert row["storage"] == {
        "ok": False,
        "error": "disk full: buffer/3.log: full",
        "reasons": ["disk-full"],
        "since": 4.0,
        "unkept": {"telemetry": 3},
    }
    assert device_row({**device, "stats": {}}, None, None)["storage"] is None  # an older agent
    odd = {"storage": {"ok": "no", "unkept": {"telemetry": -1}}}  # stored before it was checked
    assert device_row({**device, "stats": odd}, None, None)["storage"] is None


def test_device_row_tells_the_inputs_condition() -> None:
    port = {"name": "serial:/dev/ttyUSB0", "open": False, "lost": 3, "reopened": 2}
    quiet = {**port, "idle_s": 75.4, "no_input": True}

    def view(online: bool, inputs: object) -> dict[str, Any]:
        return device_row({"id": "d", "online": online, "stats": {"inputs": inputs}}, None, None)

    flagged = view(True, [quiet])
    assert flagged["input"] == "no input 75s, port lost x3"
    assert flagged["inputs"] == [quiet]
    assert view(False, [quiet])["input"] == "port lost x3"  # offline: its idle time stopped
    fine = {**quiet, "open": True, "lost": 0, "reopened": 0, "idle_s": 0.3, "no_input": False}
    assert view(True, [fine])["input"] == "ok"
    assert view(True, [])["input"] == "-"  # no inputs configured
    assert device_row({"id": "d", "stats": {}}, None, None)["input"] == "-"  # an older agent
    bad = view(True, [{**quiet, "lost": "many"}])  # stored before the hub checked it
    assert (bad["input"], bad["inputs"]) == ("unreadable", [])


def test_a_device_row_whose_stats_do_not_decode_shows_them_unreadable() -> None:
    """Stats a hub from before the check stored that do not decode: the row says so (input
    "unreadable", no storage, zero counts) rather than show part of them; valid ones in full."""
    good = DeviceStats(inferences=9, dropped={"telemetry": 2, "drift": 1}, buffered=4)
    device = {"id": "d", "online": True, "last_seen": 5.0, "refused": {"rate": 3}}
    row = device_row({**device, "stats": good.to_body()}, None, None)
    assert [row[k] for k in ("inferences", "dropped", "buffered", "refused", "input")] == [
        9,
        3,
        4,
        {"rate": 3},
        "-",
    ]
    odd = {**good.to_body(), "buffered": -1}
    row = device_row({**device, "id": "odd-row", "stats": odd}, None, None)
    assert [row[k] for k in ("inferences", "dropped", "buffered", "storage", "input")] == [
        0,
        0,
        0,
        None,
        "unreadable",
    ]
    assert stats_of({"id": "never-seen", "stats": {}}) == DeviceStats()


# ---- the fleet at scale ----------------------------------------------------------------------
def fleet_rows() -> list[dict[str, Any]]:
    """Six devices: two alerting (drift, a full disk), two warning (offline, drift warn), two
    fine, seen at different times and running two versions."""
    full = StorageCondition(False, "disk full", 4.0, {}, ("disk-full",)).to_json()
    regs: list[tuple[dict[str, Any], str | None]] = [
        ({"id": "a", "online": True, "last_seen": 10.0, "version": 1}, "alert"),
        (
            {
                "id": "b",
                "online": True,
                "last_seen": 30.0,
                "version": 2,
                "stats": {"storage": full},
            },
            None,
        ),
        ({"id": "c", "online": False, "last_seen": 50.0, "version": 1}, None),
        ({"id": "d", "online": True, "last_seen": 20.0, "version": 2}, "warn"),
        ({"id": "e", "online": True, "last_seen": 40.0, "version": 1}, "ok"),
        ({"id": "f", "online": True, "last_seen": 60.0, "version": 2}, None),
    ]
    rows = []
    for reg, drift in regs:
        report = {"model": {"name": "m", "version": reg["version"]}, "psi": {"x": 0.01}}
        stored = rec(1, report | {"status": drift}, reg["id"]) if drift else None
        rows.append(device_row({**reg, "model": "m"}, None, stored))
    return rows


def test_each_device_has_a_severity_and_says_why() -> None:
    rows = {r["id"]: (r["severity"], r["concerns"]) for r in fleet_rows()}
    assert rows == {
        "a": ("alert", ["drift alert"]),
        "b": ("alert", ["storage: disk-full"]),
        "c": ("warn", ["offline"]),
        "d": ("warn", ["drift warn"]),
        "e": ("ok", []),
        "f": ("ok", []),
    }
    quiet = device_row(
        {
            "id": "q",
            "online": True,
            "stats": {
                "inputs": [
                    {"name": "s", "open": False, "lost": 2, "reopened": 1}
                    | {"idle_s": 3.0, "no_input": False}
                ]
            },
        },
        None,
        None,
    )
    assert (quiet["severity"], quiet["concerns"]) == ("warn", ["input: input closed, port lost x2"])
    never = device_row({"id": "n"}, None, None)  # enrolled, never seen: nothing to look at yet
    assert (never["status"], never["severity"]) == ("never seen", "ok")


def ids(page: dict[str, Any]) -> list[str]:
    return [d["id"] for d in page["devices"]]


def test_fleet_pages_filter_and_sort_worst_first() -> None:
    rows = fleet_rows()
    page = fleet_page(rows, FleetQuery())
    # alert, then warn, then ok; within each the most recently seen first
    assert ids(page) == ["b", "a", "c", "d", "f", "e"]
    assert (page["fleet"], page["total"], page["counts"]) == (
        6,
        6,
        {"ok": 2, "warn": 2, "alert": 2},
    )
    pages = [ids(fleet_page(rows, FleetQuery(limit=4, offset=o))) for o in (0, 4, 8)]
    assert pages == [["b", "a", "c", "d"], ["f", "e"], []]  # each device once, in order
    assert ids(fleet_page(rows, FleetQuery(severity=("warn", "ok")))) == ["c", "d", "f", "e"]
    v2 = fleet_page(rows, FleetQuery(model="m@2"))
    assert (ids(v2), v2["counts"]) == (["b", "d", "f"], {"ok": 1, "warn": 1, "alert": 1})
    assert fleet_page(rows, FleetQuery(model="m"))["total"] == 6
    assert fleet_page(rows, FleetQuery(model="other"))["total"] == 0
    assert ids(fleet_page(rows, FleetQuery(sort="last_seen"))) == ["f", "c", "e", "b", "d", "a"]
    assert ids(fleet_page(rows, FleetQuery(sort="id"))) == ["a", "b", "c", "d", "e", "f"]


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ({"limit": 0}, "limit: expected 1 to 500 devices a page, got 0"),
        ({"limit": 501}, "limit: expected 1 to 500 devices a page, got 501"),
        ({"offset": -1}, "offset: expected 0 or more, got -1"),
        ({"severity": ("bad",)}, "severity: expected one of ok, warn, alert, got 'bad'"),
        ({"sort": "age"}, "sort: expected one of severity, last_seen, id, got 'age'"),
    ],
)
def test_a_wrong_fleet_query_says_what_it_expected(query: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(says)):
        FleetQuery(**query)


def window_rec(device: str, ts: float, body: dict[str, Any]) -> StoredRecord:
    return StoredRecord("telemetry", device, 1, int(ts), ts, body)


def window(version: int, count: int, p50: float, p95: float, errors: int = 0) -> dict[str, Any]:
    return {
        "window_s": 2.0,
        "model": {"name": "m", "version": version},
        "count": count,
        "latency_ms": {"p50": p50, "p95": p95},
        "errors": {"nan": errors} if errors else {},
    }


def test_each_version_sums_its_online_devices_newest_windows() -> None:
    rows = fleet_rows()
    telemetry = {
        "a": window_rec("a", 1, window(1, 100, 1.0, 3.0, errors=4)),
        "c": window_rec("c", 1, window(1, 999, 9.0, 9.0)),  # offline: its rate stopped
        "e": window_rec("e", 1, window(1, 300, 2.0, 4.0)),
        "b": window_rec("b", 1, window(1, 50, 5.0, 5.0)),  # runs m@2 now: an older window
        "d": window_rec("d", 1, window(2, 20, 1.0, 2.0)),
    }
    v1, v2 = version_summary(rows, telemetry)
    assert (v1["label"], v1["devices"], v1["online"], v1["windows"]) == ("m@1", 3, 2, 2)
    assert (v1["rows_per_s"], v1["errors_per_s"], v1["error_rate"]) == (200.0, 2.0, 0.01)
    # row-weighted medians: e's 300 rows outweigh a's 100
    assert v1["latency_ms"] == {"p50": 2.0, "p95": 4.0}
    assert (v1["drift_warn"], v1["drift_alert"]) == (0, 1)
    assert (v2["label"], v2["devices"], v2["online"], v2["windows"]) == ("m@2", 3, 3, 1)
    assert (v2["rows_per_s"], v2["error_rate"], v2["drift_warn"]) == (10.0, 0.0, 1)
    assert weighted_median([]) is None
    assert weighted_median([(1.0, 1), (5.0, 1), (9.0, 1)]) == 5.0


def test_fleet_series_buckets_every_device_by_time_and_version(
    each_store: str, tmp_path: Path
) -> None:
    """Windows and drift reports of three devices, stored; summed per 30 s and model version
    by the store (SQL on both engines), with a record stamped before the start and one past
    the end left out, and errors of any reason counted."""
    store = Store(store_url(tmp_path))  # the engine each_store chose
    v1, v2 = ModelRef("m", 1), ModelRef("m", 2)
    sent = [
        ("a", 100.0, TelemetryWindow(1.0, v1, 60, errors={"nan": 4, "fields": 2})),
        ("b", 105.0, TelemetryWindow(1.0, v2, 30)),
        ("a", 130.0, TelemetryWindow(1.0, v1, 90)),
        ("a", 99.0, TelemetryWindow(1.0, v1, 1000)),  # before the start
        ("c", 999.0, TelemetryWindow(1.0, v1, 5)),  # past the end
        ("c", 140.0, DriftReport(model=v2, psi={"x": 0.5}, status="alert")),
        ("c", 141.0, DriftReport(model=v2, psi={"x": 0.01}, status="ok")),
        ("b", 110.0, DriftReport(model=v2, psi={"x": 0.6}, status="alert")),
    ]
    for seq, (device, ts, body) in enumerate(sent):
        store.add_batch(body.KIND, Batch(device, (Record(1, seq, ts, body.to_body()),)))
    buckets = store.fleet_buckets(100.0, 30.0)
    series = {s["model"]: s["points"] for s in fleet_series(buckets, 100.0, 160.0, 30.0)}
    assert list(series) == ["fleet", "m@1", "m@2"]
    fleet = series["fleet"]
    assert [p["ts"] for p in fleet] == [100.0, 130.0]
    assert [p["rows_per_s"] for p in fleet] == [3.0, 3.0]  # 90 rows in 30 s, then 90
    assert [p["error_rate"] for p in fleet] == [6 / 90, 0.0]
    assert [p["alerts"] for p in fleet] == [1, 1]
    assert [p["rows_per_s"] for p in series["m@2"]] == [1.0, 0.0]
    assert [p["error_rate"] for p in series["m@2"]] == [0.0, None]  # no rows: no rate
    assert [p["alerts"] for p in series["m@2"]] == [1, 1]
    store.engine.dispose()


# ---- a rollout's gates as a table --------------------------------------------------------------
def soaking_rollout() -> ro.Rollout:
    """Canary passed its gate, wave 2 installed and soaking for 300 s since t = 1000."""
    gates = Gates(soak_s=300.0, max_p95_ms=5.0, max_error_rate=0.01)
    r = ro.start(
        "r-1", ModelRef("m", 2), "m-2.zip", 1, [["a"], ["b", "c"]], plan=ro.Plan(gates=gates)
    )
    r.stages[0] = ro.Stage(
        started=0.0,
        settled=10.0,
        decided=310.0,
        gate=Verdict(
            "proceed", "", [Check("failures", 0, 0, True), Check("p95_ms", 3.2, 5.0, True)]
        ).to_json(),
    )
    r.stages[1] = ro.Stage(started=900.0, settled=1000.0)
    r.wave = 1
    r.devices = {"a": "healthy", "b": "healthy", "c": "failed"}
    return r


def test_gate_checks_are_rows_with_value_limit_and_verdict_never_raw_json() -> None:
    r = soaking_rollout()
    measured = Metrics(windows=3, inferences=1000, errors=30, p95_ms=2.5)
    view = rollout_view(row(r.to_json()), now=1100.4, measured=measured)
    rows = [
        (c["wave"], c["name"], c["value"], c["relation"], c["limit"], c["passed"], c["live"])
        for c in view["checks"]
    ]
    assert rows == [
        (1, "failures", 0, "<=", 0, True, False),
        (1, "p95_ms", 3.2, "<=", 5.0, True, False),
        (2, "failures", 1, "<=", 0, False, True),  # as it stands: c failed
        (2, "healthy", 1, ">=", 0, True, True),
        (2, "p95_ms", 2.5, "<=", 5.0, True, True),
        (2, "error_rate", 0.03, "<=", 0.01, False, True),
    ]
    assert view["checks"][4]["label"] == "latency p95 (ms)"
    assert view["soak"] == {"wave": 2, "soak_s": 300.0, "ends_at": 1300.0, "seconds_left": 200}
    assert [w["state"] for w in view["waves"]] == ["done", "failed"]  # c failed: not soaking
    r.devices["c"] = "healthy"
    assert [w["state"] for w in rollout_view(row(r.to_json()), 1100.0)["waves"]] == [
        "done",
        "soaking",
    ]
    r.devices["c"] = "failed"
    later = rollout_view(row(r.to_json()), now=1400.0)
    assert later["soak"]["seconds_left"] == 0
    assert [c["name"] for c in later["checks"] if c["live"]] == ["failures", "healthy"]  # no data
    paused = rollout_view(row(r.to_json(), "paused"), now=1100.0)
    assert paused["soak"] is None and any(c["live"] for c in paused["checks"])
    done = rollout_view(row(r.to_json(), "completed"), now=1100.0)
    assert done["soak"] is None and not any(c["live"] for c in done["checks"])
    odd = r.to_json() | {"plan": {"gates": "fast"}, "stages": [{"gate": {"checks": [7]}}]}
    broken = rollout_view(row(odd), now=1.0)  # a body the page cannot read: no rows, no clock
    assert broken["soak"] is None
    assert [(c["name"], c["value"], c["passed"]) for c in broken["checks"]] == [("?", None, None)]


def test_fleet_rows_follow_every_change_and_remake_only_what_changed(
    each_store: str, tmp_path: Path
) -> None:
    store = Store(store_url(tmp_path))
    v1 = ModelRef("m", 1)
    store.ingest([Status(d, True, 1, "0.1", "p", v1, {}, 1.0) for d in ("a", "b", "c")])
    rows = FleetRows(store)
    first, _ = rows.read()
    assert [(r["id"], r["severity"]) for r in first] == [("a", "ok"), ("b", "ok"), ("c", "ok")]
    assert rows.read()[0] is first  # nothing changed: nothing made again

    report = DriftReport(model=v1, psi={"x": 0.6}, status="alert").to_body()
    store.add_batch("drift", Batch("b", (Record(1, 1, 2.0, report),)))
    second, _ = rows.read()
    assert [r["severity"] for r in second] == ["ok", "alert", "ok"]
    assert second[0] is first[0] and second[2] is first[2]  # a and c kept
    store.add_refusals({"c": Counter(rate=3)}, 3.0)
    assert rows.read()[0][2]["refused"] == {"rate": 3}
    store.set_status(Status("a", False))
    a = rows.read()[0][0]
    assert (a["status"], a["severity"]) == ("offline", "warn")
    store.register("d")
    assert [r["id"] for r in rows.read()[0]] == ["a", "b", "c", "d"]
    store.remove_devices(["b"])
    assert [r["id"] for r in rows.read()[0]] == ["a", "c", "d"]
    store.engine.dispose()
