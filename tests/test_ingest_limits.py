"""Fleet protection at the hub, the pure part: per-device message rate and storage quota, and
the hub refusing (counting, never confirming) what is past them without touching another
device's records. No broker: the hub is driven through `_queue` and `handle_all`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from cloud_hub.hub import Hub
from cloud_hub.ingest_limits import QUOTA, RATE, DeviceGuard, Limits
from edge_agent.errors import ConfigError
from edge_agent.mqtt.session import BrokerAddress
from edge_agent.protocol.messages import Batch, Record, encode


def test_a_device_past_its_rate_is_refused_and_counted_alone() -> None:
    guard = DeviceGuard(Limits(rate=10, burst=5, quota=0))
    admitted = [guard.admit("flood", 0.0) for _ in range(20)]
    assert admitted.count(True) == 5  # the burst
    assert all(guard.admit("calm", 0.0) for _ in range(5)), "a neighbour's flood costs it nothing"
    assert guard.admit("flood", 0.1)  # one more token after 0.1 s at 10/s
    assert guard.take_refused() == {"flood": {RATE: 15}}
    assert guard.take_refused() == {}  # handed over once


def test_no_rate_limit_when_the_rate_is_zero() -> None:
    guard = DeviceGuard(Limits(rate=0, quota=0))
    assert all(guard.admit("d", 0.0) for _ in range(10_000))


def test_the_quota_counts_what_the_store_holds_and_refuses_past_it() -> None:
    held = {"a": 95, "b": 0}
    asked: list[str] = []

    def count(device: str) -> int:
        asked.append(device)
        return held[device]

    guard = DeviceGuard(Limits(rate=0, quota=100))
    assert guard.room("a", 5, count)
    held["a"] = 100  # the hub stored them
    assert not guard.room("a", 1, count)  # counted again: full
    assert guard.room("b", 100, count)
    assert asked == ["a", "a", "b"]
    held["a"] = 40  # retention removed some
    guard.recount()
    assert guard.room("a", 60, count)
    assert guard.take_refused() == {"a": {QUOTA: 1}}


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({"rate": -1.0}, "expected messages a second >= 0"),
        ({"rate": float("nan")}, "expected messages a second >= 0"),
        ({"quota": -5}, "expected records >= 0"),
    ],
)
def test_wrong_limits_are_refused(limits: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Limits(**limits)  # type: ignore[arg-type]


def _batch(device: str, seqs: Sequence[int]) -> tuple[str, bytes]:
    batch = Batch(device, tuple(Record(1, s, 0.0, {"count": s}) for s in seqs))
    return f"edgefleet/dev/{device}/telemetry", encode(batch)


def _hub(tmp_path: Path, limits: Limits) -> Hub:
    (tmp_path / "hub").mkdir()
    return Hub(tmp_path / "hub", BrokerAddress("127.0.0.1", 1), limits=limits)


def test_over_quota_records_are_not_stored_nor_confirmed_and_the_refusal_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = _hub(tmp_path, Limits(rate=0, quota=10))
    confirmed: list[str] = []
    monkeypatch.setattr(hub.session, "publish", lambda topic, *_a, **_k: confirmed.append(topic))
    hub.handle_all([_batch("greedy", range(8)), _batch("modest", range(3))])
    hub.handle_all([_batch("greedy", range(8, 16)), _batch("modest", range(3, 6))])
    assert hub.store.held("greedy") == 8 and hub.store.held("modest") == 6
    assert confirmed.count("edgefleet/dev/greedy/ack") == 1  # the refused batch: no confirmation
    hub.tick(now=1000.0)
    assert hub.store.refusals() == {"greedy": {QUOTA: 8}}


def test_a_message_past_the_rate_is_acknowledged_to_the_broker_and_dropped(tmp_path: Path) -> None:
    hub = _hub(tmp_path, Limits(rate=1, burst=2, quota=0))
    acks: list[int] = []
    for n in range(5):
        topic, payload = _batch("flood", [n])
        hub._queue(topic, payload, lambda n=n: acks.append(n))
    assert hub.incoming.qsize() == 2
    assert acks == [2, 3, 4]  # refused at once: the broker may forget them
    hub.tick(now=1000.0)
    assert hub.store.refusals() == {"flood": {RATE: 3}}
