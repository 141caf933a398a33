"""The MQTT client under MqttSession: packets as MQTT 3.1.1 lays them out, cut from a stream
however it is split; a broker that sends garbage costs the link, not the daemon; QoS 1 kept
until acknowledged through a broker that was down, in order and within the window; an ack for
an earlier connection is never sent on the next one.

A scripted peer (a listening socket that reads and writes packets by hand) stands in for the
broker where the test needs the broker to misbehave; mosquitto and a paho subscriber, neither
of them this code, count what arrives everywhere else."""

from __future__ import annotations

import os
import queue
import re
import socket
import threading
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cloud_hub.broker.local import RunningBroker, free_port
from edge_agent.errors import TransportError
from edge_agent.mqtt import packets as p
from edge_agent.mqtt.client import Client
from edge_agent.mqtt.session import Backoff, BrokerAddress, MqttSession

WAIT_S = 10.0


# ---- packets ---------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [0, 1, 121, 122, 16_380, 16_381, 2_097_148, 2_097_149])
def test_a_publish_is_cut_from_the_stream_however_it_is_split(size: int) -> None:
    """Remaining lengths on each side of the 1-, 2- and 3-byte boundaries, fed in pieces."""
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    packet = p.publish(b"a/b", payload, 1, True, 513)
    reader = p.Reader()
    got = []
    for start in range(0, len(packet), 7919):
        got += reader.feed(packet[start : start + 7919])
    assert len(got) == 1
    kind, flags, body = got[0]
    assert kind == p.PUBLISH
    assert p.decode_publish(flags, body) == ("a/b", 1, True, 513, payload)


def test_packets_one_byte_at_a_time_and_several_in_one_read() -> None:
    stream = p.puback(1) + p.PINGREQ_PACKET + p.publish(b"t", b"x", 0, False, 0) + p.puback(65535)
    reader = p.Reader()
    one_by_one = [pkt for i in range(len(stream)) for pkt in reader.feed(stream[i : i + 1])]
    assert one_by_one == p.Reader().feed(stream)
    assert [(k, p.packet_id(b, "PUBACK")) for k, _, b in one_by_one if k == p.PUBACK] == [
        (p.PUBACK, 1),
        (p.PUBACK, 65535),
    ]


def test_connect_as_the_standard_lays_it_out() -> None:
    packet = p.connect("pi-1", 30, False, "pi-1", "pw", ("edgefleet/dev/pi-1/status", b"off"))
    ((kind, _flags, body),) = p.Reader().feed(packet)
    assert kind == p.CONNECT
    assert body[:7] == b"\x00\x04MQTT\x04"  # protocol name and level 4 (3.1.1)
    assert body[7] == 0x80 | 0x40 | 0x20 | 0x08 | 0x04  # user, password, will retain/QoS 1/flag
    assert body[8:10] == (30).to_bytes(2, "big")
    assert body[10:].startswith(b"\x00\x04pi-1\x00\x19edgefleet/dev/pi-1/status\x00\x03off")
    ((_, _, bare),) = p.Reader().feed(p.connect("c", 5, True))
    assert bare == b"\x00\x04MQTT\x04\x02\x00\x05\x00\x01c"  # clean session, nothing else


@pytest.mark.parametrize(
    "stream, expected",
    [
        (b"\x30\xff\xff\xff\xff\x01", "remaining length over four bytes"),
    ],
)
def test_a_length_over_four_bytes_is_malformed(stream: bytes, expected: str) -> None:
    with pytest.raises(p.MalformedPacket, match=re.escape(expected)):
        p.Reader().feed(stream)


@pytest.mark.parametrize(
    "flags, body, expected",
    [
        (0x04, b"\x00\x01t\x00\x01x", "expected QoS 0 or 1 (nothing asks for 2), got 2"),
        (0x00, b"", "expected a topic, got no bytes"),
        (0x00, b"\x00\x09abc", "the topic runs past the packet"),
        (0x02, b"\x00\x01t\x00", "the topic runs past the packet"),  # QoS 1 without its id
        (0x00, b"\x00\x02\xff\xfe", "expected a UTF-8 topic"),
    ],
)
def test_a_malformed_publish_says_what_was_expected(flags: int, body: bytes, expected: str) -> None:
    with pytest.raises(p.MalformedPacket, match=re.escape(expected)):
        p.decode_publish(flags, body)


