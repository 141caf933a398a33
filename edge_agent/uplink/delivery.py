"""Hub-confirmed delivery of buffered records: the window of batches in flight (pure) and the
`Sender` that drains the buffer through it.

A record leaves the device's buffer only when the hub says, on dev/{id}/ack, that it committed
it (`Confirm`). The broker's PUBACK says only that the broker has a batch (it paces the client's
in-flight window and tells a batch lost on the way from one still on its way): what the broker
keeps or loses for an offline hub (its queue limit, its state after a kill -9, a neighbour's
flood) can delay a record, never lose it. The rules, all in `Window`:

- at most `size` batches are unconfirmed at once; a new batch goes only when one leaves;
- a batch unconfirmed after its timeout is sent again, oldest first, one at a time: while the hub
  is away the device probes with its oldest batch instead of flooding a broker that drops it, and
  the timeout grows under a `Backoff` (equal jitter, so a fleet does not probe in lockstep);
- any confirmation resets the backoff (no batch then waits longer than the first timeout), and
  every batch the broker acknowledged *before* the confirmed one was sent, yet still
  unconfirmed, was lost on the way: all of them go again at once;
- the hub stores each (boot, seq) once, so a batch sent twice costs only the bytes.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from edge_agent.errors import MessageError
from edge_agent.mqtt.session import Backoff, MqttSession
from edge_agent.protocol.messages import Confirm, decode_confirm, encode_records
from edge_agent.protocol.topics import Topics
from edge_agent.uplink.buffer import Buffer, Pending, TokenBucket

Key = tuple[int, int]  # (boot, seq)


@dataclass
class Flight:
    """One batch sent and not yet confirmed by the hub."""

    kind: str
    ids: tuple[int, ...]  # the buffer's row ids
    unconfirmed: set[Key]
    born: int  # when it was first sent, as a count of sends: its records' age
    order: int  # when it was last (re)sent, on the same count
    due: float  # resend if still unconfirmed then
    mid: int | None  # the MQTT message id of its last send until the broker's PUBACK
    lost: bool = False  # a later batch was confirmed first: send again now


class Window:
    """Batches in flight and when each goes again (pure: the caller passes `now`)."""

    def __init__(self, size: int, timeout: float = 10.0, backoff: Backoff | None = None) -> None:
        self.size = size
        self.timeout = timeout  # a first send waits this long for the hub's confirmation
        self.backoff = backoff or Backoff(timeout, 6 * timeout, jitter="equal")
        self.flights: dict[int, Flight] = {}  # order -> flight
        self._sends = 0

    @property
    def full(self) -> bool:
        return len(self.flights) >= self.size

    def busy(self) -> set[int]:
        """Buffer row ids in flight (not to be taken again as new)."""
        return {rid for f in self.flights.values() for rid in f.ids}

    def sent(
        self, kind: str, ids: Iterable[int], keys: Iterable[Key], mid: int, now: float
    ) -> None:
        self._sends += 1
        order = self._sends
        due = now + self.timeout
        self.flights[order] = Flight(kind, tuple(ids), set(keys), order, order, due, mid)

    def resent(self, flight: Flight, mid: int) -> None:
        """`flight` went again (its due time was set when it was picked)."""
        del self.flights[flight.order]
        self._sends += 1
        flight.order, flight.mid, flight.lost = self._sends, mid, False
        self.flights[flight.order] = flight

    def published(self, mid: int) -> None:
        """The broker acknowledged message `mid` (it says nothing about the hub)."""
        for flight in self.flights.values():
            if flight.mid == mid:
                flight.mid = None

    def confirmed(self, confirm: Confirm, now: float) -> Counter[str]:
        """The hub committed these spans; returns the records confirmed, per kind. The hub is
        answering: the backoff starts again and no batch waits longer than the first timeout."""
        done: Counter[str] = Counter()
        latest = 0
        for flight in list(self.flights.values()):
            hit = {key for key in flight.unconfirmed if key in confirm}
            if not hit:
                continue
            flight.unconfirmed -= hit
            done[flight.kind] += len(hit)
            latest = max(latest, flight.order)
            if not flight.unconfirmed:
                del self.flights[flight.order]
        if latest:
            self.backoff.reset()
            for flight in self.flights.values():
                flight.due = min(flight.due, now + self.timeout)
                # acknowledged by the broker before the confirmed one was sent: lost since
                if flight.order < latest and flight.mid is None:
                    flight.lost = True
        return done

    def forget(self, flight: Flight) -> None:
        """Nothing of it is left to send (the buffer's cap dropped its records)."""
        self.flights.pop(flight.order, None)

    def to_resend(self, now: float) -> list[Flight]:
        """Flights to send again now, oldest first: every lost one, else the oldest timed out
        one alone (all others wait at least for its answer, under the same grown timeout)."""
        lost = [f for f in self.flights.values() if f.lost]
        if lost:
            return sorted(lost, key=lambda f: f.born)
        late = [f for f in self.flights.values() if f.due <= now]
        if not late:
            return []
        due = now + max(self.timeout, self.backoff.next_delay())
        for flight in self.flights.values():
            flight.due = max(flight.due, due)
        return [min(late, key=lambda f: f.born)]

    def next_due(self) -> float | None:
        return min((f.due for f in self.flights.values()), default=None)


class Sender:
    """Drains the buffer at QoS 1 through a `Window`; forgets records on the hub's `Confirm`."""

    def __init__(
        self,
        buffer: Buffer,
        session: MqttSession,
        topics: Topics,
        device_id: str,
        batch_size: int,
        max_inflight: int,
        drain_rate: float = 0.0,
        confirm_timeout: float = 10.0,
    ) -> None:
        self.buffer = buffer
        self.session = session
        self.topics = topics
        self.device_id = device_id
        self.batch_size = batch_size
        self.window = Window(max_inflight, confirm_timeout)
        # records a second at most (0: unlimited), a burst of one second's worth or one batch
        self.bucket = TokenBucket(drain_rate, max(drain_rate, batch_size), time.monotonic())
        self.sent: Counter[str] = Counter()  # records the hub confirmed, per kind
        self.resends = 0  # batches sent again (lost on the way, or unconfirmed in time)
        self.wake = threading.Event()
        self._published: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._confirms: queue.SimpleQueue[Confirm] = queue.SimpleQueue()
        # The sender thread pumps, and so does the agent's shutdown while that thread may still
        # be in its last pump: one lock keeps the window consistent between them.
        self._lock = threading.Lock()
        session.subscribe(topics.device(device_id, "ack"), self.on_confirm)

    # ---- the MQTT session's thread: queue and wake -------------------------------------
    def on_published(self, mid: int) -> None:
        self._published.put(mid)
        self.wake.set()

    def on_confirm(self, _topic: str, payload: bytes) -> None:
        """MessageError (counted as a bad message by the session) for anything but a
        confirmation of this device's records."""
        confirm = decode_confirm(payload)
        if confirm.device != self.device_id:
            raise MessageError(
                f"ack.device: expected {self.device_id!r} (this device), got {confirm.device!r}"
            )
        self._confirms.put(confirm)
        self.wake.set()

    # ---- the sender's thread ------------------------------------------------------------
    def _settle(self) -> None:
        while not self._published.empty():
            self.window.published(self._published.get())
        while not self._confirms.empty():
            confirm = self._confirms.get()
            self.buffer.confirm(confirm.spans)  # also what an earlier boot's sender sent
            self.sent.update(self.window.confirmed(confirm, time.monotonic()))

    def pump(self) -> int:
        """Send again what is due, then new batches while the window has room; returns how
        many messages went out."""
        with self._lock:
            self._settle()
            if not self.session.connected.is_set():
                return 0
            return self._resend() + self._send_new()

    def _resend(self) -> int:
        out = 0
        for flight in self.window.to_resend(time.monotonic()):
            pending = self.buffer.get(flight.ids)
            if not pending:
                self.window.forget(flight)
                continue
            self.window.resent(flight, self._publish(flight.kind, pending))
            self.resends += 1
            out += 1
        return out

    def _send_new(self) -> int:
        out = 0
        busy = self.window.busy()
        while not self.window.full:
            allowed = self.bucket.take(self.batch_size, time.monotonic())
            if not allowed:
                break
            pending = self.buffer.take(allowed, busy)
            self.bucket.refund(allowed - len(pending))  # only what goes is spent
            if not pending:
                break
            kind = pending[0].kind
            ids = [p.id for p in pending]
            keys = [p.key for p in pending]
            self.window.sent(kind, ids, keys, self._publish(kind, pending), time.monotonic())
            busy.update(ids)
            out += 1
        return out

    def _publish(self, kind: str, pending: list[Pending]) -> int:
        payload = encode_records(self.device_id, [p.wire() for p in pending])
        return self.session.publish(self.topics.device(self.device_id, kind), payload)

    def idle(self) -> bool:
        """Nothing buffered and nothing awaiting the hub's confirmation."""
        with self._lock:
            self._settle()
            return not self.window.flights and self.buffer.pending() == 0

    def pause(self) -> float:
        """How long to sleep unless woken (an append, a PUBACK, a confirmation or a connect
        sets `wake`): until the drain rate allows the next record or a batch is due again."""
        now = time.monotonic()
        waits = [0.5]
        if (due := self.bucket.wait(now)) > 0:
            waits.append(max(0.01, due))
        resend = self.window.next_due()
        if resend is not None and self.session.connected.is_set():
            waits.append(max(0.01, resend - now))
        return min(waits)

    def run(self, stop: threading.Event) -> None:
        """Pump until `stop`; the agent runs it under a guard (edge_agent.guard), so a pump
        that raises (a failing disk, a bug) is logged and the sending goes on."""
        while not stop.is_set():
            self.pump()
            self.wake.wait(self.pause())
            self.wake.clear()
