"""MQTT 3.1.1 packets as bytes, both ways: pure functions and a stream reader, no sockets
(edge_agent.mqtt.client does the I/O).

Only what edgefleet's clients speak: CONNECT (will, credentials, clean or persistent session),
PUBLISH at QoS 0 and 1 in both directions, PUBACK, SUBSCRIBE, UNSUBSCRIBE, PINGREQ and
DISCONNECT out; CONNACK, PUBLISH, PUBACK, SUBACK, UNSUBACK and PINGRESP in. QoS 2 is never
asked for (every subscription is at QoS 1 or 0, so a broker never sends it), and a packet of a
kind a client must not receive is a protocol error (`MalformedPacket`).
"""

from __future__ import annotations

CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK = 8, 9, 10, 11
PINGREQ, PINGRESP, DISCONNECT = 12, 13, 14

PINGREQ_PACKET = b"\xc0\x00"
DISCONNECT_PACKET = b"\xe0\x00"
MAX_REMAINING = 268_435_455  # the largest remaining length four length bytes can say
MAX_ID = 65_535

CONNACK_CODES = {
    1: "unacceptable protocol version",
    2: "identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorised",
}


class MalformedPacket(ValueError):
    """What arrived is not MQTT 3.1.1 as a broker sends it to a client."""


def _length(n: int) -> bytes:
    if not 0 <= n <= MAX_REMAINING:
        raise ValueError(f"MQTT packet: expected at most {MAX_REMAINING} bytes, got {n}")
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        if n:
            out.append(digit | 0x80)
        else:
            out.append(digit)
            return bytes(out)


def _field(value: bytes, what: str) -> bytes:
    if len(value) > MAX_ID:
        raise ValueError(f"MQTT {what}: expected at most {MAX_ID} bytes, got {len(value)}")
    return len(value).to_bytes(2, "big") + value


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + _length(len(body)) + body


def check_topic(topic: str) -> bytes:
    """A topic name to publish on, encoded; ValueError for an empty one or one with a
    wildcard (those are filters, for subscribing)."""
    if not topic or "+" in topic or "#" in topic or "\0" in topic:
        raise ValueError(f"MQTT topic: expected a name without wildcards, got {topic!r}")
    name = topic.encode()
    if len(name) > MAX_ID:
        raise ValueError(f"MQTT topic: expected at most {MAX_ID} bytes, got {len(name)}")
    return name


def connect(
    client_id: str,
    keepalive: int,
    clean: bool,
    username: str | None = None,
    password: str | None = None,
    will: tuple[str, bytes] | None = None,
) -> bytes:
    """CONNECT; a will is sent at QoS 1, retained (the status topic's "offline")."""
    flags = 0x02 if clean else 0
    payload = _field(client_id.encode(), "client id")
    if will is not None:
        flags |= 0x04 | 0x08 | 0x20  # will, will QoS 1, will retain
        payload += _field(check_topic(will[0]), "will topic") + _field(will[1], "will message")
    if username is not None:
        flags |= 0x80
        payload += _field(username.encode(), "user name")
        if password is not None:
            flags |= 0x40
            payload += _field(password.encode(), "password")
    if not 0 <= keepalive <= MAX_ID:
        raise ValueError(f"MQTT keepalive: expected 0 to {MAX_ID} s, got {keepalive}")
    head = b"\x00\x04MQTT\x04" + bytes((flags,)) + keepalive.to_bytes(2, "big")
    return _packet(CONNECT << 4, head + payload)


def publish(
    topic: bytes, payload: bytes, qos: int, retain: bool, mid: int, dup: bool = False
) -> bytes:
    """PUBLISH of an encoded topic name (check_topic); `mid` only matters at QoS 1."""
    first = PUBLISH << 4 | qos << 1 | (0x01 if retain else 0) | (0x08 if dup else 0)
    head = len(topic).to_bytes(2, "big") + topic
    if qos:
        head += mid.to_bytes(2, "big")
    return bytes((first,)) + _length(len(head) + len(payload)) + head + payload