def test_other_malformed_packets() -> None:
    with pytest.raises(p.MalformedPacket, match="CONNACK: expected 2 bytes, got 3"):
        p.decode_connack(b"\x00\x00\x00")
    with pytest.raises(p.MalformedPacket, match="PUBACK: expected a packet identifier"):
        p.packet_id(b"\x01", "PUBACK")


@pytest.mark.parametrize("topic", ["", "a/+", "a/#", "#", "a\0b"])
def test_a_topic_name_with_a_wildcard_is_refused(topic: str) -> None:
    with pytest.raises(ValueError, match="expected a name without wildcards"):
        p.check_topic(topic)


@pytest.mark.parametrize(
    "topic_filter, topic, expected",
    [
        ("a/b", "a/b", True),
        ("a/+", "a/b", True),
        ("a/+", "a/b/c", False),
        ("a/#", "a", True),
        ("a/#", "a/b/c", True),
        ("+/+/ack", "edgefleet/pi-1/ack", True),
        ("edgefleet/dev/+/telemetry", "edgefleet/dev/pi-1/telemetry", True),
        ("edgefleet/dev/+/telemetry", "edgefleet/dev/pi-1/drift", False),
        ("a/b", "a", False),
        ("a", "a/b", False),
        ("#", "$SYS/broker/uptime", False),
        ("+/broker/uptime", "$SYS/broker/uptime", False),
        ("$SYS/#", "$SYS/broker/uptime", True),
        ("a//c", "a//c", True),
        ("a/+/c", "a//c", True),
    ],
)
def test_topic_filters_match_as_the_standard_says(
    topic_filter: str, topic: str, expected: bool
) -> None:
    assert p.matches(topic_filter, topic) is expected


