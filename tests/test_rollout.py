"""The rollout state machine: waves, canary, halting, completion and persistence."""

from __future__ import annotations

import json

import pytest

from cloud_hub import rollout as ro
from edge_agent.errors import ConfigError
from edge_agent.protocol.messages import ModelRef

MODEL = ModelRef("wine", 2)


def new(devices: list[str], canary: int = 1) -> ro.Rollout:
    return ro.start("r-1", MODEL, "wine/2.zip", 4, ro.plan_waves(devices, canary))


# ---- planning --------------------------------------------------------------------------------
def test_plan_waves_canary_then_everyone_sorted() -> None:
    assert ro.plan_waves(["c", "a", "b", "d"], 1) == [["a"], ["b", "c", "d"]]
    assert ro.plan_waves(["c", "a", "b", "d"], 2) == [["a", "b"], ["c", "d"]]


@pytest.mark.parametrize("canary", [1, 3, 10])
def test_plan_waves_canary_as_big_as_the_fleet_is_one_wave(canary: int) -> None:
    devices = ["x"] if canary == 1 else ["z", "y", "x"]
    assert ro.plan_waves(devices, canary) == [sorted(devices)]


def test_plan_waves_without_devices() -> None:
    with pytest.raises(ConfigError, match="rollout: no devices match the target; enroll"):
        ro.plan_waves([], 1)


@pytest.mark.parametrize("canary", [0, -1])
def test_plan_waves_canary_below_one(canary: int) -> None:
    with pytest.raises(ConfigError, match=f"--canary expected at least 1 device, got {canary}"):
        ro.plan_waves(["a", "b"], canary)


@pytest.mark.parametrize(
    ("spec", "fleet", "count"),
    [("1", 10, 1), ("3", 10, 3), ("10%", 10, 1), ("10%", 25, 3), ("1%", 5, 1), ("50%", 4, 2)],
)
def test_canary_count(spec: str, fleet: int, count: int) -> None:
    assert ro.canary_count(spec, fleet) == count


@pytest.mark.parametrize(
    "spec", ["x", "", "%", "ten%", "1.5", "2 devices", "inf%", "nan%", "1e400%"]
)
def test_canary_count_rejects(spec: str) -> None:
    with pytest.raises(ConfigError) as info:
        ro.canary_count(spec, 10)
    text = str(info.value)
    assert text.startswith("--canary: expected")
    assert repr(spec) in text


@pytest.mark.parametrize("spec", ["0%", "-5%", "101%"])
def test_canary_percent_out_of_range(spec: str) -> None:
    with pytest.raises(ConfigError, match=f"--canary: expected .*got {spec!r}"):
        ro.canary_count(spec, 10)


# ---- stepping --------------------------------------------------------------------------------
def test_canary_gets_the_deploy_first_and_others_only_after_it_is_healthy() -> None:
    r = new(["d3", "d1", "d2"])
    assert r.devices == {"d1": ro.WAITING, "d2": ro.WAITING, "d3": ro.WAITING}
    assert ro.advance(r, []) == ["d1"]
    assert r.devices["d1"] == ro.SENT
    assert ro.advance(r, []) == []  # not sent twice
    # progress on the way is not health
    assert ro.advance(r, [("d1", "downloading", ""), ("d1", "installed", "")]) == []
    assert r.wave == 0
    assert r.state == ro.RUNNING
    assert ro.advance(r, [("d1", "healthy", "")]) == ["d2", "d3"]
    assert r.wave == 1
    assert ro.progress(r) == {"waiting": 0, "sent": 2, "healthy": 1, "failed": 0}
    assert ro.advance(r, [("d2", "healthy", "")]) == []
    assert r.state == ro.RUNNING
    assert ro.advance(r, [("d3", "healthy", "")]) == []
    assert r.state == ro.COMPLETED
    assert r.halt_reason == ""
    assert ro.advance(r, [("d3", "rejected", "late")]) == []
    assert r.state == ro.COMPLETED


