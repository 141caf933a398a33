"""The buffer under group commit (edge_agent.uplink.buffer): what survives an agent killed with
SIGKILL, and when records reach the disk. A child process appends and reports on its stdout what
`append` / `flush` / `take` returned; the test kills it (SIGKILL, nothing flushed on the way
out) and counts what the files hold against what was reported."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from edge_agent.errors import ConfigError, StorageError
from edge_agent.uplink.buffer import Buffer
from tests.support.processes import processes  # noqa: F401  (a fixture)

GROUP = 50
CHILD = """
import sys, threading
from pathlib import Path
from edge_agent.uplink.buffer import Buffer

path, mode, window = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
buf = Buffer(path, boot=1, group_rows={group}, group_window_s=window)
body = {{"window_s": 2.0, "count": 400, "resources": {{"cpu_pct": 12.5}}}}

def say(line):
    sys.stdout.write(line + "\\n")
    sys.stdout.flush()

if mode == "stream":  # append for ever, each returned seq reported
    while True:
        say(str(buf.append("telemetry", body).seq))
elif mode == "count":  # 5038 appended, then idle
    for _ in range(5038):
        buf.append("telemetry", body)
    say("appended 5038")
    threading.Event().wait()
elif mode == "flush":  # 1234 appended and flushed, then idle
    for _ in range(1234):
        buf.append("telemetry", body)
    buf.flush()
    say("flushed 1234")
    threading.Event().wait()
elif mode == "take":  # a few appended and taken (as the sender does), then idle
    for _ in range(7):
        buf.append("telemetry", body)
    say("took " + ",".join(str(p.record.seq) for p in buf.take(100, set())))
    threading.Event().wait()
elif mode == "idle":  # a few appended, then nothing calls the buffer again
    for _ in range(7):
        buf.append("telemetry", body)
    say("appended 7")
    threading.Event().wait()
"""


def spawn(
    started: list[subprocess.Popen[str]], path: Path, mode: str, window: float
) -> subprocess.Popen[str]:
    script = path.parent / "child.py"
    script.write_text(CHILD.format(group=GROUP), encoding="utf-8")
    proc = subprocess.Popen(
        [sys.executable, str(script), str(path), mode, str(window)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    started.append(proc)
    return proc


def kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


def surviving_seqs(path: Path) -> list[int]:
    buf = Buffer(path, boot=2)
    try:
        return sorted(p.record.seq for p in buf.take(1_000_000, set()))
    finally:
        buf.close()


def test_a_kill_mid_stream_leaves_each_record_once_and_no_hole(
    tmp_path: Path,
    processes: list[subprocess.Popen[str]],  # noqa: F811
) -> None:
    path = tmp_path / "buffer"
    proc = spawn(processes, path, "stream", 60.0)  # a window too long to matter: the count bounds
    assert proc.stdout is not None
    reported = -1
    for line in proc.stdout:
        reported = int(line)
        if reported >= 5_000:
            break
    kill(proc)  # while it appends
    seqs = surviving_seqs(path)
    assert seqs == list(range(len(seqs)))  # each once, no gap: a prefix of what was appended
    assert len(seqs) >= reported + 1  # every record whose append returned


def test_a_kill_loses_no_record_whose_append_returned(
    tmp_path: Path,
    processes: list[subprocess.Popen[str]],  # noqa: F811
) -> None:
    path = tmp_path / "buffer"
    proc = spawn(processes, path, "count", 60.0)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "appended 5038"
    kill(proc)
    assert surviving_seqs(path) == list(range(5038))  # the last group's, not yet fsynced, too


def test_what_flush_returned_for_survives_a_kill(
    tmp_path: Path,
    processes: list[subprocess.Popen[str]],  # noqa: F811
) -> None:
    path = tmp_path / "buffer"
    proc = spawn(processes, path, "flush", 60.0)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "flushed 1234"
    kill(proc)
    seqs = surviving_seqs(path)
    assert seqs == list(range(1234))


def test_records_taken_to_be_sent_are_committed(
    tmp_path: Path,
    processes: list[subprocess.Popen[str]],  # noqa: F811
) -> None:
    """The hub is never sent a record the device could lose: take commits first."""
    path = tmp_path / "buffer"
    proc = spawn(processes, path, "take", 60.0)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "took 0,1,2,3,4,5,6"
    kill(proc)
    assert surviving_seqs(path) == list(range(7))


def test_an_idle_buffer_is_fsynced_within_the_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fewer records than a group, and nothing calls the buffer again: the buffer's own thread
    fsyncs them by the window (here 0.2 s), so a power cut after it loses none. os.fsync is
    watched, not replaced: each call goes to the real one."""
    synced = threading.Event()
    real = os.fsync

    def watched(fd: int) -> None:
        real(fd)
        synced.set()

    buf = Buffer(tmp_path / "buffer", boot=1, group_rows=GROUP, group_window_s=0.2)
    for i in range(7):
        buf.append("telemetry", {"i": i})
    monkeypatch.setattr(os, "fsync", watched)
    appended = time.monotonic()
    assert synced.wait(10.0), "the appended records were never fsynced"
    assert time.monotonic() - appended < 5.0  # the window, with room for a loaded machine
    buf.close()


