"""Input sources: serial through real pseudo-terminals, MQTT against a real mosquitto, file,
stdin."""

from __future__ import annotations

import math
import os
import queue
import shutil
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cloud_hub.broker.local import RunningBroker
from edge_agent.config import load_config
from edge_agent.errors import ConfigError, SensorLineError, TransportError
from edge_agent.mqtt.options import reconnect_backoff
from edge_agent.sources.base import LineSplitter, Source
from edge_agent.sources.factory import input_from_config, source_from_config
from edge_agent.sources.file import FileSource
from edge_agent.sources.line_parser import LineParser, RejectCounter
from edge_agent.sources.mqtt import MqttSource
from edge_agent.sources.serial_port import SerialSource
from tests.support.serial import WAIT_S, Socat

NAMES = ["alcohol", "malic_acid", "ash", "magnesium"]
BOUNDS = [(11.0, 15.0), (0.7, 5.8), (1.3, 3.3), (70.0, 162.0)]


def reason_of(parser: LineParser, raw: bytes) -> SensorLineError:
    with pytest.raises(SensorLineError) as info:
        parser.parse(raw)
    return info.value


# -- LineSplitter --------------------------------------------------------------------------------


def test_splitter_joins_chunks_and_drops_terminators() -> None:
    splitter = LineSplitter()
    assert splitter.feed(b"1,2") == []
    assert splitter.feed(b",3\r\n4,5") == [b"1,2,3"]
    assert splitter.feed(b"\n\n6\n") == [b"4,5", b"", b"6"]
    assert splitter.feed(b"tail") == []
    assert splitter.flush() == b"tail"
    assert splitter.flush() is None


def test_splitter_cuts_oversized_lines_so_the_parser_rejects_them() -> None:
    splitter = LineSplitter(max_line_bytes=8)
    lines = splitter.feed(b"x" * 20)  # no newline yet: cut, then skip to the newline
    assert lines == [b"x" * 9]
    assert splitter.feed(b"yyyy\nok\n" + b"z" * 12 + b"\nend\n") == [b"ok", b"z" * 9, b"end"]
    assert splitter.oversize == 2
    assert reason_of(LineParser(["a"], max_line_bytes=8), lines[0]).reason == "garbage"


# -- serial through pseudo-terminals -------------------------------------------------------------


class Recorder:
    """Collects lines and status events from a source's thread."""

    def __init__(self) -> None:
        self.lines: queue.Queue[bytes] = queue.Queue()
        self.events: queue.Queue[tuple[str, TransportError | None]] = queue.Queue()

    def on_line(self, line: bytes) -> None:
        self.lines.put(line)

    def on_status(self, event: str, error: TransportError | None) -> None:
        self.events.put((event, error))

    def wait_event(self, wanted: str) -> TransportError | None:
        deadline = time.monotonic() + WAIT_S
        while True:
            event, error = self.events.get(timeout=max(0.0, deadline - time.monotonic()))
            if event == wanted:
                return error

    def next_line(self) -> bytes:
        return self.lines.get(timeout=WAIT_S)


@pytest.fixture
def pty_pair() -> Iterator[tuple[int, str]]:
    master, slave = os.openpty()
    try:
        yield master, os.ttyname(slave)
    finally:
        os.close(master)
        os.close(slave)


def test_serial_source_reads_lines_from_a_pty(pty_pair: tuple[int, str]) -> None:
    master, slave_name = pty_pair
    rec = Recorder()
    src = SerialSource(slave_name, reopen_delay=0.05, on_status=rec.on_status)
    assert isinstance(src, Source)
    src.start(rec.on_line)
    try:
        rec.wait_event("opened")
        assert src.is_open and src.open_error is None
        os.write(master, b"13.2,1.78,2.14,112\r\npartial")
        assert rec.next_line() == b"13.2,1.78,2.14,112"
        os.write(master, b" line\n\xff\xfe\x00\n")
        assert rec.next_line() == b"partial line"
        assert rec.next_line() == b"\xff\xfe\x00"  # delivered as is: rejecting is the parser's job
    finally:
        began = time.monotonic()
        src.stop()
        stopped_in = time.monotonic() - began
    assert stopped_in < 1.0
    assert not src.running
    assert rec.wait_event("closed") is None
    assert src.stats()["lines"] == 3


