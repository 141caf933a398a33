"""The hub stores what queued up in one transaction, and what one bad item costs is that item
alone; an idle sender sleeps; a hub
confirmation that overtakes its publish is not lost.

No broker: the store is a SQLite file, the hub is driven through `handle_all` (what its loop
calls with each batch it takes), and sockets are plain loopback sockets."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from sqlalchemy import text

from cloud_hub.hub import Hub
from cloud_hub.store.database import Ingest, Store
from cloud_hub.store.errors import StoreError
from cloud_hub.store.url import store_url
from edge_agent.mqtt.session import Ack, BrokerAddress
from edge_agent.protocol.messages import (
    Batch,
    Confirm,
    ModelRef,
    Record,
    Status,
    decode_batch,
    decode_confirm,
    encode,
    spans_of,
)
from edge_agent.protocol.topics import Topics
from edge_agent.uplink.buffer import Buffer, TokenBucket
from edge_agent.uplink.delivery import Sender

WAIT_S = 10.0  # the longest one condition may take before the test fails

pytestmark = pytest.mark.usefixtures("each_store")  # on SQLite and on PostgreSQL


def _batch(device: str, seqs: Sequence[int], boot: int = 1) -> Batch:
    return Batch(device, tuple(Record(boot, s, 1000.0 + s, {"count": s}) for s in seqs))


def _status(device: str, version: int) -> Status:
    return Status(device, True, 1, "0.1", "generic-x86_64", ModelRef("iris", version))


# ---- Store.ingest ------------------------------------------------------------------------------
def test_ingest_stores_statuses_and_batches_in_one_call_and_counts_new_records(
    tmp_path: Path,
) -> None:
    store = Store(store_url(tmp_path))
    new = store.ingest(
        [
            _status("pi-1", 1),
            ("telemetry", _batch("pi-1", range(5))),
            ("events", _batch("pi-2", [10, 11])),
            _status("pi-1", 2),  # arrival order: the later status wins
        ]
    )
    assert new == {"telemetry": 5, "events": 2}
    assert store.count("telemetry", "pi-1") == 5
    assert store.count("events", "pi-2") == 2
    assert (store.device("pi-1") or {})["version"] == 2
    assert store.device("pi-2") is not None  # a device first seen by its records is registered


def test_ingest_counts_only_what_is_new_when_a_batch_repeats_in_part(tmp_path: Path) -> None:
    store = Store(store_url(tmp_path))
    assert store.ingest([("telemetry", _batch("pi-1", range(4)))])["telemetry"] == 4
    # a resend (the agent was not sure it arrived) overlapping what is stored, twice in one call
    again = store.ingest(
        [("telemetry", _batch("pi-1", range(2, 7))), ("telemetry", _batch("pi-1", range(5, 8)))]
    )
    assert again["telemetry"] == 4  # seqs 4, 5, 6, 7
    assert sorted(r.seq for r in store.records("telemetry", "pi-1")) == list(range(8))
    assert store.add_batch("telemetry", _batch("pi-1", [7])) == 0


def test_an_ingest_larger_than_one_statement_stores_each_record_once(tmp_path: Path) -> None:
    """More rows than one INSERT takes (SQLite: 500 a statement), with repeats on both sides
    of a statement's edge: the count of new records and the rows stored, read back by SQL,
    are each key once, its body the first copy's."""
    store = Store(store_url(tmp_path))
    assert store.ingest([("telemetry", _batch("pi-1", range(450, 560)))])["telemetry"] == 110
    first = _batch("pi-1", range(1200))
    again = Batch("pi-1", tuple(Record(1, s, 5.0, {"count": -1}) for s in range(490, 1210)))
    new = store.ingest([("telemetry", first), ("telemetry", again)])
    assert new["telemetry"] == 1210 - 110
    stored = store.records("telemetry", "pi-1")
    assert sorted(r.seq for r in stored) == list(range(1210))
    bodies = {r.seq: r.body["count"] for r in stored}
    assert all(bodies[s] == s for s in range(1200))  # the first copy of each key won
    assert all(bodies[s] == -1 for s in range(1200, 1210))


