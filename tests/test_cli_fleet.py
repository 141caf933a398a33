"""`edgehub devices` and `edgehub rollout`: what works, and one clear line for every mistake."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from sqlalchemy import update

from cloud_hub.cli import app as hub_cli
from cloud_hub.cli import output as cli_output
from cloud_hub.store.database import Store, devices
from cloud_hub.store.url import store_url
from cloud_hub.web.metrics import registry_for
from edge_agent.protocol.inputs import InputState
from edge_agent.protocol.messages import MAX_INT, ModelRef, Status, StorageCondition
from edge_agent.protocol.records import DeviceStats
from tests.support.cli import bundle, hub_fails


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A hub with wine@1 published and three devices: two online in the lab, one offline."""
    home = tmp_path_factory.mktemp("fleet") / "home"
    assert hub_cli.main(["--home", str(home), "keys", "init"]) == 0
    path = home.parent / "wine-1.zip"
    path.write_bytes(bundle("wine", 1))
    assert hub_cli.main(["--home", str(home), "model", "publish", str(path)]) == 0
    store = Store(store_url(home))
    for device, online in (("pi-1", True), ("pi-2", True), ("pi-3", False)):
        store.register(device)
        store.set_status(
            Status(device, True, 1, "0.1", "raspberry-pi-4", ModelRef("wine", 1), INPUTS[device])
        )
        if not online:  # its last will: the stats it last told stay
            store.set_status(Status(device, False, 1))
    return home


PORT = {"name": "serial:/dev/ttyUSB0", "open": True, "lost": 0, "reopened": 0, "idle_s": 0.4}
INPUTS: dict[str, dict[str, Any]] = {
    "pi-1": {"inputs": [{**PORT, "open": False, "lost": 3, "idle_s": 75.0, "no_input": True}]},
    "pi-2": {"inputs": [{**PORT, "no_input": False}]},
    "pi-3": {"inputs": [{**PORT, "lost": 1, "reopened": 1, "idle_s": 99.0, "no_input": True}]},
}