# ---- a scripted broker -----------------------------------------------------------------------
class Peer:
    """A listening socket that plays the broker by hand, one connection at a time."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.conn: socket.socket | None = None
        self.reader = p.Reader()
        self.pending: list[tuple[int, int, bytes]] = []

    def accept(self) -> socket.socket:
        self.listener.settimeout(WAIT_S)
        self.conn, _ = self.listener.accept()
        self.conn.settimeout(WAIT_S)
        self.reader = p.Reader()
        self.pending = []
        return self.conn

    def next_packet(self) -> tuple[int, int, bytes]:
        assert self.conn is not None
        while not self.pending:
            data = self.conn.recv(65536)
            assert data, "the client closed the connection"
            self.pending += self.reader.feed(data)
        return self.pending.pop(0)

    def nothing_more(self, within: float) -> bool:
        """True if the client sends nothing more (and keeps the link) for `within` seconds:
        no packet already read and not yet taken, and no byte in that time."""
        assert self.conn is not None
        if self.pending:
            return False
        self.conn.settimeout(within)
        try:
            data = self.conn.recv(65536)
        except TimeoutError:
            return True
        finally:
            self.conn.settimeout(WAIT_S)
        self.pending += self.reader.feed(data)
        return False

    def send(self, data: bytes) -> None:
        assert self.conn is not None
        self.conn.sendall(data)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.listener.close()


@pytest.fixture
def peer() -> Iterator[Peer]:
    made = Peer()
    yield made
    made.close()


def fixed(delay: float) -> Backoff:
    return Backoff(initial=delay, maximum=delay, jitter="none")


def test_garbage_from_the_broker_costs_the_link_not_the_session(peer: Peer) -> None:
    """A packet no broker sends to a client (a CONNECT) and a length over four bytes: each
    ends that connection with a protocol error, said, and the session connects again."""
    lost: queue.Queue[TransportError] = queue.Queue()
    session = MqttSession(
        "g-1", BrokerAddress(port=peer.port), backoff=fixed(0.05), on_disconnect=lost.put
    )
    session.start()
    try:
        for garbage, said in [
            (p.connect("x", 5, True), "a client expects no packet of type 1"),
            (b"\x30\xff\xff\xff\xff\x01", "remaining length over four bytes"),
        ]:
            peer.accept()
            assert peer.next_packet()[0] == p.CONNECT
            peer.send(b"\x20\x02\x00\x00")  # CONNACK, accepted
            assert session.wait_connected(WAIT_S)
            peer.send(garbage)
            error = lost.get(timeout=WAIT_S)
            assert "protocol error" in str(error) and said in str(error), error
        peer.accept()  # and it is back once more
        assert peer.next_packet()[0] == p.CONNECT
    finally:
        session.stop()


def test_small_packets_leave_at_once(peer: Peer) -> None:
    """Nagle's algorithm holds a small write until the previous one is acknowledged, and the
    peer delays that ACK by up to 40 ms: a chunked transfer would crawl at a few rounds a
    second whatever the bandwidth."""
    client = Client("n-1", clean_session=True, on_connack=lambda *_: None, on_message=_nothing)
    client.open("127.0.0.1", peer.port, 5)
    try:
        assert client._sock is not None
        assert client._sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        client.close()


def test_an_ack_for_an_earlier_connection_is_not_sent_on_the_next(peer: Peer) -> None:
    """The broker sends a QoS 1 message again after a reconnect, and a packet identifier means
    a message only within one connection: the late ack of the first delivery must not
    acknowledge whatever carries that identifier on the second."""
    delivered: queue.Queue[tuple[bytes, int, int]] = queue.Queue()

    def on_message(
        _topic: str, payload: bytes, _qos: int, _retain: bool, mid: int, generation: int
    ) -> None:
        delivered.put((payload, mid, generation))

    client = Client("a-1", clean_session=False, on_connack=lambda *_: None, on_message=on_message)
    stop = threading.Event()
    thread = threading.Thread(target=_drive, args=(client, peer.port, stop), daemon=True)
    thread.start()
    try:
        peer.accept()
        assert peer.next_packet()[0] == p.CONNECT
        peer.send(b"\x20\x02\x00\x00" + p.publish(b"dev/cmd", b"first", 1, False, 7))
        _, mid, first_link = delivered.get(timeout=WAIT_S)
        assert mid == 7
        peer.conn.close()  # type: ignore[union-attr]  # the link drops before the ack
        peer.accept()
        assert peer.next_packet()[0] == p.CONNECT
        peer.send(b"\x20\x02\x01\x00" + p.publish(b"dev/cmd", b"other", 1, False, 7))
        _, _, second_link = delivered.get(timeout=WAIT_S)
        assert second_link != first_link
        client.ack(7, first_link)  # the late ack: dropped
        assert peer.nothing_more(0.3)
        client.ack(7, second_link)
        kind, _, body = peer.next_packet()
        assert (kind, p.packet_id(body, "PUBACK")) == (p.PUBACK, 7)
    finally:
        stop.set()
        thread.join(WAIT_S)
        client.close()


def _drive(client: Client, port: int, stop: threading.Event) -> None:
    """A bare network thread: connect, loop until the link drops, again until stopped."""
    while not stop.is_set():
        try:
            client.open("127.0.0.1", port, 30)
        except OSError:
            return
        while not stop.is_set() and client.loop(0.05) is None:
            pass


def _nothing(*_args: object) -> None:
    pass


# ---- with mosquitto --------------------------------------------------------------------------
@pytest.mark.broker
def test_qos1_kept_while_not_connected_arrives_in_order_within_the_window(
    broker: RunningBroker,
) -> None:
    """200 messages published before the session has a link, a window of 5: once it connects,
    a paho subscriber gets every one, once, in the order published, and the client keeps none
    of them once their PUBACKs are in."""
    n = 200
    got: queue.Queue[bytes] = queue.Queue()
    sub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    sub.on_message = lambda _c, _u, msg: got.put(msg.payload)
    subscribed = threading.Event()
    sub.on_subscribe = lambda *_: subscribed.set()
    sub.connect(broker.host, broker.port)
    sub.subscribe("probe/#", qos=1)
    sub.loop_start()
    acked: list[int] = []
    all_acked = threading.Event()

    def on_published(mid: int) -> None:
        acked.append(mid)
        if len(acked) == n:
            all_acked.set()

    session = MqttSession(
        "w-1", BrokerAddress(broker.host, broker.port), max_inflight=5, on_published=on_published
    )
    try:
        assert subscribed.wait(WAIT_S)
        mids = [session.publish(f"probe/{i % 3}", f"{i}".encode()) for i in range(n)]
        assert len(set(mids)) == n and session._client.kept() == n
        session.start()
        received = [got.get(timeout=WAIT_S) for _ in range(n)]
        assert received == [f"{i}".encode() for i in range(n)]
        assert all_acked.wait(WAIT_S) and session._client.kept() == 0
        assert sorted(acked) == sorted(mids)
        with pytest.raises(queue.Empty):
            got.get(timeout=0.3)  # and nothing twice
    finally:
        session.stop()
        sub.loop_stop()
        sub.disconnect()


# ---- what the review found -------------------------------------------------------------------
def test_a_qos1_message_is_acknowledged_once(peer: Peer) -> None:
    """The handler's wrapper and the session's automatic ack both ack: one PUBACK leaves. A
    second one could acknowledge another message a broker had given the freed id to."""
    got: queue.Queue[bytes] = queue.Queue()
    session = MqttSession("o-1", BrokerAddress(port=peer.port), backoff=fixed(0.05))
    session.subscribe("dev/o-1/cmd", lambda _t, payload: got.put(payload))
    session.start()
    try:
        peer.accept()
        assert peer.next_packet()[0] == p.CONNECT
        peer.send(b"\x20\x02\x00\x00")
        kind, _, body = peer.next_packet()
        assert kind == p.SUBSCRIBE
        peer.send(b"\x90\x03" + body[:2] + b"\x01")  # SUBACK, QoS 1 granted
        peer.send(p.publish(b"dev/o-1/cmd", b"deploy", 1, False, 42))
        assert got.get(timeout=WAIT_S) == b"deploy"
        kind, _, body = peer.next_packet()
        assert (kind, p.packet_id(body, "PUBACK")) == (p.PUBACK, 42)
        assert peer.nothing_more(0.3)
    finally:
        session.stop()


def test_nothing_follows_a_disconnect(peer: Peer) -> None:
    """A stop that lands during the handshake: the CONNACK read after DISCONNECT was queued
    sends none of the messages waiting for it (they stay kept for the next link)."""
    client = Client("d-1", clean_session=False, on_connack=lambda *_: None, on_message=_nothing)
    mid = client.publish("dev/d-1/telemetry", b"record")
    client.open("127.0.0.1", peer.port, 30)
    try:
        peer.accept()
        while client.loop(0.05) is None and not peer.pending:  # until CONNECT is on its way
            peer.pending += peer.reader.feed(peer.conn.recv(65536))  # type: ignore[union-attr]
        assert peer.next_packet()[0] == p.CONNECT
        peer.send(b"\x20\x02\x00\x00")
        client.disconnect()
        why = None
        for _ in range(100):
            why = client.loop(0.05)
            if why is not None:
                break
        assert why == "disconnected"
        assert peer.next_packet()[0] == p.DISCONNECT
        assert peer.pending == []  # nothing after it in what arrived with it,
        assert peer.conn.recv(65536) == b""  # type: ignore[union-attr]  # nor later: EOF
        assert client.kept() == 1 and mid == 1
    finally:
        client.close()


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_connections_leave_no_file_descriptor_behind(peer: Peer) -> None:
    """A source restarted, a session stopped, a link lost: each connection's socket and its
    wake-up pair close with it (select() takes descriptors below 1024 only)."""
    client = Client("f-1", clean_session=True, on_connack=lambda *_: None, on_message=_nothing)
    before = _open_fds()
    for _ in range(20):
        client.open("127.0.0.1", peer.port, 30)
        peer.accept()
        peer.conn.close()  # type: ignore[union-attr]  # the broker hangs up
        while client.loop(0.05) is None:
            pass
    for _ in range(5):
        session = MqttSession("f-2", BrokerAddress(port=free_port()), backoff=fixed(0.01))
        session.start()
        session.stop()
    assert _open_fds() == before


@pytest.mark.parametrize(
    "first, then, said",
    [
        (p.publish(b"dev/x/cmd", b"early", 1, False, 3), b"", "expected a CONNACK first"),
        (b"\x20\x02\x00\x00", b"\x20\x02\x00\x00", "a second CONNACK on an established link"),
    ],
)
def test_packets_out_of_order_cost_the_link(
    peer: Peer, first: bytes, then: bytes, said: str
) -> None:
    failures: queue.Queue[TransportError] = queue.Queue()
    lost: queue.Queue[TransportError] = queue.Queue()
    session = MqttSession(
        "x-1",
        BrokerAddress(port=peer.port),
        backoff=fixed(5.0),
        on_connect_failed=lambda error, _refused: failures.put(error),
        on_disconnect=lost.put,
    )
    session.start()
    try:
        peer.accept()
        assert peer.next_packet()[0] == p.CONNECT
        peer.send(first + then)
        error = (lost if then else failures).get(timeout=WAIT_S)
        assert "protocol error" in str(error) and said in str(error), error
    finally:
        session.stop()


def test_a_topic_name_over_65535_bytes_is_refused() -> None:
    with pytest.raises(ValueError, match="expected at most 65535 bytes, got 65536"):
        p.check_topic("t" * 65_536)
