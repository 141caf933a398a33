"""The capacity bench's load generator (bench/mqtt_load.py) speaks MQTT a real broker takes:
every QoS 1 packet it sends is PUBACKed and delivered, counted by a paho subscriber, and its own
subscriber receives what paho publishes."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from cloud_hub.broker.local import RunningBroker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from mqtt_load import Publishers, Subscriber, packets, publish_packet, varint

WAIT_S = 10


def test_remaining_length_and_framing() -> None:
    assert [varint(n) for n in (0, 127, 128, 16383, 16384)] == [
        b"\x00",
        b"\x7f",
        b"\x80\x01",
        b"\xff\x7f",
        b"\x80\x80\x01",
    ]
    big = publish_packet("t", b"x" * 300, 7)
    buf = bytearray(big + big[:5])  # a whole packet and the start of the next
    got = list(packets(buf))
    assert got == [(0x32, big[3:])]  # 300 + 5 bytes of body: a 2-byte length
    assert bytes(buf) == big[:5]  # the partial one waits for the rest


def test_packets_reach_a_real_broker_and_back(broker: RunningBroker) -> None:
    received: list[bytes] = []
    done = threading.Event()
    sent = 120

    def on_message(_c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        received.append(msg.payload)
        if len(received) == sent:
            done.set()

    counter = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="count")
    counter.on_message = on_message
    subscribed = threading.Event()
    counter.on_subscribe = lambda *_: subscribed.set()
    counter.connect("127.0.0.1", broker.port)
    counter.subscribe("load/+", qos=1)
    counter.loop_start()
    pubs = Publishers(broker.port, 3)
    try:
        assert subscribed.wait(WAIT_S)
        for c in range(3):  # each connection's packets joined, as the generator sends a tick
            data = b"".join(
                publish_packet(f"load/{c}", f"{c}-{i}".encode(), i + 1) for i in range(sent // 3)
            )
            pubs.send(c, data)
        assert done.wait(WAIT_S), f"{len(received)} of {sent} delivered"
        assert sorted(received) == sorted(f"{c}-{i}".encode() for c in range(3) for i in range(40))
    finally:
        counter.loop_stop()
        counter.disconnect()
        pubs.close()
    assert pubs.acked == sent


def test_subscriber_receives_and_acknowledges(broker: RunningBroker) -> None:
    got: list[bytes] = []
    all_in = threading.Event()

    def on_payload(payload: bytes) -> None:
        got.append(payload)
        if len(got) == 50:
            all_in.set()

    sub = Subscriber(broker.port, "acks", "load/ack/+", on_payload)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="pub")
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        infos = [client.publish(f"load/ack/{i}", f"{i}".encode(), qos=1) for i in range(50)]
        for info in infos:
            info.wait_for_publish(WAIT_S)
        assert all_in.wait(WAIT_S), f"{len(got)} of 50"
        assert sorted(got, key=int) == [f"{i}".encode() for i in range(50)]
    finally:
        client.loop_stop()
        client.disconnect()
        sub.close()


def test_a_refused_connection_says_so(broker: RunningBroker) -> None:
    broker.stop()
    with pytest.raises(OSError):
        Publishers(broker.port, 1)
