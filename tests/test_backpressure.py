"""A source that can wait (a file, a folder) waits for room in the agent's backlog instead of
losing what it reads past the bound, and holds little in memory; one that cannot wait (a serial
port, a broker) is still refused, counted, when the backlog is full. Counted against the file's
own lines and the folder's own files, not against the code under test."""

from __future__ import annotations

import functools
import os
import queue
import threading
from pathlib import Path

import pytest

from cloud_hub.rollout.operations import enroll_device, init_hub
from edge_agent.agent import Agent
from edge_agent.config import load_config
from edge_agent.sources.backlog import GAP, WAITING_ROOM, Backlog, Message
from edge_agent.sources.base import Source
from edge_agent.sources.file import FileSource
from edge_agent.sources.folder import FolderSource
from edge_agent.sources.serial_port import SerialSource

WAIT_S = 10.0


class WaitingPut:
    """A waiting source's callback into `backlog`; `reached` is set as call `nth` begins."""

    def __init__(self, backlog: Backlog, fmt: str, nth: int) -> None:
        self.backlog, self.fmt, self.nth = backlog, fmt, nth
        self.stop = threading.Event()  # the agent's stop, as the agent's callback watches it
        self.calls = 0
        self.reached = threading.Event()

    def __call__(self, data: bytes) -> bool:
        self.calls += 1
        if self.calls == self.nth:
            self.reached.set()
        return self.backlog.put_waiting((self.fmt, data), self.stop)

    def stop_while_waiting(self, src: Source) -> None:
        """Start `src` with this callback and, once call `nth` waits, stop as the agent does:
        its stop event, the backlog woken, then the source stopped."""
        src.start(self)
        try:
            assert self.reached.wait(WAIT_S)
            self.stop.set()
            self.backlog.wake()
        finally:
            src.stop()


class Deepest:
    """A consumer of the backlog that notes the deepest it found it."""

    def __init__(self, backlog: Backlog) -> None:
        self.backlog = backlog
        self.deepest = 0
        self.taken: list[Message] = []

    def take(self, wanted: int) -> None:
        while len(self.taken) < wanted:
            self.deepest = max(self.deepest, self.backlog.qsize())
            batch = self.backlog.get_batch(16, timeout=WAIT_S)
            assert batch, f"nothing came after {len(self.taken)} of {wanted} messages"
            self.taken += batch


def test_a_file_longer_than_the_backlog_loses_no_line_and_reads_little_ahead(
    tmp_path: Path,
) -> None:
    lines = [f"{i},{i * 0.5},{-i}".encode() for i in range(20_000)]
    path = tmp_path / "sensor.csv"
    path.write_bytes(b"\n".join(lines) + b"\n")
    backlog = Backlog(maxsize=10_000, max_bytes=10**9)  # the profile's count bound
    stop = threading.Event()
    src = FileSource(path)
    src.start(lambda raw: backlog.put_waiting(("csv", raw), stop))
    consumer = Deepest(backlog)
    try:
        consumer.take(len(lines))
        assert src.finished.wait(WAIT_S)
    finally:
        stop.set()
        src.stop()
    assert [raw for _, raw in consumer.taken] == lines  # every line once, in order, no gap
    assert consumer.deepest <= WAITING_ROOM  # not thousands read ahead into memory


def test_a_waiting_source_leaves_half_of_each_bound_to_the_sources_that_cannot_wait() -> None:
    """A file read at full speed must not crowd a serial port out of the backlog."""
    stop = threading.Event()
    backlog = Backlog(maxsize=6, max_bytes=10**9)
    for i in range(3):
        assert backlog.put_waiting(("csv", b"f%d" % i), stop)
    blocked = threading.Thread(target=backlog.put_waiting, args=(("csv", b"f3"), stop))
    blocked.start()
    for i in range(3):  # a port's lines still fit beside the file's
        backlog.put_nowait(("csv", b"p%d" % i))
    with pytest.raises(queue.Full):
        backlog.put_nowait(("csv", b"p3"))
    first = backlog.get_batch(16, timeout=WAIT_S)
    assert [raw for _, raw in first] == [b"f0", b"f1", b"f2", b"p0", b"p1", b"p2"]
    blocked.join(WAIT_S)  # the room made wakes the file
    assert not blocked.is_alive()
    assert backlog.get_batch(16, timeout=WAIT_S) == [GAP, ("csv", b"f3")]  # after the refused
    heavy = Backlog(maxsize=1000, max_bytes=200)
    assert heavy.put_waiting(("image", bytes(150)), stop)  # under half the bound when it came
    waiting = threading.Thread(target=heavy.put_waiting, args=(("image", bytes(10)), stop))
    waiting.start()
    heavy.put_nowait(("image", bytes(40)))  # a camera's frame still fits
    assert heavy.get_batch(1, timeout=WAIT_S) == [("image", bytes(150))]
    waiting.join(WAIT_S)
    assert not waiting.is_alive()
    assert heavy.get_batch(2, timeout=WAIT_S) == [("image", bytes(40)), ("image", bytes(10))]


