"""A light MQTT load generator: MQTT 3.1.1 packets encoded before the clock starts and written to
plain sockets, so that the generator's own CPU stays small beside the hub it loads.

A client library spends tens of microseconds of Python a QoS 1 message (building the packet,
tracking it in flight, matching its PUBACK); at 5,000 messages a second on a 2-core machine
that took 0.7 of a core from the hub it was measuring. Here a second's messages are packets
ready to send, joined per connection and tick, and the PUBACKs are only counted.

- `Publishers`: `count` connections; `packet(i, topic, payload)` encodes a QoS 1 PUBLISH with
  the i-th connection's next packet id, `send(i, data)` writes packets on it; one thread reads
  and counts the broker's PUBACKs on all of them.
- `Subscriber`: one connection subscribed at QoS 1; a thread hands each message's payload to a
  callback and acknowledges it.
"""

from __future__ import annotations

import selectors
import socket
import struct
import threading
from collections.abc import Callable, Iterator

CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK = 1, 2, 3, 4, 8, 9
KEEPALIVE_S = 600  # a level lasts well under this: no PINGREQ needed


def varint(n: int) -> bytes:
    """MQTT's remaining length: 7 bits a byte, low first."""
    out = bytearray()
    while True:
        n, digit = n >> 7, n & 0x7F
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + varint(len(body)) + body


def text(s: str) -> bytes:
    raw = s.encode()
    return struct.pack("!H", len(raw)) + raw


def connect_packet(client_id: str) -> bytes:
    # protocol name, level 4 (3.1.1), flags: clean session, keepalive; payload: the client id
    body = text("MQTT") + bytes([4, 0x02]) + struct.pack("!H", KEEPALIVE_S) + text(client_id)
    return packet(CONNECT << 4, body)


def publish_packet(topic: str, payload: bytes, packet_id: int) -> bytes:
    """A QoS 1 PUBLISH."""
    return packet(PUBLISH << 4 | 0x02, text(topic) + struct.pack("!H", packet_id) + payload)


def puback_packet(packet_id: int) -> bytes:
    return packet(PUBACK << 4, struct.pack("!H", packet_id))


def packets(buf: bytearray) -> Iterator[tuple[int, bytes]]:
    """The whole packets at the start of `buf` as (first byte, body), removed from it; a
    partial packet stays for the next read."""
    at = 0
    while True:
        length, shift, i = 0, 0, at + 1
        while i < len(buf):
            length |= (buf[i] & 0x7F) << shift
            shift += 7
            i += 1
            if not buf[i - 1] & 0x80:
                break
        else:
            break
        if i + length > len(buf):
            break
        yield buf[at], bytes(buf[i : i + length])
        at = i + length
    del buf[:at]


def connect(port: int, client_id: str) -> socket.socket:
    """A connected, CONNACKed socket (raises if the broker refuses)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(connect_packet(client_id))
    reply = b""
    while len(reply) < 4:
        chunk = sock.recv(4 - len(reply))
        if not chunk:
            raise ConnectionError(f"{client_id}: the broker closed the connection before CONNACK")
        reply += chunk
    if reply[0] >> 4 != CONNACK or reply[3] != 0:
        raise ConnectionError(f"{client_id}: expected CONNACK 0, got {reply.hex()}")
    sock.settimeout(None)
    return sock


class Publishers:
    """`count` publishing connections; a thread counts the PUBACKs they receive."""

    def __init__(self, port: int, count: int, prefix: str = "load") -> None:
        self.socks = [connect(port, f"{prefix}-{i}") for i in range(count)]
        self._packet_ids = [0] * count  # the last one each connection used
        self.acked = 0
        self._selector = selectors.DefaultSelector()
        for sock in self.socks:
            sock.setblocking(True)
            self._selector.register(sock, selectors.EVENT_READ, bytearray())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="load-pubacks", daemon=True)
        self._thread.start()

    def packet(self, i: int, topic: str, payload: bytes) -> bytes:
        """A QoS 1 PUBLISH for the i-th connection, with its next packet id (1 to 65535)."""
        packet_id = self._packet_ids[i] = self._packet_ids[i] % 65535 + 1
        return publish_packet(topic, payload, packet_id)

    def send(self, i: int, data: bytes) -> None:
        self.socks[i].sendall(data)

    def _read(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(0.2):
                data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                if not data:
                    self._selector.unregister(key.fileobj)
                    continue
                key.data.extend(data)
                self.acked += sum(1 for first, _ in packets(key.data) if first >> 4 == PUBACK)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for sock in self.socks:
            sock.close()


class Subscriber:
    """One connection subscribed to `topic` at QoS 1; `on_payload` gets each message's payload
    (on the subscriber's thread)."""

    def __init__(self, port: int, client_id: str, topic: str, on_payload: Callable[[bytes], None]):
        self.sock = connect(port, client_id)
        self.sock.sendall(packet(SUBSCRIBE << 4 | 0x02, struct.pack("!H", 1) + text(topic) + b"\1"))
        self._on_payload = on_payload
        self.subscribed = threading.Event()
        self._thread = threading.Thread(target=self._read, name="load-subscriber", daemon=True)
        self._thread.start()
        if not self.subscribed.wait(10):
            raise RuntimeError(f"{client_id}: no SUBACK for {topic} within 10 s")

    def _read(self) -> None:
        buf = bytearray()
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            buf.extend(data)
            acks = []
            for first, body in packets(buf):
                kind = first >> 4
                if kind == SUBACK:
                    self.subscribed.set()
                elif kind == PUBLISH:
                    end = 2 + struct.unpack_from("!H", body)[0]
                    if (first >> 1) & 0x03:  # QoS 1 or 2: a packet id follows the topic
                        acks.append(puback_packet(struct.unpack_from("!H", body, end)[0]))
                        end += 2
                    self._on_payload(body[end:])
            if acks:
                self.sock.sendall(b"".join(acks))

    def close(self) -> None:
        self.sock.close()
        self._thread.join(5)