def puback(mid: int) -> bytes:
    return b"\x40\x02" + mid.to_bytes(2, "big")


def subscribe(mid: int, topic_filter: str, qos: int) -> bytes:
    body = mid.to_bytes(2, "big") + _field(topic_filter.encode(), "topic filter") + bytes((qos,))
    return _packet(SUBSCRIBE << 4 | 0x02, body)


def unsubscribe(mid: int, topic_filters: list[str]) -> bytes:
    body = mid.to_bytes(2, "big")
    for topic_filter in topic_filters:
        body += _field(topic_filter.encode(), "topic filter")
    return _packet(UNSUBSCRIBE << 4 | 0x02, body)


class Reader:
    """Cuts a byte stream into packets: `feed` takes what the socket gave and returns the
    packets it completed, each as (type, flags, body); the rest waits for more bytes."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, int, bytes]]:
        buf = self._buf
        buf += data
        out = []
        pos, end = 0, len(buf)
        while end - pos >= 2:
            length, shift, i, whole = 0, 0, pos + 1, False
            while i < end:
                digit = buf[i]
                i += 1
                length |= (digit & 0x7F) << shift
                if digit < 0x80:
                    whole = True
                    break
                shift += 7
                if shift > 21:
                    raise MalformedPacket("MQTT packet: a remaining length over four bytes")
            if not whole or end - i < length:
                break  # the length or the body is not all here yet
            first = buf[pos]
            out.append((first >> 4, first & 0x0F, bytes(buf[i : i + length])))
            pos = i + length
        if pos:
            del buf[:pos]
        return out


def packet_id(body: bytes, what: str) -> int:
    """The packet identifier that begins PUBACK, SUBACK and UNSUBACK."""
    if len(body) < 2:
        raise MalformedPacket(f"MQTT {what}: expected a packet identifier, got {len(body)} bytes")
    return body[0] << 8 | body[1]


def decode_connack(body: bytes) -> tuple[bool, int]:
    """(session present, return code)."""
    if len(body) != 2:
        raise MalformedPacket(f"MQTT CONNACK: expected 2 bytes, got {len(body)}")
    return bool(body[0] & 0x01), body[1]


def decode_publish(flags: int, body: bytes) -> tuple[str, int, bool, int, bytes]:
    """(topic, qos, retain, mid, payload) of an incoming PUBLISH; mid 0 at QoS 0."""
    qos = flags >> 1 & 0x03
    if qos > 1:
        raise MalformedPacket(f"MQTT PUBLISH: expected QoS 0 or 1 (nothing asks for 2), got {qos}")
    if len(body) < 2:
        raise MalformedPacket("MQTT PUBLISH: expected a topic, got no bytes")
    end = 2 + (body[0] << 8 | body[1])
    if len(body) < end + 2 * qos:
        raise MalformedPacket("MQTT PUBLISH: the topic runs past the packet")
    try:
        topic = body[2:end].decode()
    except UnicodeDecodeError as exc:
        raise MalformedPacket(f"MQTT PUBLISH: expected a UTF-8 topic: {exc}") from exc
    mid = 0
    if qos:
        mid = body[end] << 8 | body[end + 1]
        end += 2
    return topic, qos, bool(flags & 0x01), mid, body[end:]


def decode_suback(body: bytes) -> tuple[int, list[int]]:
    """(mid, granted QoS per filter; 0x80 where the broker refused)."""
    return packet_id(body, "SUBACK"), list(body[2:])


def matches(topic_filter: str, topic: str) -> bool:
    """Whether `topic` matches the subscription filter (with + and # wildcards; a topic that
    begins with $ is matched by no filter that begins with a wildcard)."""
    if topic_filter == topic:
        return True
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    parts = topic.split("/")
    for i, level in enumerate(topic_filter.split("/")):
        if level == "#":
            return True
        if i >= len(parts) or (level != "+" and level != parts[i]):
            return False
    return len(parts) == i + 1
