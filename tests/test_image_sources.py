"""Sources of images: a real folder that files appear in, a camera (a stand-in camera object for
the frame loop; the library check as a device without one sees it), MQTT payloads whole against
a real mosquitto, the [[inputs]] tables that name them, and the agent's backlog bounded in bytes.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cloud_hub.broker.local import RunningBroker
from edge_agent.config import load_config
from edge_agent.errors import ConfigError, TransportError
from edge_agent.imaging import decode_image
from edge_agent.sources.backlog import GAP, Backlog
from edge_agent.sources.camera import CameraSource, camera_opener
from edge_agent.sources.factory import input_from_config
from edge_agent.sources.folder import FolderScan, FolderSource, Listed
from edge_agent.sources.mqtt import MqttSource

WAIT_S = 10.0


class Received:
    """What a source delivered, waited on with a timeout."""

    def __init__(self) -> None:
        self.items: queue.Queue[bytes] = queue.Queue()

    def __call__(self, data: bytes) -> None:
        self.items.put(data)

    def next(self) -> bytes:
        return self.items.get(timeout=WAIT_S)

    def none_left(self) -> bool:
        return self.items.empty()


# ---- which files a folder gives, and when (pure) ---------------------------------------------


def test_a_file_is_taken_once_it_stopped_growing_and_once_per_version() -> None:
    scan = FolderScan("*.png")
    a1, b1 = Listed("a.png", 10, 1), Listed("b.png", 5, 2)
    assert scan.due([a1, b1]) == []  # first sight: maybe still being written
    a2 = Listed("a.png", 20, 3)  # a grew
    assert scan.due([a2, b1]) == [b1]
    assert scan.due([a2, b1]) == [a2]  # now a stopped growing; b is not given again
    assert scan.due([a2, b1]) == []
    a3 = Listed("a.png", 20, 9)  # rewritten in place: a new version
    assert scan.due([a3, b1]) == []
    assert scan.due([a3, b1]) == [a3]


def test_hidden_partial_and_unmatched_files_are_never_taken_and_memory_follows_the_folder() -> None:
    scan = FolderScan("*.png")
    odd = [
        Listed(".a.png", 1, 1),
        Listed("b.png.tmp", 1, 1),
        Listed("c.png.part", 1, 1),
        Listed("d.jpg", 1, 1),
    ]
    for _ in range(3):
        assert scan.due(odd) == []
    many = [Listed(f"{i}.png", 1, 100 - i) for i in range(50)]
    scan.due(many)
    assert [f.name for f in scan.due(many)] == [f"{i}.png" for i in reversed(range(50))]
    scan.due([])  # the folder emptied: nothing is remembered
    assert scan._taken == {} and scan._last == {}
    scan.due(many)
    assert len(scan.due(many)) == 50  # back again: new files as far as anyone can tell


# ---- a real folder ---------------------------------------------------------------------------


def drop(folder: Path, name: str, data: bytes) -> None:
    """As a careful writer does: write under a partial name, then rename in."""
    tmp = folder / f"{name}.tmp"
    tmp.write_bytes(data)
    os.replace(tmp, folder / name)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "inbox"
    path.mkdir()
    return path


def running(src: Any, received: Received) -> Iterator[Any]:
    src.start(received)
    try:
        yield src
    finally:
        src.stop()


@pytest.mark.parametrize("after", ["keep", "delete", "move"])
def test_a_folder_gives_each_file_once_then_keeps_deletes_or_moves_it(
    folder: Path, after: str
) -> None:
    got = Received()
    src = FolderSource(folder, pattern="*.bin", poll_s=0.02, after=after)
    src.start(got)
    try:
        for i in range(5):
            drop(folder, f"{i}.bin", bytes([i]) * (i + 1))
        (folder / "notes.txt").write_bytes(b"not an image")
        received = sorted(got.next() for _ in range(5))
        assert received == [bytes([i]) * (i + 1) for i in range(5)]
        drop(folder, "last.bin", b"last")  # it comes after two more polls: nothing came twice
        assert got.next() == b"last"
        assert got.none_left()
    finally:
        src.stop()
    left = sorted(p.name for p in folder.iterdir())
    done = sorted(p.name for p in (folder / "done").iterdir()) if after == "move" else []
    names = sorted([*(f"{i}.bin" for i in range(5)), "last.bin"])
    expected = {
        "keep": (sorted([*names, "notes.txt"]), []),
        "delete": (["notes.txt"], []),
        "move": (["done", "notes.txt"], names),
    }[after]
    assert (left, done) == expected
    stats = src.stats()
    assert stats["files"] == 6 and stats["lines"] == 6 and stats["open"] is False


@pytest.mark.parametrize("after", ["delete", "move"])
def test_a_file_the_callback_raised_on_stays_in_its_folder(folder: Path, after: str) -> None:
    """A callback that raises (a bug downstream) costs that file's delivery, counted, never the
    file: it is neither deleted nor moved, so nothing is lost; the files after it go on."""
    got, raised = Received(), threading.Event()

    def on_file(data: bytes) -> None:
        if data == b"boom":
            raised.set()
            raise ValueError("callback bug")
        got(data)

    src = FolderSource(folder, pattern="*.bin", poll_s=0.02, after=after)
    src.start(on_file)
    try:
        drop(folder, "a.bin", b"boom")
        assert raised.wait(WAIT_S)
        drop(folder, "b.bin", b"fine")  # after a.bin's delivery, whatever the listing order
        assert got.next() == b"fine"
    finally:
        src.stop()
    assert (folder / "a.bin").read_bytes() == b"boom"
    assert not (folder / "b.bin").exists()
    assert src.stats()["callback-errors"] == 1


def test_a_large_file_is_cut_and_counted_and_the_framer_refuses_it(folder: Path) -> None:
    got = Received()
    src = FolderSource(folder, poll_s=0.02, max_image_bytes=100)
    for _ in running(src, got):
        drop(folder, "big.pgm", b"P5 20 20 255\n" + bytes(400))
        data = got.next()
        assert len(data) == 101 and src.stats()["oversize"] == 1
        with pytest.raises(Exception, match="truncated netpbm"):
            decode_image(data)


def test_a_missing_folder_is_reported_and_read_once_it_exists(tmp_path: Path) -> None:
    got = Received()
    folder = tmp_path / "later"
    src = FolderSource(folder, poll_s=0.02)
    for _ in running(src, got):
        assert src.error is None or "cannot list" in str(src.error)
        folder.mkdir()
        drop(folder, "a.png", b"x")
        assert got.next() == b"x"
        assert src.error is None and src.stats()["open"] is True


# ---- a camera --------------------------------------------------------------------------------


class FakeCamera:
    """Gives `frames` then fails, as a camera that is unplugged."""

    opened = 0

    def __init__(self, frames: list[np.ndarray]) -> None:
        self.frames = list(frames)
        self.closed = threading.Event()
        FakeCamera.opened += 1

    def read(self) -> np.ndarray:
        if not self.frames:
            raise TransportError("the camera gave no frame")
        return self.frames.pop(0)

    def close(self) -> None:
        self.closed.set()


def test_a_camera_gives_frames_as_images_and_is_opened_again_when_lost() -> None:
    rng = np.random.default_rng(4)
    frames = [rng.integers(0, 256, (6, 8, 3), dtype=np.uint8) for _ in range(3)]
    cameras: list[FakeCamera] = []

    def opener(device: int | str, size: tuple[int, int] | None) -> FakeCamera:
        assert (device, size) == (0, (8, 6))
        cameras.append(FakeCamera(frames if not cameras else frames[:1]))
        return cameras[-1]

    got = Received()
    src = CameraSource(fps=500, width=8, height=6, reopen_delay=0.01, opener=opener)
    for _ in running(src, got):
        for frame in frames:
            assert np.array_equal(decode_image(got.next()), frame)
        assert np.array_equal(decode_image(got.next()), frames[0])  # after the reopen
        assert cameras[0].closed.is_set()
    stats = src.stats()
    assert stats["frames"] >= 4 and stats["lost"] >= 1 and stats["reopened"] >= 1


def test_a_camera_without_a_library_says_what_to_install() -> None:
    for module in ("picamera2", "cv2"):
        try:
            __import__(module)
        except ImportError:
            continue
        pytest.skip(f"{module} is installed here")
    with pytest.raises(ConfigError, match=r"picamera2 .* or OpenCV \(pip install 'edgefleet\["):
        camera_opener("auto")
    with pytest.raises(ConfigError, match=r"backend 'picamera2'"):
        camera_opener("picamera2")
    src = CameraSource()
    with pytest.raises(ConfigError, match=r"edgefleet\[camera\]"):
        src.start(Received())
    assert not src.running


# ---- MQTT payloads, whole --------------------------------------------------------------------


def publish(broker: RunningBroker, topic: str, payloads: list[bytes]) -> None:
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        for payload in payloads:
            info = client.publish(topic, payload, qos=1)
            info.wait_for_publish(WAIT_S)
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.mark.broker
def test_mqtt_image_payloads_come_whole_and_large_ones_are_cut(broker: RunningBroker) -> None:
    connected = threading.Event()
    got = Received()
    src = MqttSource(
        "cam/+/jpeg",
        broker.host,
        broker.port,
        qos=1,
        max_line_bytes=1000,
        whole_payloads=True,
        on_status=lambda event, _: connected.set() if event == "subscribed" else None,
    )
    for _ in running(src, got):
        assert connected.wait(WAIT_S)
        image = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 3  # newlines inside, 776 bytes
        publish(broker, "cam/door/jpeg", [image, b"\n", bytes(5000)])
        assert got.next() == image
        assert got.next() == b"\n"
        assert got.next() == bytes(1001)
    assert src.stats()["oversize"] == 1 and src.stats()["messages"] == 3


# ---- [[inputs]] tables -----------------------------------------------------------------------


def test_image_inputs_from_config(tmp_path: Path) -> None:
    fmt, src = input_from_config({"kind": "folder", "path": "inbox", "pattern": "*.png"})
    assert fmt == "image" and isinstance(src, FolderSource) and src.after == "keep"
    fmt, src = input_from_config({"kind": "camera", "fps": 2, "name": "door"})
    assert fmt == "image" and isinstance(src, CameraSource) and src.name == "door"
    fmt, src = input_from_config(
        {"kind": "mqtt", "topic": "cam/#", "format": "image", "max_image_bytes": 2_000_000}
    )
    assert fmt == "image" and isinstance(src, MqttSource) and src._whole
    assert src._max_line_bytes == 2_000_000
    path = tmp_path / "device.toml"
    path.write_text('[device]\nid = "d1"\n[[inputs]]\nkind = "folder"\npath = "inbox"\n')
    (spec,) = load_config(path).inputs
    assert spec["path"] == str(tmp_path / "inbox")  # next to the device file


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"kind": "folder", "path": "x", "format": "csv"}, r"'format' expected 'image' \(a folder"),
        ({"kind": "serial", "port": "/dev/x", "format": "image"}, r"a serial gives lines"),
        ({"kind": "file", "path": "x", "format": "image"}, r"expected a folder, camera or mqtt"),
        ({"kind": "mqtt", "topic": "t", "format": "image", "max_line_bytes": 9}, r"unknown key"),
        ({"kind": "folder"}, r"'path' is required"),
        ({"kind": "folder", "path": "x", "after": "shred"}, r"'after' expected one of keep"),
        ({"kind": "folder", "path": "x", "pattern": "a/*.png"}, r"'pattern' expected a file"),
        ({"kind": "folder", "path": "x", "poll_s": 0}, r"'poll_s'"),
        ({"kind": "folder", "path": "x", "max_image_bytes": 0}, r"'max_image_bytes' expected a"),
        ({"kind": "mqtt", "topic": "t", "format": "image", "max_image_bytes": -1}, r"'max_image_"),
        ({"kind": "camera", "fps": 0}, r"'fps'"),
        ({"kind": "camera", "width": 640}, r"'width' and 'height' expected together"),
        ({"kind": "camera", "backend": "v4l"}, r"'backend' expected one of auto, picamera2"),
        ({"kind": "camera", "device": True}, r"'device' expected a camera number"),
        ({"kind": "camera", "fsp": 2}, r"Did you mean 'fps'\?"),
    ],
)
def test_wrong_image_inputs_are_refused_naming_the_key(cfg: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        input_from_config(cfg)


# ---- the backlog -----------------------------------------------------------------------------


def test_the_backlog_is_bounded_in_bytes_as_in_count() -> None:
    backlog = Backlog(maxsize=100, max_bytes=1000)
    backlog.put_nowait(("image", bytes(600)))
    backlog.put_nowait(("image", bytes(600)))  # under the bound when it came: it goes in
    with pytest.raises(queue.Full):
        backlog.put_nowait(("image", bytes(10)))
    assert backlog.get_nowait()[1] == bytes(600) and backlog.bytes == 600
    backlog.put_nowait(("csv", b"1,2"))  # after the refused one: the gap goes in first
    assert backlog.bytes == 603 and backlog.qsize() == 3
    assert backlog.get_batch(3, timeout=1.0) == [("image", bytes(600)), GAP, ("csv", b"1,2")]
    small = Backlog(maxsize=2, max_bytes=10**9)
    small.put_nowait(("csv", b"1"))
    small.put_nowait(("csv", b"2"))
    with pytest.raises(queue.Full):
        small.put_nowait(("csv", b"3"))


def test_the_backlog_hands_out_micro_batches_in_order_and_keeps_its_bounds() -> None:
    backlog = Backlog(maxsize=5, max_bytes=10**9)
    lines = [("csv", str(i).encode()) for i in range(5)]
    for line in lines:
        backlog.put_nowait(line)
    with pytest.raises(queue.Full):  # the count bound holds for put_nowait
        backlog.put_nowait(("csv", b"5"))
    assert backlog.get_batch(3, timeout=1.0) == lines[:3]
    assert backlog.bytes == 2 and backlog.qsize() == 2
    assert backlog.get_batch(16, timeout=1.0) == lines[3:]
    assert backlog.bytes == 0
    assert backlog.get_batch(16, timeout=0.01) == []  # nothing came


def test_the_backlog_marks_where_it_refused_messages_once() -> None:
    backlog = Backlog(maxsize=2, max_bytes=10**9)
    taken: list[tuple[str, bytes]] = []
    for i in range(6):  # 0, 1 go in; 2, 3 are refused; 4 goes in after the gap; 5 after it
        with contextlib.suppress(queue.Full):
            backlog.put_nowait(("csv", str(i).encode()))
        if i in (3, 4):
            taken += backlog.get_batch(16, timeout=1.0)
    taken += backlog.get_batch(16, timeout=1.0)
    assert taken == [("csv", b"0"), ("csv", b"1"), GAP, ("csv", b"4"), ("csv", b"5")]


def test_a_waiting_get_batch_wakes_when_a_line_comes() -> None:
    backlog = Backlog(maxsize=100, max_bytes=10**9)
    got: list[list[tuple[str, bytes]]] = []
    waiting = threading.Thread(target=lambda: got.append(backlog.get_batch(16, timeout=30.0)))
    waiting.start()
    backlog.put_nowait(("csv", b"1,2"))
    waiting.join(10.0)  # well before get_batch's own timeout
    assert not waiting.is_alive() and got == [[("csv", b"1,2")]]