def test_a_stop_releases_a_waiting_source_and_nothing_is_queued_after_it() -> None:
    backlog = Backlog(maxsize=4, max_bytes=10**9)  # a waiting source may fill half of it
    stop = threading.Event()
    assert backlog.put_waiting(("csv", b"0"), stop) and backlog.put_waiting(("csv", b"1"), stop)
    result: list[bool] = []
    waiting = threading.Thread(
        target=lambda: result.append(backlog.put_waiting(("csv", b"2"), stop))
    )
    waiting.start()
    stop.set()
    backlog.wake()  # as the agent's stop event does
    waiting.join(WAIT_S)
    assert not waiting.is_alive() and result == [False]
    assert backlog.get_batch(16, timeout=WAIT_S) == [("csv", b"0"), ("csv", b"1")]


def test_a_folder_stopped_while_waiting_keeps_the_file_it_could_not_hand_over(
    tmp_path: Path,
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for i in range(3):
        (inbox / f"{i}.bin").write_bytes(bytes([i]) * 8)
    backlog = Backlog(maxsize=1, max_bytes=10**9)
    put = WaitingPut(backlog, "image", 2)  # the backlog holds the first: the 2nd waits
    put.stop_while_waiting(FolderSource(inbox, poll_s=0.02, after="delete"))
    queued = backlog.get_batch(16, timeout=WAIT_S)
    assert len(queued) == 1
    left = sorted(p.read_bytes() for p in inbox.iterdir())
    assert queued[0][1] not in left and len(left) == 2  # only the file handed over went


def test_the_agent_lets_a_file_wait_and_refuses_a_port_when_full(tmp_path: Path) -> None:
    lines = [f"{i},1,2,3".encode() for i in range(3_000)]
    path = tmp_path / "sensor.csv"
    path.write_bytes(b"\n".join(lines) + b"\n")
    init_hub(tmp_path / "hub")
    enroll_device(tmp_path / "hub", "pi-01", tmp_path / "state")
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[device]\nid = "pi-01"\nstate_dir = "{tmp_path / "state"}"\n'
        '[broker]\nhost = "127.0.0.1"\nport = 1\n'  # nothing listens: no broker needed here
        "[pipeline]\nqueue_max = 100\n"
        f'[[inputs]]\nkind = "file"\npath = "{path}"\n'
    )
    agent = Agent(load_config(config))
    assert FileSource.waits and FolderSource.waits and not SerialSource.waits
    port = agent._on_line("csv", waits=False)  # what a serial port or broker input gets
    for i in range(101):
        port(str(i).encode())
    assert agent.lines.qsize() == 100
    assert agent.pipeline.stats.snapshot()["rejected"] == {"queue-full": 1}
    agent.lines.get_batch(100, timeout=WAIT_S)
    # no hub confirms the last window: the shutdown need not wait for it
    agent.shutdown = functools.partial(agent.shutdown, drain_timeout=0.0)  # type: ignore[method-assign]
    agent.start()
    loop = threading.Thread(target=agent.run_forever, daemon=True)
    loop.start()
    try:
        assert isinstance(agent.sources[0], FileSource)
        assert agent.sources[0].finished.wait(WAIT_S)
    finally:
        agent.stop_event.set()
        loop.join(WAIT_S)
    assert not loop.is_alive()
    rejected = agent.pipeline.stats.snapshot()["rejected"]
    # no model is installed: each of the file's lines is refused as no-model, none as queue-full
    assert rejected == {"queue-full": 1, "no-model": len(lines)}, rejected
    assert os.path.exists(path)


def test_a_file_stopped_while_waiting_counts_only_the_lines_it_handed_over(
    tmp_path: Path,
) -> None:
    path = tmp_path / "sensor.csv"
    path.write_bytes(b"".join(b"%d,1\n" % i for i in range(100)))
    backlog = Backlog(maxsize=4, max_bytes=10**9)  # room for 2 from a waiting source
    put = WaitingPut(backlog, "csv", 3)  # the 3rd waits for room that never comes
    src = FileSource(path)
    put.stop_while_waiting(src)
    assert not src.running
    assert src.stats()["lines"] == 2 and put.calls == 3  # the file stopped at the line not taken
    assert backlog.get_batch(16, timeout=WAIT_S) == [("csv", b"0,1"), ("csv", b"1,1")]
