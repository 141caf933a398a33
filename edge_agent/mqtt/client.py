"""The MQTT connection's I/O: a socket, the packets of edge_agent.mqtt.packets, QoS 1 kept until
acknowledged. MqttSession (edge_agent.mqtt.session) decides when to connect and what the events
mean; this class only does what one connection needs.

Why not paho-mqtt: it imports ssl, hashlib, urllib.request, http.client and email, which load
OpenSSL into every device (about 9 MB resident and 30 ms of a cold start, for a link the agent
never encrypts itself), reads a socket a byte at a time for each packet's header, and, with an
in-flight window, walks its whole message list on every PUBACK (in a profile of a hub at 8,000
devices, paho took about half of the CPU per record). Here a read takes what the socket has and
cuts every packet out of it, and a PUBACK is a dictionary lookup: the hub's CPU per record fell
by about 40% (bench/hub_capacity_bench.py, side by side on one machine).

Threads: `loop`, `open` and `close` run on one thread, the network thread, which does all the
socket I/O and calls every callback. `publish`, `subscribe`, `unsubscribe`, `ack` and
`disconnect` may be called from any thread: they queue bytes under the lock and wake the
network thread's select() through a socket pair, which opens and closes with each link.

QoS 1 out: a message is kept from `publish` until its PUBACK, whatever happens to the link.
At most `max_inflight` are on the wire at once (0: no limit), the rest queue in order; after a
reconnect every message not acknowledged goes again (DUP set where it had gone before), in the
order published. QoS 0 out: sent on an established link, else dropped (`publish` says so).
QoS 1 in: `on_message` gets the packet identifier and the connection's generation, and the
PUBACK leaves when `ack(mid, generation)` is called; an ack for an earlier connection is dropped
(the broker sends that message again under a new identifier's meaning).
"""

from __future__ import annotations

import collections
import contextlib
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from edge_agent.mqtt import packets as p

CONNECT_TIMEOUT_S = 5.0
READ_BYTES = 256 * 1024


class Refused(Exception):
    """The client will not take this message (its queue is full)."""


@dataclass
class _Out:
    """A QoS 1 message until its PUBACK."""

    packet: bytes  # as first sent (DUP clear)
    sent: bool = False
    done: threading.Event | None = None


OnConnack = Callable[[bool, int], None]  # (session present, return code)
OnMessage = Callable[[str, bytes, int, bool, int, int], None]  # topic, payload, qos, retain,
# mid, generation