def test_single_device_rollout_completes() -> None:
    r = new(["solo"])
    assert ro.advance(r, []) == ["solo"]
    assert ro.advance(r, [("solo", "healthy", "")]) == []
    assert r.state == ro.COMPLETED


@pytest.mark.parametrize("event", ["rejected", "rolled-back"])
def test_a_failing_canary_halts_and_nobody_else_is_sent(event: str) -> None:
    r = new(["a", "b", "c"])
    ro.advance(r, [])
    assert ro.advance(r, [("a", event, "tampered: hash mismatch")]) == []
    assert r.state == ro.HALTED
    assert "a" in r.halt_reason
    assert "tampered: hash mismatch" in r.halt_reason
    assert r.halt_reason.startswith("wave 1:")
    assert r.devices == {"a": ro.FAILED, "b": ro.WAITING, "c": ro.WAITING}
    assert ro.advance(r, [("b", "healthy", "")]) == []
    assert r.state == ro.HALTED


def test_a_failure_in_the_second_wave_halts_naming_the_device() -> None:
    r = new(["a", "b", "c", "d"])
    ro.advance(r, [])
    assert ro.advance(r, [("a", "healthy", "")]) == ["b", "c", "d"]
    ro.advance(r, [("b", "healthy", ""), ("d", "rolled-back", "health gate: latency 80 ms")])
    assert r.state == ro.HALTED
    assert r.halt_reason == "wave 2: d health gate: latency 80 ms"
    assert r.reasons == {"d": "health gate: latency 80 ms"}


def test_failure_without_reason_still_names_the_device() -> None:
    r = new(["a", "b"])
    ro.advance(r, [])
    ro.advance(r, [("a", "rejected", "")])
    assert r.state == ro.HALTED
    assert "a" in r.halt_reason


def test_events_from_strangers_are_ignored() -> None:
    r = new(["a", "b"])
    ro.advance(r, [])
    assert ro.advance(r, [("intruder", "rejected", "x"), ("intruder", "healthy", "")]) == []
    assert r.state == ro.RUNNING
    assert "intruder" not in r.devices


def test_advance_is_idempotent_on_repeated_events() -> None:
    """The hub replays every event of the rollout on each step: the result must not change."""
    r = new(["a", "b", "c"])
    history: list[tuple[str, str, str]] = []
    sent = ro.advance(r, history)
    history.append(("a", "healthy", ""))
    sent += ro.advance(r, history)
    assert sent == ["a", "b", "c"]
    for _ in range(3):
        assert ro.advance(r, history) == []
    snapshot = r.to_json()
    assert ro.advance(r, history + history) == []
    assert r.to_json() == snapshot
    history += [("b", "healthy", ""), ("c", "healthy", "")]
    assert ro.advance(r, history) == []
    assert r.state == ro.COMPLETED
    assert ro.advance(r, history) == []
    assert r.state == ro.COMPLETED


def test_a_healthy_device_reporting_failure_later_does_not_flip() -> None:
    r = new(["a", "b"])
    ro.advance(r, [])
    ro.advance(r, [("a", "healthy", ""), ("a", "rolled-back", "later")])
    assert r.devices["a"] == ro.HEALTHY
    assert r.state == ro.RUNNING


def test_json_round_trip_survives_a_hub_restart() -> None:
    r = new(["a", "b", "c"], canary=2)
    ro.advance(r, [])
    ro.advance(r, [("a", "healthy", ""), ("b", "rejected", "downgrade")])
    body = json.loads(json.dumps(r.to_json()))  # as the store keeps it
    back = ro.Rollout.from_json(body)
    assert back == r
    assert back.model == MODEL
    assert back.to_json() == r.to_json()


def test_json_round_trip_then_continue() -> None:
    r = new(["a", "b"])
    ro.advance(r, [])
    restored = ro.Rollout.from_json(json.loads(json.dumps(r.to_json())))
    assert ro.advance(restored, [("a", "healthy", "")]) == ["b"]
    assert ro.advance(restored, [("a", "healthy", ""), ("b", "healthy", "")]) == []
    assert restored.state == ro.COMPLETED
