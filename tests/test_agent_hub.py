"""Agent and hub in one process against a private mosquitto: bad messages, health-gate rollback."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloud_hub.rollout import engine as ro
from cloud_hub.rollout.operations import publish_bundle, start_rollout
from edge_agent.protocol.messages import Command, ModelRef
from tests.support.commands import signed
from tests.support.fleet import (  # noqa: F401  (fleet is a fixture)
    DEVICE,
    Fleet,
    _bundle,
    _publish,
    fleet,
)

pytestmark = pytest.mark.broker


def test_bad_messages_are_counted_and_kill_nothing(fleet: Fleet) -> None:  # noqa: F811
    garbage = [b"\xff\xfe\x00", b"{}", b'{"v": 99}', b'{"v": 1, "id": "x", "kind": "format-disk"}']
    for payload in garbage:
        _publish(fleet.broker, f"edgefleet/dev/{DEVICE}/cmd", payload)
    w = fleet.watcher
    w.wait(
        "the agent to count every bad command",
        lambda: w.status.get("stats", {}).get("bad_messages", 0) >= len(garbage),
    )
    # at the hub: garbage telemetry, and a device claiming another's identity
    _publish(fleet.broker, f"edgefleet/dev/{DEVICE}/telemetry", b"not json")
    _publish(
        fleet.broker,
        f"edgefleet/dev/{DEVICE}/telemetry",
        b'{"v":1,"device":"pi-02","records":[{"boot":1,"seq":0,"ts":1}]}',
    )
    _publish(fleet.broker, f"edgefleet/dev/{DEVICE}/events", b'{"v":1,"device":"x"}')
    hub = fleet.hub
    with hub.handled:
        assert hub.handled.wait_for(lambda: sum(hub.rejected.values()) >= 3, 30), hub.rejected
    assert hub.rejected["MessageError"] >= 3
    w.wait("the agent to keep publishing", lambda: w.status.get("online") is True)
    assert fleet.agent.session.connected.is_set()
    assert all(d["id"] != "pi-02" for d in fleet.hub.store.devices())
    assert fleet.hub.store.count("telemetry") == 0


def test_unhealthy_model_is_rolled_back_and_rollout_halts(fleet: Fleet, tmp_path: Path) -> None:  # noqa: F811
    w = fleet.watcher
    publish_bundle(fleet.home, _bundle(tmp_path, 1))
    start_rollout(fleet.home, ModelRef("iris", 1), "1")
    w.wait("iris@1 healthy", lambda: w.has_event("healthy", 1))

    # version 2 passes verification but its card's latency budget cannot be met
    publish_bundle(fleet.home, _bundle(tmp_path, 2, max_latency_ms=1e-6))
    r = start_rollout(fleet.home, ModelRef("iris", 2), "1")
    w.wait("iris@2 rolled back", lambda: w.has_event("rolled-back", 2))
    events = [e["event"] for e in w.events if e["model"]["version"] == 2]
    assert events == ["offered", "downloading", "verified", "installed", "rolled-back"]
    reason = next(e["reason"] for e in w.events if e["event"] == "rolled-back")
    assert "health gate failed" in reason and "latency" in reason
    w.wait(
        "the status to show iris@1 again", lambda: (w.status.get("model") or {}).get("version") == 1
    )
    assert fleet.agent.store.record().current == ModelRef("iris", 1)

    def halted() -> bool:
        row = next(x for x in fleet.hub.store.rollouts() if x["id"] == r.id)
        return bool(row["state"] == ro.HALTED)

    with fleet.hub.handled:  # the hub steps rollouts between messages; status keeps arriving
        assert fleet.hub.handled.wait_for(halted, 30)


def test_a_rollback_of_a_model_the_device_does_not_run_is_ignored(
    fleet: Fleet,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The hub may send a rollback after the device already stepped back by itself: one step
    back only, never past the model it runs."""
    w = fleet.watcher
    publish_bundle(fleet.home, _bundle(tmp_path, 1))
    start_rollout(fleet.home, ModelRef("iris", 1), "1")
    w.wait("iris@1 healthy", lambda: w.has_event("healthy", 1))
    stale = Command("c-stale", "rollback", model=ModelRef("iris", 2), rollout="r-old")
    _publish(fleet.broker, f"edgefleet/dev/{DEVICE}/cmd", signed(fleet.home, DEVICE, stale))
    publish_bundle(fleet.home, _bundle(tmp_path, 3))  # commands are handled in order
    start_rollout(fleet.home, ModelRef("iris", 3), "1")
    w.wait("iris@3 healthy", lambda: w.has_event("healthy", 3))
    assert not any(e["event"] == "rolled-back" for e in w.events)
    assert fleet.agent.store.record().current == ModelRef("iris", 3)