class Client:
    def __init__(
        self,
        client_id: str,
        *,
        clean_session: bool,
        username: str | None = None,
        password: str | None = None,
        will: tuple[str, bytes] | None = None,
        max_inflight: int = 100,
        on_connack: OnConnack,
        on_message: OnMessage,
        on_published: Callable[[int], None] | None = None,
        on_subscribed: Callable[[int, list[int]], None] | None = None,
        on_unsubscribed: Callable[[int], None] | None = None,
    ) -> None:
        self.client_id = client_id
        self.max_inflight = max_inflight
        self.max_queued = 0  # QoS 1 messages kept at once before `publish` refuses (0: ids)
        self._clean = clean_session
        self._username, self._password, self._will = username, password, will
        self._on_connack = on_connack
        self._on_message = on_message
        self._on_published = on_published
        self._on_subscribed = on_subscribed
        self._on_unsubscribed = on_unsubscribed
        self._lock = threading.Lock()
        self._wake: tuple[socket.socket, socket.socket] | None = None  # with the link only
        self._woken = False
        self._loop_thread = 0  # the network thread's ident: it needs no wake-up
        self._sock: socket.socket | None = None
        self._reader = p.Reader()
        self._keepalive = 0
        self._generation = 0
        self._connected = False  # a CONNACK accepted this connection
        self._closing = False  # DISCONNECT queued: close once it is written
        self._wbuf = bytearray()
        self._last_in = self._last_out = self._ping_at = 0.0
        self._mid = 0
        self._out: dict[int, _Out] = {}  # QoS 1 not yet acknowledged, in publish order
        self._waiting: collections.deque[int] = collections.deque()  # not on the wire yet
        self._on_wire: set[int] = set()  # QoS 1 sent on this link, not yet acknowledged
        self._other_ids: set[int] = set()  # SUBSCRIBE and UNSUBSCRIBE awaiting their ack

    # ---- any thread ------------------------------------------------------------------------
    def publish(
        self,
        topic: str,
        payload: bytes | str,
        qos: int = 1,
        retain: bool = False,
        done: threading.Event | None = None,
    ) -> int | None:
        """A QoS 1 message is kept and its packet identifier returned (`done` is set at its
        PUBACK); a QoS 0 one is sent at once and 0 returned, or dropped and None returned when
        no link is established. Refused when `max_queued` (or every identifier) is taken;
        ValueError for a topic that is not a topic name."""
        name = p.check_topic(topic)
        data = payload.encode() if isinstance(payload, str) else bytes(payload)
        if qos not in (0, 1):
            raise ValueError(f"MQTT QoS: expected 0 or 1, got {qos}")
        with self._lock:
            if qos == 0:
                if not self._connected or self._closing:
                    return None
                self._write(p.publish(name, data, 0, retain, 0))
                return 0
            limit = self.max_queued or p.MAX_ID
            if len(self._out) >= min(limit, p.MAX_ID - len(self._other_ids)):
                raise Refused(f"message queue full ({len(self._out)} messages kept)")
            mid = self._next_id()
            self._out[mid] = _Out(p.publish(name, data, 1, retain, mid), done=done)
            self._waiting.append(mid)
            if self._connected and not self._closing:
                self._send_waiting()
        return mid

    def subscribe(self, topic_filter: str, qos: int) -> int | None:
        """SUBSCRIBE on the established link; its identifier, or None without a link."""
        with self._lock:
            if not self._connected or self._closing:
                return None
            mid = self._next_id()
            self._other_ids.add(mid)
            self._write(p.subscribe(mid, topic_filter, qos))
            return mid

    def unsubscribe(self, topic_filters: list[str]) -> int | None:
        with self._lock:
            if not self._connected or self._closing:
                return None
            mid = self._next_id()
            self._other_ids.add(mid)
            self._write(p.unsubscribe(mid, topic_filters))
            return mid

    def ack(self, mid: int, generation: int) -> None:
        """PUBACK an incoming QoS 1 message, if its connection is still the current one."""
        with self._lock:
            if generation == self._generation and self._connected and not self._closing:
                self._write(p.puback(mid))

    def disconnect(self) -> None:
        """Queue DISCONNECT; the network thread closes the socket once it is written."""
        with self._lock:
            if self._sock is not None and not self._closing:
                self._write(p.DISCONNECT_PACKET)
                self._closing = True

    def kept(self) -> int:
        """QoS 1 messages kept until their PUBACK."""
        with self._lock:
            return len(self._out)

    # ---- the network thread ----------------------------------------------------------------
    def open(self, host: str, port: int, keepalive: int) -> None:
        """Connect and queue CONNECT (OSError if the connection cannot be opened). Messages
        kept from an earlier link wait for the CONNACK."""
        connect = p.connect(
            self.client_id, keepalive, self._clean, self._username, self._password, self._will
        )
        self.close()  # a link a failed loop left open is not left behind
        address = (_host_name(host), port)  # getaddrinfo takes bytes too (typeshed says str)
        sock = socket.create_connection(address, timeout=CONNECT_TIMEOUT_S)  # type: ignore[arg-type]
        with contextlib.suppress(OSError):  # small packets leave at once (no Nagle delay)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        wake = socket.socketpair()
        for end in wake:
            end.setblocking(False)
        now = time.monotonic()
        with self._lock:
            self._sock, self._wake, self._woken = sock, wake, False
            self._generation += 1
            self._reader = p.Reader()
            self._keepalive = keepalive
            self._connected = self._closing = False
            self._wbuf = bytearray(connect)
            self._last_in = self._last_out = now
            self._ping_at = 0.0
            self._on_wire.clear()
            self._other_ids.clear()
            self._waiting = collections.deque(self._out)  # all of them again, in order

    def close(self) -> None:
        """Close the link and its wake-up pair (nothing of a connection outlives it)."""
        with self._lock:
            sock, self._sock = self._sock, None
            wake, self._wake = self._wake, None
            self._connected = False
        for end in (sock, *(wake or ())):
            if end is not None:
                with contextlib.suppress(OSError):
                    end.close()

    def loop(self, timeout: float) -> str | None:
        """Wait up to `timeout` for the socket or a wake-up, then read, handle, write and keep
        the link alive. None while the link holds; else why it ended (the socket is closed)."""
        self._loop_thread = threading.get_ident()
        with self._lock:
            sock, wake = self._sock, self._wake
            writing = bool(self._wbuf)
            wait = 0.0 if self._woken else timeout
        if sock is None or wake is None:
            return "not connected"
        wake_r = wake[0]
        try:
            readable, _, _ = select.select([sock, wake_r], [sock] if writing else [], [], wait)
        except (OSError, ValueError) as exc:
            return self._lost(f"select failed: {exc}")
        if wake_r in readable or self._woken:
            with contextlib.suppress(OSError):
                wake_r.recv(4096)
            with self._lock:
                self._woken = False
        if sock in readable:
            why = self._read(sock)
            if why is not None:
                return self._lost(why)
        why = self._flush(sock)
        if why is not None:
            return self._lost(why)
        return self._keep_alive()

    def _read(self, sock: socket.socket) -> str | None:
        try:
            data = sock.recv(READ_BYTES)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as exc:
            return f"connection lost: {exc}"
        if not data:
            return "connection closed by the broker"
        self._last_in = time.monotonic()
        try:
            for kind, flags, body in self._reader.feed(data):
                why = self._handle(kind, flags, body)
                if why is not None:
                    return why
        except p.MalformedPacket as exc:
            return f"protocol error: {exc}"
        return None

    def _handle(self, kind: int, flags: int, body: bytes) -> str | None:
        if (kind == p.CONNACK) == self._connected:
            if self._connected:
                raise p.MalformedPacket("MQTT: a second CONNACK on an established link")
            raise p.MalformedPacket(f"MQTT: expected a CONNACK first, got a packet of type {kind}")
        if kind == p.PUBLISH:
            topic, qos, retain, mid, payload = p.decode_publish(flags, body)
            self._on_message(topic, payload, qos, retain, mid, self._generation)
        elif kind == p.PUBACK:
            self._acked(p.packet_id(body, "PUBACK"))
        elif kind == p.CONNACK:
            present, code = p.decode_connack(body)
            if code == 0:
                with self._lock:
                    self._connected = True
            self._on_connack(present, code)
            if code:
                why = p.CONNACK_CODES.get(code, f"return code {code}")
                return f"connection refused: {why}"
            with self._lock:
                if not self._closing:  # nothing may follow a DISCONNECT
                    self._send_waiting()
        elif kind == p.PINGRESP:
            self._ping_at = 0.0
        elif kind == p.SUBACK:
            mid, codes = p.decode_suback(body)
            with self._lock:
                self._other_ids.discard(mid)
            if self._on_subscribed is not None:
                self._on_subscribed(mid, codes)
        elif kind == p.UNSUBACK:
            mid = p.packet_id(body, "UNSUBACK")
            with self._lock:
                self._other_ids.discard(mid)
            if self._on_unsubscribed is not None:
                self._on_unsubscribed(mid)
        else:
            raise p.MalformedPacket(f"MQTT: a client expects no packet of type {kind}")
        return None

    def _acked(self, mid: int) -> None:
        with self._lock:
            out = self._out.pop(mid, None)
            if out is None:
                return  # a duplicate, or one a reconnect had already re-sent and counted
            self._on_wire.discard(mid)
            if not self._closing:
                self._send_waiting()
        if out.done is not None:
            out.done.set()
        if self._on_published is not None:
            self._on_published(mid)

    def _flush(self, sock: socket.socket) -> str | None:
        with self._lock:
            if self._wbuf:
                try:
                    sent = sock.send(self._wbuf)
                except (BlockingIOError, InterruptedError):
                    sent = 0
                except OSError as exc:
                    return f"connection lost: {exc}"
                if sent:
                    del self._wbuf[:sent]
                    self._last_out = time.monotonic()
            done = self._closing and not self._wbuf
        if done:
            self.close()
            return "disconnected"
        return None

    def _keep_alive(self) -> str | None:
        """PINGREQ after a keepalive's silence either way; a link that answers nothing for
        another keepalive (or a broker that sends no CONNACK within one) is lost."""
        if not self._keepalive or self._closing:
            return None
        now = time.monotonic()
        if not self._connected:
            if now - self._last_in >= self._keepalive:
                return self._lost(f"no CONNACK within the keepalive ({self._keepalive} s)")
            return None
        if self._ping_at:
            if now - self._ping_at >= self._keepalive:
                return self._lost(f"no answer to a ping within {self._keepalive} s")
        elif now - min(self._last_in, self._last_out) >= self._keepalive:
            self._ping_at = now
            with self._lock:
                self._write(p.PINGREQ_PACKET)
        return None

    def _lost(self, why: str) -> str:
        self.close()
        return why

    # ---- with the lock held ----------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        self._wbuf += data
        wake = self._wake
        if not self._woken and wake is not None and threading.get_ident() != self._loop_thread:
            self._woken = True
            with contextlib.suppress(OSError):  # full: a wake-up is already pending
                wake[1].send(b"\0")

    def _send_waiting(self) -> None:
        window = self.max_inflight
        while self._waiting and (not window or len(self._on_wire) < window):
            mid = self._waiting.popleft()
            out = self._out.get(mid)
            if out is None:
                continue  # acknowledged meanwhile
            packet = out.packet
            if out.sent:  # once on the wire before: DUP
                packet = bytes((packet[0] | 0x08,)) + packet[1:]
            out.sent = True
            self._on_wire.add(mid)
            self._write(packet)

    def _next_id(self) -> int:
        for _ in range(p.MAX_ID):
            self._mid = self._mid % p.MAX_ID + 1
            if self._mid not in self._out and self._mid not in self._other_ids:
                return self._mid
        raise Refused("message queue full (every packet identifier is taken)")


def _host_name(host: str) -> str | bytes:
    """The host as getaddrinfo takes it: an ASCII name (an address, or a name like most) as its
    bytes, which is what the IDNA codec would make of it; that codec (and unicodedata, about
    0.4 MB resident for the daemon's life) loads only for a name that needs it."""
    return host.encode("ascii") if host.isascii() else host
