"""Hub-confirmed delivery, the pure parts: the hub's confirmation on the wire (spans of
(boot, seq)), and the sender's window (what goes again, when, and what a confirmation frees).
No broker and no clock: `now` is passed in, the backoff's randomness is seeded."""

from __future__ import annotations

import contextlib
import random
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.errors import MessageError
from edge_agent.mqtt.session import Backoff
from edge_agent.protocol.messages import (
    MAX_SPANS,
    Confirm,
    Record,
    decode_confirm,
    dump_json,
    encode,
    spans_of,
)
from edge_agent.protocol.topics import Topics

# ---- the confirmation on the wire ----------------------------------------------------------


def _records(keys: list[tuple[int, int]]) -> list[Record]:
    return [Record(boot, seq, 0.0, {}) for boot, seq in keys]


def test_spans_are_runs_of_consecutive_seqs_per_boot() -> None:
    keys = [(1, 5), (1, 3), (1, 4), (1, 9), (2, 0), (2, 1), (1, 4)]
    assert spans_of(_records(keys)) == ((1, 3, 5), (1, 9, 9), (2, 0, 1))
    assert spans_of([]) == ()


@given(st.sets(st.tuples(st.integers(0, 3), st.integers(0, 60)), max_size=80))
def test_spans_name_exactly_the_records_and_survive_the_wire(keys: set[tuple[int, int]]) -> None:
    confirm = Confirm("pi-1", spans_of(_records(sorted(keys))))
    decoded = decode_confirm(encode(confirm))
    assert decoded == confirm
    named = {(b, s) for b, first, last in decoded.spans for s in range(first, last + 1)}
    assert named == keys
    assert all(key in decoded for key in keys)
    assert (9, 0) not in decoded


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"spans": []}, "ack: missing field 'device'"),
        ({"device": "pi 1", "spans": []}, "ack.device: expected 1-64 characters"),
        ({"device": "pi-1"}, "ack: missing field 'spans'"),
        ({"device": "pi-1", "spans": {"1": 2}}, "ack.spans: expected list, got dict"),
        ({"device": "pi-1", "spans": [[1, 2]]}, r"ack.spans\[0\]: expected \[boot, first seq"),
        ({"device": "pi-1", "spans": [[1, 2, True]]}, r"ack.spans\[0\]: expected \[boot"),
        ({"device": "pi-1", "spans": [[1, 2, "3"]]}, r"ack.spans\[0\]: expected \[boot"),
        ({"device": "pi-1", "spans": [[1, -1, 3]]}, r"ack.spans\[0\]: expected an integer from 0"),
        ({"device": "pi-1", "spans": [[1, 5, 3]]}, r"expected first seq <= last seq, got 5 > 3"),
        (
            {"device": "pi-1", "spans": [[1, 0, 0]] * (MAX_SPANS + 1)},
            f"expected at most {MAX_SPANS} spans, got {MAX_SPANS + 1}",
        ),
    ],
)
def test_a_wrong_confirmation_is_refused_saying_what_and_where(
    body: dict[str, object], message: str
) -> None:
    with pytest.raises(MessageError, match=message):
        decode_confirm(dump_json(body))


@given(st.binary(max_size=200))
def test_any_bytes_raise_only_message_error(payload: bytes) -> None:
    with contextlib.suppress(MessageError):
        decode_confirm(payload)


def test_the_ack_topic_is_the_hubs_to_send_and_the_devices_to_read() -> None:
    from cloud_hub.broker.dynsec import device_acls, hub_acls

    topics = Topics("edgefleet")
    assert topics.parse_device_topic("edgefleet/dev/pi-1/ack") == ("pi-1", "ack")
    device = {(a["acltype"], a["topic"]) for a in device_acls(topics, "pi-1")}
    hub = {(a["acltype"], a["topic"]) for a in hub_acls(topics)}
    assert ("subscribeLiteral", "edgefleet/dev/pi-1/ack") in device
    assert ("publishClientReceive", "edgefleet/dev/pi-1/ack") in device
    assert ("publishClientSend", "edgefleet/dev/+/ack") in hub
    # a device cannot confirm for the hub
    assert ("publishClientSend", "edgefleet/dev/pi-1/ack") not in device


# ---- the window ------------------------------------------------------------------------------

from edge_agent.uplink.delivery import Window  # noqa: E402


def _window(size: int = 3, timeout: float = 10.0) -> Window:
    return Window(size, timeout, Backoff(10.0, 60.0, jitter="equal", rng=random.Random(7)))


def _send(w: Window, n: int, now: float, mid: int) -> list[tuple[int, int]]:
    """A batch of one record (boot 1, seq n) in buffer row n."""
    w.sent("telemetry", [n], [(1, n)], mid, now)
    return [(1, n)]


def _confirm(*seqs: int) -> Confirm:
    return Confirm("pi-1", spans_of(_records([(1, s) for s in seqs])))


def test_the_window_holds_what_the_hub_has_not_confirmed_even_after_the_pubacks() -> None:
    w = _window(size=2)
    _send(w, 0, 0.0, mid=1)
    _send(w, 1, 0.0, mid=2)
    assert w.full and w.busy() == {0, 1}
    w.published(1)
    w.published(2)  # the broker has both: that frees nothing
    assert w.full
    assert w.confirmed(_confirm(0), 0.0) == {"telemetry": 1}
    assert not w.full and w.busy() == {1}