def test_serial_source_tells_how_long_since_its_last_line(pty_pair: tuple[int, str]) -> None:
    master, slave_name = pty_pair
    rec = Recorder()
    src = SerialSource(slave_name, on_status=rec.on_status)
    before_start = time.monotonic()
    src.start(rec.on_line)
    try:
        rec.wait_event("opened")
        started = time.monotonic()
        quiet = src.stats(now=started + 30)  # no line yet: idle since start()
        assert quiet["open"] is True and quiet["lines"] == 0
        assert 30 <= quiet["idle_s"] <= 30 + (started - before_start) + 0.1
        os.write(master, b"1,2,3,4\n")
        written = time.monotonic()
        assert rec.next_line() == b"1,2,3,4"
        seen = time.monotonic()
        idle = src.stats(now=seen + 5)["idle_s"]
        assert 5 - 0.05 <= idle <= 5 + (seen - written) + 0.05  # since the line, not the start
        assert src.stats(now=0.0)["idle_s"] == 0.0  # never negative
    finally:
        src.stop()
    stopped = src.stats()
    assert stopped["open"] is False and stopped["lost"] == 0 and stopped["reopened"] == 0


def test_serial_source_survives_a_raising_callback(pty_pair: tuple[int, str]) -> None:
    master, slave_name = pty_pair
    rec = Recorder()

    def on_line(line: bytes) -> None:
        if line == b"boom":
            raise ValueError("callback bug")
        rec.on_line(line)

    src = SerialSource(slave_name, on_status=rec.on_status)
    src.start(on_line)
    try:
        rec.wait_event("opened")
        os.write(master, b"boom\nafter\n")
        assert rec.next_line() == b"after"
    finally:
        src.stop()
    assert src.stats()["callback-errors"] == 1


def test_serial_source_keeps_trying_a_missing_port(tmp_path: Path) -> None:
    rec = Recorder()
    src = SerialSource(str(tmp_path / "ttyUSB9"), reopen_delay=0.01, on_status=rec.on_status)
    src.start(rec.on_line)
    try:
        error = rec.wait_event("open-failed")
        rec.wait_event("open-failed")  # and again after reopen_delay
    finally:
        src.stop()
    assert isinstance(error, TransportError)
    assert "ttyUSB9" in str(error) and "cannot open" in str(error)
    assert error.__cause__ is not None
    assert isinstance(src.open_error, TransportError)
    assert src.stats()["open-failed"] >= 2
    assert not src.running


@pytest.fixture
def socat(tmp_path: Path) -> Iterator[Socat]:
    if shutil.which("socat") is None:
        pytest.skip("socat is not installed")
    pair = Socat(tmp_path)
    try:
        yield pair
    finally:
        pair.stop()


def test_serial_source_survives_the_port_vanishing_and_returning(socat: Socat) -> None:
    socat.start()
    rec = Recorder()
    src = SerialSource(str(socat.b), reopen_delay=0.05, on_status=rec.on_status)
    src.start(rec.on_line)
    try:
        rec.wait_event("opened")
        socat.write(b"1,2,3,4\n")
        assert rec.next_line() == b"1,2,3,4"

        socat.stop()  # the USB adapter is pulled out
        assert not os.path.lexists(socat.b)
        lost = rec.wait_event("port-lost")
        assert isinstance(lost, TransportError) and "lost" in str(lost)
        assert isinstance(rec.wait_event("open-failed"), TransportError)
        assert not src.is_open and src.running
        down = src.stats()
        assert down["open"] is False and down["lost"] == 1 and down["reopened"] == 0

        socat.start()  # ... and plugged back in
        rec.wait_event("opened")
        assert src.stats()["open"] is True
        socat.write(b"5,6,7,8\n")
        assert rec.next_line() == b"5,6,7,8"
        assert src.open_error is None
    finally:
        src.stop()
    stats = src.stats()
    assert stats["lost"] == 1 and stats["reopened"] == 1
    assert stats["opened"] == 2
    assert stats["lines"] == 2


# -- file and stdin ------------------------------------------------------------------------------


def drain(q: queue.Queue[bytes]) -> list[bytes]:
    out = []
    while not q.empty():
        out.append(q.get_nowait())
    return out