def test_records_are_fsynced_once_a_group_not_once_a_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = os.fsync

    def counted(fd: int) -> None:
        real(fd)
        calls.append(fd)

    monkeypatch.setattr(os, "fsync", counted)
    grouped = Buffer(tmp_path / "grouped", boot=1, group_rows=GROUP, group_window_s=60.0)
    for i in range(GROUP * 4):
        grouped.append("telemetry", {"i": i})
    assert len(calls) == 4 * 2  # the segment and the gone log, once a group
    grouped.close()
    calls.clear()
    each = Buffer(tmp_path / "each", boot=1)  # group_rows 1: each record before it returns
    for i in range(5):
        each.append("telemetry", {"i": i})
        assert len(calls) == 2 * (i + 1)
    each.close()


def test_pending_counts_every_record_and_close_keeps_them(tmp_path: Path) -> None:
    path = tmp_path / "buffer"
    buf = Buffer(path, boot=1, group_rows=GROUP, group_window_s=60.0)
    for i in range(GROUP + 3):
        buf.append("telemetry", {"i": i})
    assert buf.pending() == GROUP + 3
    buf.close()
    assert surviving_seqs(path) == list(range(GROUP + 3))


def test_a_group_needs_a_window(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="group_window_s"):
        Buffer(tmp_path / "b", boot=1, group_rows=10)


def test_a_full_disk_refuses_an_append_and_keeps_every_record_accepted_before(
    tmp_path: Path, tmpfs: Any
) -> None:
    """Under group commit an append that meets a full disk is refused (its seq not used), the
    records accepted before it, fsynced or not, stay, and once space returns the buffer goes
    on: nothing accepted is lost, no seq is skipped."""
    disk = tmpfs(tmp_path / "disk", "256k")
    buf = Buffer(disk.path / "buffer", boot=1, group_rows=10, group_window_s=60.0)
    kept = [buf.append("telemetry", {"i": i, "pad": "x" * 200}).seq for i in range(25)]
    disk.fill()
    with pytest.raises(StorageError) as info:
        for i in range(25, 10_000):  # what the last page has left goes first
            kept.append(buf.append("telemetry", {"i": i, "pad": "x" * 200}).seq)
    assert info.value.reason == "disk-full", info.value
    assert kept == list(range(len(kept)))
    assert buf.pending() == len(kept)
    buf.flush()  # what is written can be synced on a full disk

    disk.free()
    assert buf.append("telemetry", {"i": "after"}).seq == len(kept)  # no gap
    buf.close()
    assert surviving_seqs(disk.path / "buffer") == list(range(len(kept) + 1))