def test_unconfirmed_batches_go_again_oldest_first_one_at_a_time_under_a_growing_timeout() -> None:
    """The hub is away: the device probes with its oldest batch, not the whole window, and
    waits longer each time (never less than the first timeout)."""
    w = _window(size=3, timeout=10.0)
    for n in range(3):
        _send(w, n, float(n), mid=n + 1)
        w.published(n + 1)
    assert w.to_resend(9.9) == []
    now, waits = 10.0, []
    for _ in range(6):
        (probe,) = w.to_resend(now)
        assert probe.ids == (0,), "the oldest batch probes"
        w.resent(probe, mid=99)
        w.published(99)
        due = w.next_due()
        assert due is not None and due > now
        assert all(f.due >= due for f in w.flights.values()), "the others wait for its answer"
        waits.append(due - now)
        now = due
    assert all(10.0 <= d <= 60.0 for d in waits)
    assert waits[-1] >= 30.0, f"the timeout grows under the backoff: {waits}"


def test_a_confirmation_resets_the_backoff_and_resends_what_was_lost_before_it() -> None:
    """Batches 0 and 1 were acknowledged by a broker that then lost them (kill -9, a full queue
    for the offline hub); batch 2 reached the hub. All still unconfirmed before it go at once."""
    w = _window(size=4)
    for n in range(4):
        _send(w, n, 0.0, mid=n + 1)
    for mid in (1, 2, 3):
        w.published(mid)  # batch 3 has no PUBACK yet: it is on its way, not lost
    for _ in range(3):
        w.backoff.next_delay()
    assert w.confirmed(_confirm(2), 0.0) == {"telemetry": 1}
    assert w.backoff.attempt == 0
    lost = w.to_resend(0.1)
    assert [f.ids for f in lost] == [(0,), (1,)]
    for flight in lost:
        w.resent(flight, mid=50 + flight.ids[0])
    assert w.to_resend(0.2) == []
    assert w.confirmed(_confirm(0, 1, 3), 0.0) == {"telemetry": 3}
    assert not w.flights


def test_a_partial_confirmation_keeps_the_rest_of_the_batch_in_flight() -> None:
    w = _window()
    w.sent("drift", [10, 11, 12], [(1, 4), (1, 5), (2, 0)], mid=1, now=0.0)
    assert w.confirmed(_confirm(4, 5), 0.0) == {"drift": 2}
    assert w.busy() == {10, 11, 12}
    assert w.confirmed(Confirm("pi-1", ((2, 0, 0),)), 0.0) == {"drift": 1}
    assert w.confirmed(Confirm("pi-1", ((2, 0, 0),)), 0.0) == {}  # confirmed twice: nothing more
    assert not w.flights


def test_a_flight_whose_records_the_cap_dropped_is_forgotten() -> None:
    w = _window()
    _send(w, 0, 0.0, mid=1)
    (flight,) = w.to_resend(10.0)
    w.forget(flight)
    assert not w.flights and w.next_due() is None


def test_the_sender_refuses_a_confirmation_for_another_device(tmp_path: Path) -> None:
    from edge_agent.uplink.buffer import Buffer
    from edge_agent.uplink.delivery import Sender

    class Session:
        def subscribe(self, *_args: object) -> None:
            pass

    buffer = Buffer(tmp_path / "b", boot=1)
    record = buffer.append("telemetry", {})
    sender = Sender(buffer, Session(), Topics("edgefleet"), "pi-1", 10, 4)  # type: ignore[arg-type]
    foreign = encode(Confirm("pi-2", spans_of([record])))
    with pytest.raises(MessageError, match=r"ack.device: expected 'pi-1' .*, got 'pi-2'"):
        sender.on_confirm("edgefleet/dev/pi-1/ack", foreign)
    assert buffer.pending() == 1
    buffer.close()


def test_a_confirmation_brings_every_late_batch_within_the_first_timeout() -> None:
    """After a long outage the timeouts grew; the hub's return resets them."""
    w = _window(size=3, timeout=10.0)
    for n in range(3):
        _send(w, n, 0.0, mid=n + 1)
    for flight in w.flights.values():
        flight.due = 500.0  # where a long outage's backoff had pushed them
    w.confirmed(_confirm(2), 100.0)
    assert w.next_due() == 110.0


def test_an_idle_sender_spends_no_tokens_and_sleeps_the_idle_wait(tmp_path: Path) -> None:
    """The drain rate's tokens are spent on records sent, not on asking an empty buffer: a
    sender that spent them on every pump found its bucket empty and woke every 10 ms
    (100 records a second) for as long as it was idle, 60,000 pumps in a 100-device rollout."""
    import threading

    from edge_agent.uplink.buffer import Buffer
    from edge_agent.uplink.delivery import Sender

    class Session:
        def __init__(self) -> None:
            self.connected = threading.Event()
            self.published: list[bytes] = []

        def subscribe(self, *_args: object) -> None:
            pass

        def publish(self, _topic: str, payload: bytes) -> int:
            self.published.append(payload)
            return len(self.published)

    session = Session()
    session.connected.set()
    buffer = Buffer(tmp_path / "b", boot=1)
    for n in range(3):
        buffer.append("events", {"n": n})
    sender = Sender(buffer, session, Topics("edgefleet"), "pi-1", 10, 4, drain_rate=100.0)  # type: ignore[arg-type]
    assert sender.pump() == 1  # the three records, in one batch
    for _ in range(30):  # idle: nothing new to send
        assert sender.pump() == 0
    assert len(session.published) == 1
    assert sender.pause() == 0.5  # the idle wait: no token is due, none was spent
    buffer.close()