def run(home: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert hub_cli.main(["--home", str(home), *argv]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    return out


def test_tags_groups_filters_and_show(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(home, capsys, "devices", "tag", "pi-1", "lab", "cam")
    run(home, capsys, "devices", "tag", "pi-2", "lab")
    assert "tags cam" in run(home, capsys, "devices", "tag", "pi-1", "lab", "--remove")
    run(home, capsys, "devices", "tag", "pi-1", "lab")
    run(home, capsys, "devices", "group", "pi-2", "north")
    listed = json.loads(run(home, capsys, "devices", "list", "--tag", "lab", "--json"))
    assert [(d["device"], d["tags"]) for d in listed] == [("pi-1", "cam,lab"), ("pi-2", "lab")]
    listed = json.loads(run(home, capsys, "devices", "list", "--offline", "--json"))
    assert [d["device"] for d in listed] == ["pi-3"]
    listed = json.loads(run(home, capsys, "devices", "list", "--group", "north", "--json"))
    assert [d["device"] for d in listed] == ["pi-2"]
    assert json.loads(run(home, capsys, "devices", "list", "--model", "wine@2", "--json")) == []
    shown = json.loads(run(home, capsys, "devices", "show", "pi-2", "--json"))
    assert (shown["group"], shown["online"], shown["online_since"] > 0) == ("north", True, True)
    assert "north" in run(home, capsys, "devices", "show", "pi-2")
    run(home, capsys, "devices", "group", "pi-2", "--none")
    assert json.loads(run(home, capsys, "devices", "show", "pi-2", "--json"))["group"] == ""


def test_devices_list_shows_what_the_hub_refused(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    Store(store_url(home)).add_refusals({"pi-3": Counter(rate=40, quota=7)}, 1.0)
    listed = {
        d["device"]: d["refused"]
        for d in json.loads(run(home, capsys, "devices", "list", "--json"))
    }
    assert listed == {"pi-1": "-", "pi-2": "-", "pi-3": "quota 7, rate 40"}
    shown = json.loads(run(home, capsys, "devices", "show", "pi-3", "--json"))
    assert shown["refused"] == {"rate": 40, "quota": 7}


def test_devices_show_their_inputs(
    home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_output.console, "width", 160)  # a terminal wide enough not to fold
    listed = {d["device"]: d for d in json.loads(run(home, capsys, "devices", "list", "--json"))}
    assert {k: d["input"] for k, d in listed.items()} == {
        "pi-1": "no input 75s, port lost x3",
        "pi-2": "ok",
        "pi-3": "port lost x1",  # offline: only what it lost is told
    }
    assert listed["pi-1"]["inputs"] == INPUTS["pi-1"]["inputs"]
    table = run(home, capsys, "devices", "list", "--online").splitlines()
    assert "│ input " in table[2].replace("┃", "│")
    assert "│ no input 75s, port lost x3 │" in next(line for line in table if "pi-1" in line)
    quiet = run(home, capsys, "devices", "list", "--group", "nobody-here").splitlines()
    assert "device" in quiet[2] and "input" not in quiet[2]  # nothing to say: no column
    shown = run(home, capsys, "devices", "show", "pi-1")
    assert "serial:/dev/ttyUSB0 │ closed, idle 75 s, lost 3, reopened 0" in shown


def test_rollout_by_tag_status_and_manual_control(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(home, capsys, "devices", "tag", "pi-1", "cam")  # as the first test left it, if it ran
    run(home, capsys, "devices", "tag", "pi-3", "cam")
    argv = ["rollout", "start", "wine@1", "--target", "tag:cam", "--waves", "50%,100%"]
    started = json.loads(run(home, capsys, *argv, "--soak", "5m", "--max-psi", "0.2", "--json"))
    assert started["waves"] == [["pi-1"], ["pi-3"]]
    assert started["plan"]["gates"]["soak_s"] == 300.0
    rid = started["id"]
    assert "canary" in run(home, capsys, "rollout", "status", rid)
    (status,) = json.loads(run(home, capsys, "rollout", "status", rid, "--json"))
    assert [w["phase"] for w in status["waves_view"]] == ["waiting", "waiting"]
    assert "paused" in run(home, capsys, "rollout", "pause", rid)
    err = hub_fails(capsys, "--home", str(home), "rollout", "pause", rid)
    assert "is paused; only a running rollout can be paused" in err
    assert "running" in run(home, capsys, "rollout", "resume", rid)
    assert "rolled-back" in run(home, capsys, "rollout", "rollback", rid)
    err = hub_fails(capsys, "--home", str(home), "rollout", "abort", rid)
    assert "is rolled-back; only a running or paused or completed rollout" in err
    assert rid in run(home, capsys, "rollout", "list")


def test_a_newer_rollout_supersedes_the_older(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = json.loads(run(home, capsys, "rollout", "start", "wine@1", "--json"))["id"]
    second = json.loads(run(home, capsys, "rollout", "start", "wine@1", "--json"))["id"]
    rows = {r["id"]: r for r in json.loads(run(home, capsys, "rollout", "list", "--json"))}
    assert rows[first]["state"] == "superseded"
    assert rows[first]["halt_reason"] == f"superseded by rollout {second}"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--target", "everyone"], "--target: expected all, group:NAME or tag:NAME"),
        (["--target", "tag:nobody"], "no devices match --target tag:nobody"),
        (["--canary", "0"], "--canary: expected at least 1 device, got '0'"),
        (["--canary", "lots"], "--canary: expected a count like 2 or a percent"),
        (["--waves", "10%,50%"], "--waves: expected the last wave to be 100%"),
        (["--waves", "50%,10%,100%"], "--waves: expected growing shares"),
        (["--max-failure", "-1"], "--max-failure: expected a count like 2 or a percent"),
        (["--min-success", "200%"], "--min-success: expected a count like 2 or a percent"),
        (["--soak", "forever"], "--soak: expected a duration like 30s, 5m or 1h, got 'forever'"),
        (["--max-p95-ms", "fast"], "--max-p95-ms: expected a number of 0 or more, got 'fast'"),
        (["--max-p95-ms", "20"], "--soak: the latency, error-rate and drift gates read"),
        (["--max-error-rate", "2", "--soak", "1m"], "--max-error-rate: expected a number from 0"),
        (["--max-psi", "nan", "--soak", "1m"], "--max-psi: expected a number of 0 or more"),
        (
            ["--max-accuracy-drop", "5", "--soak", "1m"],
            "--max-accuracy-drop: expected a number from 0 to 1, got '5'",
        ),
        (
            ["--max-accuracy-drop", "a lot", "--soak", "1m"],
            "--max-accuracy-drop: expected a number from 0 to 1, got 'a lot'",
        ),
        (["--max-accuracy-drop", "0.05"], "--soak: the latency, error-rate and drift gates read"),
        (["--min-agreement", "0.9"], "--min-agreement: agreement is measured in shadow mode"),
        (["--min-agreement", "1.5", "--shadow", "100"], "--min-agreement: expected a number"),
        (["--shadow", "0"], "--shadow: expected a number of rows from 1 to 1000000, got '0'"),
        (["--shadow", "many"], "--shadow: expected a number of rows"),
        (["--on-fail", "shrug"], "--on-fail: expected abort or pause, got 'shrug'"),
    ],
)
def test_rollout_start_bad_arguments(
    home: Path, capsys: pytest.CaptureFixture[str], args: list[str], expected: str
) -> None:
    err = hub_fails(capsys, "--home", str(home), "rollout", "start", "wine@1", *args)
    assert expected in err


@pytest.mark.parametrize("action", ["status", "pause", "resume", "abort", "rollback"])
def test_rollout_actions_on_an_unknown_id(
    home: Path, capsys: pytest.CaptureFixture[str], action: str
) -> None:
    err = hub_fails(capsys, "--home", str(home), "rollout", action, "r-nope")
    assert "no rollout with id 'r-nope'" in err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["devices", "show", "ghost"], "no device 'ghost' in the registry"),
        (["devices", "show", "pi-1", "--events", "x"], "--events: expected a count from 0"),
        (["devices", "tag", "ghost", "lab"], "no device 'ghost'"),
        (["devices", "tag", "pi-1", "a/b"], "tag: expected 1-64 characters"),
        (["devices", "group", "pi-1"], "devices group: expected a GROUP name or --none"),
        (["devices", "group", "pi-1", "x", "--none"], "expected a GROUP or --none, got both"),
        (["devices", "group", "pi-1", "#"], "tag: expected 1-64 characters"),
        (["devices", "list", "--group", "a b"], "--group: expected 1-64 characters"),
        (["devices", "list", "--tag", "+"], "tag: expected 1-64 characters"),
    ],
)
def test_devices_bad_arguments(
    home: Path, capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    assert expected in hub_fails(capsys, "--home", str(home), *argv)


def test_devices_show_their_storage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """What each device last said of its own disk: fine, full since when with the records it
    could not keep, or nothing (an older agent)."""
    home = tmp_path / "home"
    assert hub_cli.main(["--home", str(home), "keys", "init"]) == 0
    store = Store(store_url(home))
    full = StorageCondition(
        False,
        "disk full: /var/lib/edgefleet/buffer/3.log: No space left on device",
        1_700_000_000.0,
        {"telemetry": 800, "drift": 12},
        ("disk-full",),
    )
    said = {"pi-1": StorageCondition(True, unkept={"telemetry": 5}), "pi-2": full, "pi-3": None}
    for device, storage in said.items():
        stats = {"inferences": 10} | ({"storage": storage.to_json()} if storage else {})
        store.set_status(Status(device, True, 1, "0.1", "raspberry-pi-4", stats=stats))
    capsys.readouterr()
    listed = {d["device"]: d for d in json.loads(run(home, capsys, "devices", "list", "--json"))}
    assert listed["pi-2"]["storage"] == {
        "ok": False,
        "error": full.error,
        "reasons": ["disk-full"],
        "since": 1_700_000_000.0,
        "unkept": {"telemetry": 800, "drift": 12},
    }
    assert listed["pi-1"]["storage"]["ok"] is True and listed["pi-3"]["storage"] is None
    table = run(home, capsys, "devices", "list").split()  # cells wrap at 80 columns
    assert "disk" in table and "full," in table and "812" in table and "ok," in table
    shown = " ".join(run(home, capsys, "devices", "show", "pi-2").replace("│", " ").split())
    assert "storage disk full since 2023-11-14 22:13:20Z, 812 unkept (disk full: /var/lib" in shown


def test_devices_remove(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "home"
    assert hub_cli.main(["--home", str(home), "keys", "init"]) == 0
    store = Store(store_url(home))
    for device in ("pi-1", "pi-2", "pi-3"):
        store.set_status(Status(device, True, 1, "0.1", "raspberry-pi-4"))
        store.label_device(device, add=["cam"], group="lab")
        store.queue_command(device, {"cmd": "shadow"})
    store.add_refusals({"pi-2": Counter(rate=4)}, 1.0)
    capsys.readouterr()

    # an unknown id among known ones: nothing is removed
    err = hub_fails(capsys, "--home", str(home), "devices", "remove", "pi-1", "pi-9", "pi-8")
    assert err == (
        "edgehub: error: devices remove: no device 'pi-9', 'pi-8' in the registry (nothing "
        "removed); `edgehub devices list` shows them"
    )
    assert [d["id"] for d in store.devices()] == ["pi-1", "pi-2", "pi-3"]

    assert hub_cli.main(["--home", str(home), "devices", "remove", "pi-1", "pi-2"]) == 0
    assert capsys.readouterr().out == (
        "removed pi-1, pi-2 from the registry (their stored records stay)\n"
    )
    assert [d["id"] for d in store.devices()] == ["pi-3"]
    assert [device for _, device, _ in store.unsent_commands()] == ["pi-3"]
    assert store.refusals() == {}
    # a device that reports again is new: no old labels
    store.set_status(Status("pi-1", True, 2, "0.1", "raspberry-pi-4"))
    back = store.device("pi-1")
    assert back is not None and (back["tags"], back["group"]) == ([], "")


def test_stats_an_older_hub_stored_unchecked_show_as_unreadable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """A registry row whose stats a hub from before the check stored, and that do not decode:
    the list, the device and the metrics show them as unreadable (no counts, no storage, no
    inputs), logged once for the device; the other devices show as they are."""
    home = tmp_path / "home"
    assert hub_cli.main(["--home", str(home), "keys", "init"]) == 0
    store = Store(store_url(home))
    good = DeviceStats(
        inferences=7,
        dropped={"telemetry": 2},
        storage=StorageCondition(True),
        inputs=(InputState.from_json({**PORT, "no_input": False}, "port"),),
    )
    store.set_status(Status("old-1", True, 1, "0.1", "raspberry-pi-4", stats=good.to_body()))
    store.set_status(Status("old-2", True, 1, "0.1", "raspberry-pi-4", stats=good.to_body()))
    odd = {**good.to_body(), "dropped": {"telemetry": "lots"}}
    with store.engine.begin() as conn:  # as a hub from before the check stored it
        conn.execute(update(devices).where(devices.c.id == "old-2").values(stats=odd))
    capsys.readouterr()
    with caplog.at_level(logging.WARNING, logger="cloud_hub.store.database"):
        listed = {
            d["device"]: d for d in json.loads(run(home, capsys, "devices", "list", "--json"))
        }
        shown = " ".join(run(home, capsys, "devices", "show", "old-2").replace("│", " ").split())
        metrics = generate_latest(registry_for(store)).decode()
    fine, unreadable = listed["old-1"], listed["old-2"]
    assert (fine["inferences"], fine["input"], fine["storage"]["ok"]) == (7, "ok", True)
    assert fine["inputs"] == [s.to_json() for s in good.inputs]
    assert (unreadable["inferences"], unreadable["storage"]) == (0, None)
    assert (unreadable["input"], unreadable["inputs"]) == ("unreadable", [])
    assert "input unreadable" in shown and "input serial" not in shown
    assert 'edgefleet_device_dropped_records_total{device="old-1",kind="telemetry"} 2.0' in metrics
    assert 'device="old-2"' not in metrics
    (logged,) = [r.getMessage() for r in caplog.records]  # once, though read three times
    assert "do not decode" in logged and "device old-2" in logged
    assert f"dropped.telemetry: expected a count from 0 to {MAX_INT}, got str 'lots'" in logged