def test_one_ingest_registers_new_devices_and_stamps_every_one_seen(tmp_path: Path) -> None:
    """Many devices in one transaction: the known ones stamped, the new ones registered, a
    device removed meanwhile registered again; each record stored once whatever its kind."""
    store = Store(store_url(tmp_path))
    store.ingest([("telemetry", _batch("pi-1", [0])), ("telemetry", _batch("pi-3", [0]))])
    before = {d: (store.device(d) or {})["last_seen"] for d in ("pi-1", "pi-3")}
    store.remove_devices(["pi-3"])
    new = store.ingest(
        [("telemetry", _batch(f"pi-{n}", [1, 2])) for n in range(1, 6)]
        + [("events", _batch("pi-2", [2, 3])), ("telemetry", _batch("pi-1", [0, 1]))]
    )
    assert new == {"telemetry": 10, "events": 1}  # pi-2's seq 2 was a telemetry record first
    for n in range(1, 6):
        assert store.device(f"pi-{n}") is not None, f"pi-{n} not registered"
        assert store.count("telemetry", f"pi-{n}") == (3 if n in (1, 3) else 2)
    assert (store.device("pi-1") or {})["last_seen"] >= before["pi-1"]
    assert (store.device("pi-3") or {})["last_seen"] >= before["pi-3"]
    assert store.count("events", "pi-2") == 1


# ---- Hub.handle_all -----------------------------------------------------------------------------
@pytest.fixture
def hub(tmp_path: Path) -> Hub:
    (tmp_path / "hub").mkdir()
    return Hub(tmp_path / "hub", BrokerAddress("127.0.0.1", 1))  # never started: no broker


def _message(kind: str, batch: Batch) -> tuple[str, bytes]:
    return f"edgefleet/dev/{batch.device}/{kind}", encode(batch)