def test_file_source_replays_every_line_then_finishes(tmp_path: Path) -> None:
    path = tmp_path / "wine.csv"
    path.write_bytes(b"13.2,1.78,2.14,112\r\n\n\xff\xfe\x00\n12.4,1.1,2.0,90")  # no final newline
    rec = Recorder()
    src = FileSource(path)
    src.start(rec.on_line)
    assert src.finished.wait(WAIT_S)
    src.stop()
    assert drain(rec.lines) == [b"13.2,1.78,2.14,112", b"", b"\xff\xfe\x00", b"12.4,1.1,2.0,90"]
    assert src.error is None
    done = src.stats(now=time.monotonic() + 60)
    assert done["open"] is False and 60 <= done["idle_s"] <= 61  # replayed: no more input
    assert src.name == f"file:{path}"


def test_file_source_paces_lines_at_rate_hz(tmp_path: Path) -> None:
    path = tmp_path / "lines.csv"
    path.write_bytes(b"a\nb\nc\n")
    times: list[float] = []
    src = FileSource(path, rate_hz=40)
    src.start(lambda line: times.append(time.monotonic()))
    assert src.finished.wait(WAIT_S)
    src.stop()
    assert len(times) == 3
    assert times[2] - times[0] >= 2 / 40 - 0.005  # two intervals of 25 ms, never faster


def test_file_source_stops_promptly_while_waiting_to_pace(tmp_path: Path) -> None:
    path = tmp_path / "lines.csv"
    path.write_bytes(b"x\n" * 10)
    rec = Recorder()
    src = FileSource(path, rate_hz=0.2)  # one line every 5 s
    src.start(rec.on_line)
    assert rec.next_line() == b"x"
    assert src.stats()["open"] is True  # still replaying, waiting for the next line's turn
    began = time.monotonic()
    src.stop()
    assert time.monotonic() - began < 1.0
    assert not src.running and not src.finished.is_set()
    assert drain(rec.lines) == []


def test_file_source_loops(tmp_path: Path) -> None:
    path = tmp_path / "lines.csv"
    path.write_bytes(b"1\n2\n3")
    rec = Recorder()
    src = FileSource(path, loop=True)
    src.start(rec.on_line)
    try:
        got = [rec.next_line() for _ in range(7)]
    finally:
        src.stop()
    assert got == [b"1", b"2", b"3", b"1", b"2", b"3", b"1"]
    assert not src.finished.is_set()


