"""Promise 1 end to end: records buffered on the device reach the hub's store exactly once,
across a broker outage, a hub that dies before committing, and with two hubs splitting the
ingest through a shared subscription. Real mosquitto, real Buffer, Sender and Hub; no sleeps:
every wait is on the hub's `handled` condition or the sender's state, with a timeout."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud_hub.broker.local import RunningBroker
from cloud_hub.hub import Hub
from cloud_hub.store.database import Store
from cloud_hub.store.url import store_url
from tests.support.device_rig import Device
from tests.support.hub_thread import DEVICE, WAIT_S, new_hub, run_hub

pytestmark = [pytest.mark.broker, pytest.mark.usefixtures("each_store")]  # SQLite, PostgreSQL
K = 120


def wait_stored(hub: Hub, store: Store, n: int) -> None:
    with hub.handled:
        ok = hub.handled.wait_for(lambda: store.count("telemetry", DEVICE) >= n, WAIT_S)
    assert ok, f"hub holds {store.count('telemetry', DEVICE)} records, expected {n}"


def exactly_once(store: Store, n: int) -> None:
    seqs = sorted(r.seq for r in store.records("telemetry", DEVICE))
    assert seqs == list(range(n)), "missing or repeated records"


@pytest.fixture
def device(broker: RunningBroker, tmp_path: Path) -> Iterator[Device]:
    d = Device(broker, tmp_path / "device", DEVICE)
    yield d
    d.close()


def test_broker_outage_then_everything_arrives_once(
    broker: RunningBroker, device: Device, tmp_path: Path
) -> None:
    hub = new_hub(tmp_path / "hub", broker)
    halt = run_hub(hub)
    device.start()
    device.record(10)
    wait_stored(hub, hub.store, 10)
    broker.stop()
    device.record(K - 10)  # produced while the broker is gone: buffered
    assert device.buffer.pending() >= K - 10
    broker.restart()
    wait_stored(hub, hub.store, K)
    halt()
    exactly_once(hub.store, K)
    assert device.buffer.dropped() == {}


def test_hub_dying_before_it_committed_loses_nothing(
    broker: RunningBroker, device: Device, tmp_path: Path
) -> None:
    """Hub A receives messages but dies after committing only the first few: the broker still
    holds the rest for the hub's persistent session (no PUBACK went out for them), and hub B,
    the same hub restarted, stores each of them once."""
    home = tmp_path / "hub"
    first = new_hub(home, broker)
    first.session.start()
    assert first.session.wait_connected(WAIT_S)
    device.start()
    device.record(K)
    got = []
    for _ in range(6):  # what Hub.run does per message: store, then acknowledge
        topic, payload, ack = first.incoming.get(timeout=WAIT_S)
        first.handle(topic, payload)
        ack()
        got.append(topic)
    # more arrived but were never committed, hence never acknowledged
    topic, payload, _ack = first.incoming.get(timeout=WAIT_S)
    first.session.stop()  # the hub is gone
    committed = first.store.count("telemetry", DEVICE)
    assert 0 < committed < K
    second = new_hub(home, broker)
    halt = run_hub(second)
    wait_stored(second, second.store, K)
    halt()
    exactly_once(second.store, K)


def test_two_hubs_split_the_ingest_and_store_each_record_once(
    broker: RunningBroker, device: Device, tmp_path: Path
) -> None:
    url = store_url(tmp_path)
    hubs = [
        new_hub(
            tmp_path / f"hub-{n}",
            broker,
            store_url=url,
            client_id=f"edgehub-{n}",
            share="ingest",
        )
        for n in ("a", "b")
    ]
    halts = [run_hub(h) for h in hubs]
    device.start()
    device.record(K)
    store = Store(url)
    deadline = time.monotonic() + WAIT_S
    while store.count("telemetry", DEVICE) < K and time.monotonic() < deadline:
        with hubs[0].handled:  # woken by hub a's next message, or re-checked soon for hub b's
            hubs[0].handled.wait(0.2)
    for halt in halts:
        halt()
    exactly_once(store, K)
    assert all(h.stored["telemetry"] > 0 for h in hubs), [h.stored for h in hubs]


def test_share_group_must_be_a_plain_name(broker: RunningBroker, tmp_path: Path) -> None:
    from edge_agent.errors import ConfigError

    with pytest.raises(ConfigError, match="expected a plain name, got 'a/b'"):
        new_hub(tmp_path / "hub", broker, share="a/b")