def test_one_transaction_for_everything_that_queued_up(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = hub.store.ingest

    def counting(items: Sequence[Ingest]) -> object:
        calls.append(len(items))
        return real(items)

    monkeypatch.setattr(hub.store, "ingest", counting)
    messages = [_message("telemetry", _batch(f"pi-{n}", range(3))) for n in range(10)]
    messages.append(("edgefleet/dev/pi-0/status", encode(_status("pi-0", 1))))
    hub.handle_all(messages)
    assert calls == [11]
    assert hub.stored["telemetry"] == 30
    assert sum(hub.rejected.values()) == 0


def _queued(hub: Hub, kind: str, device: str) -> threading.Event:
    """Queue one message as the MQTT thread would; the event is set when it is acknowledged."""
    acked = threading.Event()
    topic, payload = _message(kind, _batch(device, [1]))
    hub.incoming.put((topic, payload, acked.set))
    return acked


def test_a_message_waits_for_others_to_share_its_transaction(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first message of a transaction waits (GATHER_S) for more: one that arrives while it
    waits is taken with it (here the wait is long, the batch limit 2 ends it)."""
    monkeypatch.setattr("cloud_hub.hub.GATHER_S", 60.0)
    first_taken = threading.Event()
    real_get = hub.incoming.get

    def get(block: bool = True, timeout: float | None = None) -> tuple[str, bytes, Ack]:
        item = real_get(block, timeout)
        first_taken.set()
        return item

    monkeypatch.setattr(hub.incoming, "get", get)
    _queued(hub, "telemetry", "pi-1")
    taken: list[list[str]] = []
    taker = threading.Thread(
        target=lambda: taken.append([t for t, _, _ in hub._take(2)]), daemon=True
    )
    taker.start()
    assert first_taken.wait(WAIT_S)
    _queued(hub, "telemetry", "pi-2")  # after the first was taken: only a wait gets it
    taker.join(WAIT_S)
    assert not taker.is_alive()
    assert taken == [["edgefleet/dev/pi-1/telemetry", "edgefleet/dev/pi-2/telemetry"]]


def test_a_transfer_request_is_not_held_back_to_gather(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A device waits for its chunks: once a transfer request is taken, what has queued goes at
    once (with a minute's gathering, this would wait a minute)."""
    monkeypatch.setattr("cloud_hub.hub.GATHER_S", 60.0)
    _queued(hub, "telemetry", "pi-1")
    _queued(hub, "xfer/req", "pi-2")
    _queued(hub, "telemetry", "pi-3")
    taken: list[list[str]] = []
    taker = threading.Thread(
        target=lambda: taken.append([t for t, _, _ in hub._take(10)]), daemon=True
    )
    taker.start()
    taker.join(WAIT_S)
    assert not taker.is_alive(), "the transfer request was held back to gather more"
    assert [t.split("/", 3)[2] for t in taken[0]] == ["pi-1", "pi-2", "pi-3"]


def test_a_bad_message_in_the_batch_is_rejected_alone(hub: Hub) -> None:
    good = _message("telemetry", _batch("pi-1", range(3)))
    forged = ("edgefleet/dev/pi-2/telemetry", encode(_batch("pi-1", [99])))  # pi-2 posing as pi-1
    event = _message("events", Batch("pi-3", (Record(1, 0, 1000.0, {"event": "healthy"}),)))
    hub.handle_all([good, forged, (good[0], b"{not json"), event])
    assert hub.rejected["MessageError"] == 2
    assert hub.stored == {"telemetry": 3, "events": 1}


def test_a_store_failure_costs_only_the_item_it_failed_on(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole transaction rolls back; the hub then stores one item at a time, so the items
    the database takes are stored and the one it refuses is counted and logged."""
    real = hub.store.ingest

    def failing_for_pi_2(items: Sequence[Ingest]) -> object:
        if any(not isinstance(i, Status) and i[1].device == "pi-2" for i in items):
            raise StoreError("failed", "hub.sqlite", "disk I/O error")
        return real(items)

    monkeypatch.setattr(hub.store, "ingest", failing_for_pi_2)
    confirms = _confirms(hub, monkeypatch)
    hub.handle_all([_message("telemetry", _batch(f"pi-{n}", range(2))) for n in (1, 2, 3)])
    assert hub.rejected["StoreError"] == 1
    assert hub.stored["telemetry"] == 4
    assert hub.store.count("telemetry", "pi-1") == hub.store.count("telemetry", "pi-3") == 2
    assert hub.store.count("telemetry", "pi-2") == 0
    # only what was committed is confirmed: pi-2 keeps its records and sends them again
    assert confirms == {"pi-1": [(1, 0, 1)], "pi-3": [(1, 0, 1)]}


@pytest.mark.parametrize(
    ("number", "read_as"), [(b"1e999", "inf"), (b"NaN", "nan"), (b"-Infinity", "-inf")]
)
def test_a_record_the_store_cannot_keep_is_refused_alone_and_confirmed(
    hub: Hub,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    number: bytes,
    read_as: str,
) -> None:
    """1e999 is valid JSON that Python reads as inf; NaN and Infinity are not JSON, but an
    older agent kept bodies with them. In a field the body checks do not know they pass them,
    and the store cannot keep them (no JSON column holds them). That record is refused like a
    body that does not decode: counted, said, confirmed (sending it again would not make it
    storable), while the records beside it in its batch and in the transaction are stored.
    Before, its whole message was left unconfirmed, and its device sent it, with its good
    records, for good."""
    confirms = _confirms(hub, monkeypatch)
    good = _message("telemetry", _batch("pi-1", range(3)))
    bad = (
        "edgefleet/dev/pi-2/events",
        b'{"v":1,"device":"pi-2","records":['
        b'{"boot":1,"seq":0,"ts":1.0,"event":"healthy"},'
        b'{"boot":1,"seq":1,"ts":2.0,"event":"healthy","extra":[0.5,%s]},'
        b'{"boot":1,"seq":2,"ts":3.0,"event":"healthy"}]}' % number,
    )
    with caplog.at_level(logging.WARNING, logger="cloud_hub.hub"):
        hub.handle_all([good, bad])
    assert not hub.rejected  # no message was lost to an error
    assert hub.stored == {"telemetry": 3, "events": 2}
    with hub.store.engine.connect() as conn:  # counted in SQL, not by the store's readers
        rows = conn.execute(text("SELECT device, kind, seq FROM records ORDER BY device, seq"))
        assert [tuple(r) for r in rows] == [
            *(("pi-1", "telemetry", s) for s in range(3)),
            ("pi-2", "events", 0),
            ("pi-2", "events", 2),
        ]
    assert hub.store.refusals() == {"pi-2": {"malformed": 1}}
    assert confirms == {"pi-1": [(1, 0, 2)], "pi-2": [(1, 0, 2)]}  # the refused one too
    said = [
        r.getMessage()
        for r in caplog.records
        if "refused a record of pi-2 on events" in r.getMessage()
    ]
    assert len(said) == 1
    assert "events record of pi-2 (1, 1)" in said[0] and f"got {read_as} at extra[1]" in said[0]


def _confirms(hub: Hub, monkeypatch: pytest.MonkeyPatch) -> dict[str, list[tuple[int, int, int]]]:
    """What the hub confirms on each dev/{id}/ack (its session is never connected here)."""
    seen: dict[str, list[tuple[int, int, int]]] = {}

    def publish(topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> int:
        device, kind = hub.topics.parse_device_topic(topic)
        assert kind == "ack" and qos == 1 and not retain
        confirm = decode_confirm(payload)
        assert confirm.device == device
        seen.setdefault(device, []).extend(confirm.spans)
        return 1

    monkeypatch.setattr(hub.session, "publish", publish)
    return seen


def test_repeats_are_confirmed_like_new_records(hub: Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch sent again after a lost confirmation is stored once and confirmed again; one
    confirmation per device per transaction, its seqs as spans."""
    confirms = _confirms(hub, monkeypatch)
    hub.handle_all([_message("telemetry", _batch("pi-1", [0, 1, 2, 5]))])
    hub.handle_all(
        [
            _message("telemetry", _batch("pi-1", [0, 1, 2, 5])),  # the resend
            _message("events", _batch("pi-1", [3, 4])),
            _message("telemetry", _batch("pi-1", [6], boot=2)),
        ]
    )
    assert hub.store.count("telemetry", "pi-1") == 5
    assert confirms == {
        "pi-1": [(1, 0, 2), (1, 5, 5), (1, 0, 5), (2, 6, 6)],
    }


def test_a_confirmation_the_mqtt_client_refuses_costs_a_resend_not_the_hub(
    hub: Hub, caplog: pytest.LogCaptureFixture
) -> None:
    """At 5,000 devices on a slow machine the hub's client queued confirmations until paho
    refused more ("Message queue full") and the hub exited. Now what it refuses is counted and
    said at most once a minute; the records are stored, and the devices send them again
    (stored once)."""
    hub.session._client.max_queued = 3  # the client's own refusal, sooner (not connected)
    hub.handle_all([_message("telemetry", _batch(f"pi-{n}", range(2))) for n in range(8)])
    assert hub.stored["telemetry"] == 16  # every record stored
    assert hub.unconfirmed == 5  # 3 confirmations queued, 5 refused
    warned = [r for r in caplog.records if "confirmations not sent" in r.getMessage()]
    assert len(warned) == 1 and "queue full" in warned[0].getMessage().lower()  # once a minute
    hub.session._client.max_queued = 0
    hub.handle_all([_message("telemetry", _batch("pi-7", range(2)))])  # the resend
    assert hub.store.count("telemetry", "pi-7") == 2 and hub.unconfirmed == 5


# ---- the sender's sleep ------------------------------------------------------------------------
class _Unused:
    """Sender's session and buffer, which `pause` never touches."""

    def subscribe(self, *_args: object) -> None:
        pass

    def device(self, device: str, kind: str) -> str:
        return f"edgefleet/dev/{device}/{kind}"


def test_an_idle_sender_sleeps_until_woken_or_the_resend_check() -> None:
    sender = Sender(_Unused(), _Unused(), _Unused(), "pi-1", 100, 20)  # type: ignore[arg-type]
    assert sender.pause() == 0.5  # no drain limit: only an append, an ack or a connect wakes it
    now = time.monotonic()
    sender.bucket = TokenBucket(rate=10.0, burst=1.0, now=now)
    assert sender.bucket.take(1, now) == 1  # spent: the next record may go in 0.1 s
    assert 0.01 <= sender.pause() <= 0.1


class _ConfirmedAtOnce:
    """A session whose PUBACK and hub confirmation arrive before publish() returns, while
    another thread settles the sender (the agent's shutdown pumps while the sender thread may
    be in its last pump)."""

    def __init__(self) -> None:
        self.connected = threading.Event()
        self.connected.set()
        self.sender: Sender | None = None
        self.mid = 0

    def subscribe(self, *_args: object) -> None:
        pass

    def publish(self, topic: str, payload: bytes) -> int:
        assert self.sender is not None
        self.mid += 1
        self.sender.on_published(self.mid)
        batch = decode_batch(payload, "telemetry")
        confirm = Confirm(batch.device, spans_of(batch.records))
        self.sender.on_confirm(topic.replace("telemetry", "ack"), encode(confirm))
        other = threading.Thread(target=self.sender.idle)
        other.start()
        other.join(0.2)  # a guarded sender keeps it waiting until this pump is done
        return self.mid


def test_a_confirmation_that_overtakes_its_publish_is_not_lost(tmp_path: Path) -> None:
    buffer = Buffer(tmp_path / "buffer", boot=1)
    for n in range(3):
        buffer.append("telemetry", {"count": n})
    session = _ConfirmedAtOnce()
    sender = Sender(buffer, session, Topics("edgefleet"), "pi-1", 10, 4)  # type: ignore[arg-type]
    session.sender = sender
    assert sender.pump() == 1
    assert sender.idle(), "the hub confirmed the batch, yet it is still held"
    assert buffer.pending() == 0
    assert sender.sent == {"telemetry": 3}
    buffer.close()


# ---- the outbox: commands of a rollout step ------------------------------------------------
def test_a_steps_commands_take_one_transaction_with_counters_in_order(tmp_path: Path) -> None:
    """issue_commands grants and counts for many commands at once: counters above the floor and
    above each device's last, a device named twice gets two in order, every grant is kept."""
    store = Store(store_url(tmp_path))
    floor = 1000
    first = store.issue_commands(
        [("pi-1", [("iris/2.zip", False)]), ("pi-2", []), ("pi-1", [("d/1-2", True)])], floor, 1.0
    )
    assert first == [floor, floor, floor + 1]
    assert store.issue_commands([("pi-2", [])], 5, 2.0) == [floor + 1]  # never below its last
    assert store.granted("pi-1", "iris/2.zip", 0.0) is False
    assert store.granted("pi-1", "d/1-2", 0.0) is True
    assert store.granted("pi-2", "iris/2.zip", 0.0) is None


def test_commands_the_mqtt_client_refused_stay_queued_for_the_next_tick(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The outbox goes out in one go; when the client refuses one (its queue is full), what went
    out before it is marked sent and the rest stay unsent, to go on the next tick."""
    from cloud_hub.rollout.operations import init_hub
    from edge_agent.errors import TransportError

    home = tmp_path / "hub"
    init_hub(home)
    hub = Hub(home, BrokerAddress("127.0.0.1", 1))  # never started: no broker
    for n in range(5):
        hub.store.queue_command(f"pi-{n}", {"v": 1, "id": f"c-{n}", "kind": "rollback"})
    published: list[str] = []
    refusals = [3]  # the client refuses once, when three have gone

    def publish(topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> int:
        if refusals and len(published) == refusals[0]:
            refusals.pop()
            raise TransportError("message queue full")
        published.append(topic)
        return len(published)

    monkeypatch.setattr(hub.session, "publish", publish)
    hub.session.connected.set()  # as if linked: the outbox is not sent without a link
    hub._send_outbox()
    assert published == [f"edgefleet/dev/pi-{n}/cmd" for n in range(3)]
    assert [device for _, device, _ in hub.store.unsent_commands()] == ["pi-3", "pi-4"]
    hub._send_outbox()  # the next tick
    assert published[3:] == ["edgefleet/dev/pi-3/cmd", "edgefleet/dev/pi-4/cmd"]
    assert hub.store.unsent_commands() == []