def test_file_source_loop_over_an_empty_file_finishes(tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.write_bytes(b"")
    src = FileSource(path, loop=True)
    src.start(lambda line: None)
    assert src.finished.wait(WAIT_S)
    src.stop()


def test_file_source_reads_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    read_fd, write_fd = os.pipe()
    with os.fdopen(read_fd, "rb") as reader:
        monkeypatch.setattr(sys, "stdin", SimpleNamespace(buffer=reader))
        rec = Recorder()
        src = FileSource("-")
        assert src.name == "stdin"
        src.start(rec.on_line)
        try:
            os.write(write_fd, b"1,2,3,4\n5,6")
            assert rec.next_line() == b"1,2,3,4"
            os.write(write_fd, b",7,8\n")
            assert rec.next_line() == b"5,6,7,8"
            os.close(write_fd)  # end of input
            assert src.finished.wait(WAIT_S)
        finally:
            src.stop()
        assert not reader.closed  # stdin belongs to the process, not the source


def test_file_source_missing_file_is_a_transport_error(tmp_path: Path) -> None:
    src = FileSource(tmp_path / "nope.csv")
    with pytest.raises(TransportError, match=r"nope\.csv") as info:
        src.start(lambda line: None)
    assert isinstance(info.value.__cause__, FileNotFoundError)
    assert not src.running


def test_start_twice_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "lines.csv"
    path.write_bytes(b"x\n" * 10)
    src = FileSource(path, rate_hz=0.2)
    src.start(lambda line: None)
    try:
        with pytest.raises(RuntimeError, match="already running"):
            src.start(lambda line: None)
    finally:
        src.stop()


# -- factory -------------------------------------------------------------------------------------


def test_factory_builds_sources() -> None:
    serial_src = source_from_config(
        {"kind": "serial", "port": "/dev/ttyUSB0", "baudrate": 9600, "parity": "even"}
    )
    assert isinstance(serial_src, SerialSource)
    assert (serial_src.port, serial_src.baudrate, serial_src.parity) == ("/dev/ttyUSB0", 9600, "E")
    assert serial_src.name == "serial:/dev/ttyUSB0"
    file_src = source_from_config({"kind": "file", "path": "replay.csv", "rate_hz": 10})
    assert isinstance(file_src, FileSource)
    assert (file_src.path, file_src.rate_hz, file_src.loop) == ("replay.csv", 10.0, False)
    stdin_src = source_from_config({"kind": "file", "path": "-", "rate_hz": None})
    assert isinstance(stdin_src, FileSource) and stdin_src.is_stdin


@pytest.mark.parametrize(
    ("cfg", "needles"),
    [
        ([("kind", "serial")], ["expected a table", "list"]),
        ({}, ["'kind'", "'serial', 'mqtt', 'file', 'folder' or 'camera'", "found nothing"]),
        (
            {"kind": "mqtq"},
            [
                "'kind'",
                "'serial', 'mqtt', 'file', 'folder' or 'camera'",
                "'mqtq'",
                "Did you mean 'mqtt'?",
            ],
        ),
        ({"kind": ["serial"]}, ["'kind'", "['serial']"]),
        ({"kind": "serial"}, ["'port' is required"]),
        ({"kind": "serial", "port": ""}, ["'port'", "device path", "''"]),
        ({"kind": "serial", "port": "/dev/x", "baudrate": "fast"}, ["'baudrate'", "'fast'"]),
        ({"kind": "serial", "port": "/dev/x", "baudrate": 0}, ["'baudrate'", "positive", "0"]),
        ({"kind": "serial", "port": "/dev/x", "baudrate": True}, ["'baudrate'", "True"]),
        ({"kind": "serial", "port": "/dev/x", "parity": "X"}, ["'parity'", "N, E, O", "'X'"]),
        ({"kind": "serial", "port": "/dev/x", "reopen_delay": -1}, ["'reopen_delay'", "-1"]),
        ({"kind": "serial", "port": "/dev/x", "baud": 9600}, ["unknown key 'baud'", "baudrate"]),
        (
            {"kind": "serial", "port": "/dev/x", "stopbit": 2},
            ["unknown key 'stopbit'", "Did you mean 'stopbits'?"],
        ),
        ({"kind": "serial", "port": "/dev/x", "parity": 1}, ["'parity'", "none, even", "1"]),
        ({"kind": "serial", "port": "/dev/x", "bytesize": 9}, ["'bytesize'", "5, 6, 7, 8", "9"]),
        ({"kind": "serial", "port": "/dev/x", "bytesize": 8.0}, ["'bytesize'", "8.0"]),
        ({"kind": "serial", "port": "/dev/x", "bytesize": "8"}, ["'bytesize'", "'8'"]),
        ({"kind": "serial", "port": "/dev/x", "stopbits": 3}, ["'stopbits'", "1, 1.5, 2", "3"]),
        ({"kind": "serial", "port": "/dev/x", "stopbits": True}, ["'stopbits'", "True"]),
        ({"kind": "mqtt"}, ["(mqtt)", "'topic' is required"]),
        ({"kind": "mqtt", "topic": ""}, ["'topic'", "subscription filter", "''"]),
        ({"kind": "mqtt", "topic": 5}, ["'topic'", "found 5"]),
        ({"kind": "mqtt", "topic": "a/#/b"}, ["'topic'", "'#' only as the whole last level"]),
        ({"kind": "mqtt", "topic": "a/b#"}, ["'topic'", "'#' only", "'a/b#'"]),
        ({"kind": "mqtt", "topic": "a/+b/c"}, ["'topic'", "'+' only as a whole level"]),
        ({"kind": "mqtt", "topic": "a/\x00"}, ["'topic'", "NUL"]),
        ({"kind": "mqtt", "topic": "t", "port": "1883"}, ["'port'", "1-65535", "'1883'"]),
        ({"kind": "mqtt", "topic": "t", "port": 70000}, ["'port'", "1-65535", "70000"]),
        ({"kind": "mqtt", "topic": "t", "port": 1883.0}, ["'port'", "1883.0"]),
        ({"kind": "mqtt", "topic": "t", "qos": 2}, ["'qos'", "0 or 1", "2"]),
        ({"kind": "mqtt", "topic": "t", "qos": True}, ["'qos'", "0 or 1", "True"]),
        ({"kind": "mqtt", "topic": "t", "host": ""}, ["'host'", "host name", "''"]),
        ({"kind": "mqtt", "topic": "t", "password": "pw"}, ["'password'", "'username'"]),
        ({"kind": "mqtt", "topic": "t", "username": ""}, ["'username'", "non-empty", "''"]),
        ({"kind": "mqtt", "topic": "t", "keepalive": 0}, ["'keepalive'", "positive", "0"]),
        ({"kind": "mqtt", "topic": "t", "keepalive": 65536}, ["'keepalive'", "65535", "65536"]),
        ({"kind": "mqtt", "topic": "t", "qso": 1}, ["unknown key 'qso'", "Did you mean 'qos'?"]),
        ({"kind": "mqtt", "topic": "t", "path": "x"}, ["unknown key 'path'", "topic"]),
        ({"kind": "file"}, ["'path' is required"]),
        ({"kind": "file", "path": 3}, ["'path'", "found 3"]),
        ({"kind": "file", "path": "a.csv", "rate_hz": 0}, ["'rate_hz'", "positive", "0"]),
        ({"kind": "file", "path": "a.csv", "rate_hz": math.nan}, ["'rate_hz'", "nan"]),
        ({"kind": "file", "path": "a.csv", "rate_hz": "10"}, ["'rate_hz'", "'10'"]),
        ({"kind": "file", "path": "a.csv", "loop": "yes"}, ["'loop'", "'yes'"]),
        ({"kind": "file", "path": "-", "loop": True}, ["'loop'", "stdin"]),
        ({"kind": "file", "path": "a", "max_line_bytes": -5}, ["'max_line_bytes'", "-5"]),
    ],
)
def test_factory_errors_name_key_expected_and_found(cfg: Any, needles: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        source_from_config(cfg)
    message = str(info.value)
    for needle in needles:
        assert needle in message, message


def test_factory_builds_serial_framing_and_mqtt_sources() -> None:
    serial_src = source_from_config(
        {"kind": "serial", "port": "/dev/ttyS0", "parity": "mark", "bytesize": 7, "stopbits": 1.5}
    )
    assert isinstance(serial_src, SerialSource)
    assert (serial_src.parity, serial_src.bytesize, serial_src.stopbits) == ("M", 7, 1.5)
    defaults = source_from_config({"kind": "serial", "port": "/dev/ttyS0"})
    assert isinstance(defaults, SerialSource)
    assert (defaults.parity, defaults.bytesize, defaults.stopbits) == ("N", 8, 1)
    mqtt_src = source_from_config({"kind": "mqtt", "topic": "sensors/+/wine"})
    assert isinstance(mqtt_src, MqttSource) and isinstance(mqtt_src, Source)
    assert (mqtt_src.host, mqtt_src.port, mqtt_src.qos) == ("127.0.0.1", 1883, 0)
    assert mqtt_src.name == "mqtt:127.0.0.1:1883/sensors/+/wine"
    assert not mqtt_src.running  # building opens nothing
    full = source_from_config(
        {
            "kind": "mqtt",
            "topic": "sensors/#",
            "host": "broker.local",
            "port": 8883,
            "qos": 1,
            "username": "edge",
            "password": "pw",
            "keepalive": 10,
            "name": "local-bus",
        }
    )
    assert isinstance(full, MqttSource)
    assert (full.host, full.port, full.qos, full.username, full.name) == (
        "broker.local",
        8883,
        1,
        "edge",
        "local-bus",
    )


def test_input_from_config_reads_the_format() -> None:
    fmt, src = input_from_config({"kind": "mqtt", "topic": "t", "format": "json"})
    assert fmt == "json" and isinstance(src, MqttSource)
    fmt, src = input_from_config({"kind": "file", "path": "a.csv"})
    assert fmt == "csv" and isinstance(src, FileSource)
    with pytest.raises(
        ConfigError, match=r"'format' expected 'csv', 'json' or 'image', found 'xml'"
    ):
        input_from_config({"kind": "file", "path": "a.csv", "format": "xml"})


def test_device_file_inputs_are_validated_when_loaded(tmp_path: Path) -> None:
    path = tmp_path / "device.toml"
    good = '[device]\nid = "d1"\n[[inputs]]\nkind = "mqtt"\ntopic = "sensors/#"\nformat = "json"\n'
    path.write_text(good)
    cfg = load_config(path)
    assert cfg.inputs == ({"kind": "mqtt", "topic": "sensors/#", "format": "json"},)
    path.write_text(
        '[device]\nid = "d1"\n[[inputs]]\nkind = "file"\npath = "a.csv"\n'
        '[[inputs]]\nkind = "mqtt"\ntopic = "sensors/#"\nqos = 2\n'
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: inputs[1]: ")
    assert "'qos' expected 0 or 1, found 2" in message
    path.write_text(
        '[device]\nid = "d1"\n[[inputs]]\nkind = "serial"\nport = "/dev/x"\nparty = 1\n'
    )
    with pytest.raises(ConfigError, match=r"unknown key 'party'.* Did you mean 'parity'\?"):
        load_config(path)


@pytest.mark.parametrize("parity", ["none", "even", "odd", "mark", "space"])
def test_serial_source_opens_a_pty_with_parity_bytesize_and_stopbits(
    pty_pair: tuple[int, str], parity: str
) -> None:
    master, slave_name = pty_pair
    rec = Recorder()
    src = source_from_config(
        {"kind": "serial", "port": slave_name, "parity": parity, "bytesize": 7, "stopbits": 2},
        on_status=rec.on_status,
    )
    assert isinstance(src, SerialSource)
    src.start(rec.on_line)
    try:
        rec.wait_event("opened")
        os.write(master, b"13.2,1.78,2.14,112\n")
        assert rec.next_line() == b"13.2,1.78,2.14,112"
        # A Linux pty keeps the stop bits and the odd/even sense of the parity in its termios
        # (it forces CS8 and clears PARENB itself): enough to see the settings reached the port.
        fd = os.open(slave_name, os.O_RDWR | os.O_NOCTTY)
        try:
            cflag = termios.tcgetattr(fd)[2]
        finally:
            os.close(fd)
        assert cflag & termios.CSTOPB
        assert bool(cflag & termios.PARODD) == (parity in ("odd", "mark"))
    finally:
        src.stop()
    assert src.stats()["opened"] == 1


# -- MQTT ------------------------------------------------------------------------------------

RECONNECT_WAIT_S = 20.0  # retries wait under a ceiling of 1 s, then 2 s, 4 s... (jittered)


def publish(
    broker: RunningBroker,
    topic: str,
    payloads: list[bytes],
    retain: bool = False,
    auth: tuple[str, str] | None = None,
) -> None:
    """Publish at QoS 1 from a client of its own and wait until the broker has every message."""
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    if auth:
        client.username_pw_set(*auth)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        infos = [client.publish(topic, p, qos=1, retain=retain) for p in payloads]
        for info in infos:
            info.wait_for_publish(WAIT_S)
            assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


def mqtt_source(broker: RunningBroker, rec: Recorder, **kwargs: Any) -> MqttSource:
    return MqttSource(
        kwargs.pop("topic", "sensors/+/wine"),
        broker.host,
        broker.port,
        qos=kwargs.pop("qos", 1),
        on_status=rec.on_status,
        **kwargs,
    )


@pytest.mark.broker
def test_mqtt_source_delivers_each_payload_as_lines(broker: RunningBroker) -> None:
    rec = Recorder()
    src = mqtt_source(broker, rec)
    src.start(rec.on_line)
    try:
        rec.wait_event("connected")
        rec.wait_event("subscribed")
        assert src.running and src.connected.is_set()
        publish(broker, "sensors/kitchen/wine", [b"13.2,1.78,2.14,112\r\n"])
        assert rec.next_line() == b"13.2,1.78,2.14,112"
        got_line = time.monotonic()
        assert src.stats(now=got_line + 2)["idle_s"] <= 2.1  # the line reset the idle clock
        publish(broker, "sensors/cellar/wine", [b"1,2,3,4\n5,6,7,8\r\n\n9,10,11,12"])
        assert [rec.next_line() for _ in range(4)] == [b"1,2,3,4", b"5,6,7,8", b"", b"9,10,11,12"]
        publish(broker, "sensors/cellar/beer", [b"not for us"])  # outside the filter
        publish(broker, "sensors/x/wine", [b"last"])
        assert rec.next_line() == b"last"  # in order: the beer line was never delivered
    finally:
        began = time.monotonic()
        src.stop()
        stopped_in = time.monotonic() - began
    assert stopped_in < 1.0
    assert not src.running
    assert rec.wait_event("closed") is None
    stats = src.stats()
    assert stats["messages"] == 3 and stats["lines"] == 6 and stats["connected"] == 1


@pytest.mark.broker
def test_mqtt_garbage_payloads_are_rejected_and_counted_by_reason(broker: RunningBroker) -> None:
    parser = LineParser(NAMES, bounds=BOUNDS, max_line_bytes=64)
    rejected = RejectCounter()
    outcomes: queue.Queue[str] = queue.Queue()

    def on_line(raw: bytes) -> None:  # what the agent's pipeline does with a line
        try:
            parser.parse(raw)
        except SensorLineError as exc:
            rejected.record(exc)
            outcomes.put(exc.reason)
        else:
            outcomes.put("ok")

    rec = Recorder()
    src = mqtt_source(broker, rec, max_line_bytes=64)
    src.start(on_line)
    try:
        rec.wait_event("subscribed")
        payloads = [
            b"13.2,1.78,2.14,112",  # ok
            b"\xff\xfe\x00",  # not UTF-8
            b"",  # empty
            b"1," * 100 + b"1",  # longer than max_line_bytes
            b"13.2,1.78,2.14",  # wrong field count
            b"13.2,1.78,2.14,112,7",
            b"13.2,abc,2.14,112",  # non-numeric
            b"13.2,nan,2.14,112",  # NaN
            b"13.2,1.78,inf,112",  # inf
            b"13.2,1.78,2.14,500",  # out of range
            b"12.4,1.1,2.0,90",  # ok
        ]
        publish(broker, "sensors/a/wine", payloads)
        got = [outcomes.get(timeout=WAIT_S) for _ in payloads]
    finally:
        src.stop()
    assert got == [
        "ok",
        "garbage",
        "garbage",
        "garbage",
        "field-count",
        "field-count",
        "non-numeric",
        "non-finite",
        "non-finite",
        "out-of-range",
        "ok",
    ]
    assert rejected.snapshot() == {
        "garbage": 3,
        "field-count": 2,
        "non-numeric": 1,
        "non-finite": 2,
        "out-of-range": 1,
    }
    stats = src.stats()
    assert stats["oversize"] == 1 and stats["lines"] == len(payloads)


@pytest.mark.broker
def test_mqtt_source_skips_retained_readings(broker: RunningBroker) -> None:
    publish(broker, "sensors/old/wine", [b"stale"], retain=True)
    rec = Recorder()
    src = mqtt_source(broker, rec)
    src.start(rec.on_line)
    try:
        rec.wait_event("subscribed")
        publish(broker, "sensors/new/wine", [b"fresh"])
        assert rec.next_line() == b"fresh"  # the retained one came first and was skipped
    finally:
        src.stop()
    assert src.stats()["retained-skipped"] == 1
    assert rec.lines.empty()


@pytest.mark.broker
def test_mqtt_source_reconnects_after_a_broker_restart(broker: RunningBroker) -> None:
    rec = Recorder()
    src = mqtt_source(broker, rec)
    src.start(rec.on_line)
    try:
        rec.wait_event("subscribed")
        publish(broker, "sensors/a/wine", [b"before"])
        assert rec.next_line() == b"before"
        assert src.stats()["open"] is True

        broker.stop()
        lost = rec.wait_event("disconnected")
        assert isinstance(lost, TransportError) and "lost" in str(lost)
        assert not src.connected.is_set() and src.running
        assert src.stats()["open"] is False
        broker.restart()

        deadline = time.monotonic() + RECONNECT_WAIT_S
        while rec.events.get(timeout=max(0.0, deadline - time.monotonic()))[0] != "subscribed":
            pass
        publish(broker, "sensors/a/wine", [b"after"])
        assert rec.next_line() == b"after"
        assert src.error is None
    finally:
        src.stop()
    stats = src.stats()
    assert stats["disconnected"] == 1 and stats["connected"] == 2 and stats["lines"] == 2


@pytest.mark.broker
def test_mqtt_source_reconnects_after_the_broker_is_killed(broker: RunningBroker) -> None:
    """kill -9: no goodbye from the broker. Backoff waits of up to 2 s against a 1 s keepalive:
    the source is back, subscribed and delivering, and stays so past the keepalive."""
    rec = Recorder()
    src = mqtt_source(broker, rec, keepalive=1, reconnect_delay=(2, 2))
    src.start(rec.on_line)
    try:
        rec.wait_event("subscribed")
        broker.kill()
        lost = rec.wait_event("disconnected")
        assert isinstance(lost, TransportError) and "lost" in str(lost)
        assert isinstance(rec.wait_event("connect-failed"), TransportError)
        broker.restart()
        deadline = time.monotonic() + RECONNECT_WAIT_S
        while rec.events.get(timeout=max(0.0, deadline - time.monotonic()))[0] != "subscribed":
            pass
        with pytest.raises(queue.Empty):  # nothing happens to the link for 2 keepalives
            rec.events.get(timeout=2.5)
        publish(broker, "sensors/a/wine", [b"after"])
        assert rec.next_line() == b"after"
    finally:
        src.stop()
    stats = src.stats()
    assert stats["disconnected"] == 1 and stats["connected"] == 2 and stats["lines"] == 1


@pytest.mark.parametrize(
    ("delay", "needle"),
    [
        ((0, 5), "'reconnect_delay' expected a positive integer, found 0"),
        ((5, 1), "'reconnect_delay' expected first <= longest, found (5, 1)"),
        ((1.5, 3), "'reconnect_delay' expected a positive integer, found 1.5"),
        ((1, 2, 3), "'reconnect_delay' expected (first, longest) seconds, found (1, 2, 3)"),
        (5, "'reconnect_delay' expected (first, longest) seconds, found 5"),
    ],
)
def test_reconnect_delay_is_validated(delay: Any, needle: str) -> None:
    with pytest.raises(ConfigError, match="mqtt source") as info:
        MqttSource("sensors/#", reconnect_delay=delay)
    assert needle in str(info.value)


def test_reconnect_delay_becomes_a_full_jitter_backoff() -> None:
    backoff = reconnect_backoff("mqtt source", (2, 16))
    assert (backoff.initial, backoff.maximum, backoff.jitter) == (2, 16, "full")
    ceilings = []
    for _ in range(5):
        ceilings.append(backoff.ceiling())
        assert 0 <= backoff.next_delay() < ceilings[-1]
    assert ceilings == [2, 4, 8, 16, 16]


@pytest.mark.broker
def test_mqtt_source_waits_for_a_broker_that_is_not_up_yet(broker: RunningBroker) -> None:
    broker.stop()
    rec = Recorder()
    src = mqtt_source(broker, rec)
    src.start(rec.on_line)
    try:
        error = rec.wait_event("connect-failed")
        assert isinstance(error, TransportError)
        assert f"{broker.host}:{broker.port}" in str(error) and "cannot connect" in str(error)
        assert src.error is error and src.running
        broker.restart()
        deadline = time.monotonic() + RECONNECT_WAIT_S
        while rec.events.get(timeout=max(0.0, deadline - time.monotonic()))[0] != "subscribed":
            pass
        publish(broker, "sensors/a/wine", [b"1,2,3,4"])
        assert rec.next_line() == b"1,2,3,4"
    finally:
        src.stop()
    assert src.stats()["connect-failed"] >= 1


@pytest.mark.broker
def test_mqtt_source_stops_promptly_while_the_broker_is_down(broker: RunningBroker) -> None:
    broker.stop()
    rec = Recorder()
    src = mqtt_source(broker, rec)
    src.start(rec.on_line)
    rec.wait_event("connect-failed")  # now in paho's reconnect backoff
    began = time.monotonic()
    src.stop()
    assert time.monotonic() - began < 2.0  # paho's backoff looks for a stop once a second
    assert not src.running
    assert rec.wait_event("closed") is None


@pytest.mark.broker
def test_mqtt_source_logs_in_with_username_and_password(auth_broker: RunningBroker) -> None:
    rec = Recorder()
    src = mqtt_source(auth_broker, rec, username="sensor", password="s3cret")
    src.start(rec.on_line)
    try:
        rec.wait_event("subscribed")
        publish(auth_broker, "sensors/a/wine", [b"hello"], auth=("sensor", "s3cret"))
        assert rec.next_line() == b"hello"
    finally:
        src.stop()

    rec = Recorder()
    src = mqtt_source(auth_broker, rec, username="sensor", password="wrong")
    src.start(rec.on_line)
    try:
        refused = rec.wait_event("refused")
    finally:
        src.stop()
    assert isinstance(refused, TransportError) and "refused" in str(refused)
    assert src.stats()["refused"] >= 1 and src.stats()["connected"] == 0
