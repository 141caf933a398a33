"""What the dashboard computes from stored rows (no broker, no server)."""

from __future__ import annotations

from typing import Any

from cloud_hub.rollout import engine as ro
from cloud_hub.store.database import StoredRecord, stats_of
from cloud_hub.web.views import (
    device_row,
    drift_map,
    drift_series,
    rollout_view,
    telemetry_points,
)
from edge_agent.protocol.messages import ModelRef, StorageCondition
from edge_agent.protocol.records import DeviceStats
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
        False, "disk full: b.sqlite: full", 4.0, {"telemetry": 3}, ("disk-full",)
    )
    row = device_row({**device, "stats": {"storage": full.to_json()}}, None, None)
    assert row["storage"] == {
        "ok": False,
        "error": "disk full: b.sqlite: full",
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
