"""The agent's account of its own storage and its thread guards, as plain logic (no disk, no
broker): when a fault is said, how attempts are paced, what the status carries, and that a
thread's failure is logged once and the thread goes on (a source's reader too)."""

from __future__ import annotations

import json
import logging
import re
import threading
from pathlib import Path

import pytest

from edge_agent.errors import MessageError, StorageError
from edge_agent.guard import Failures, run_guarded
from edge_agent.protocol.messages import (
    Status,
    StorageCondition,
    decode_status,
    dump_json,
    encode,
)
from edge_agent.protocol.records import decode_checked_status
from edge_agent.sources.file import FileSource
from edge_agent.system.storage_health import StorageHealth

FULL = StorageError("disk-full", "state/buffer/3.log", "No space left on device")
READ_ONLY = StorageError("read-only", "state/buffer/3.log", "Read-only file system")


def test_a_fault_is_said_once_again_when_it_changes_and_when_it_is_over() -> None:
    h = StorageHealth()
    said = [h.failed("buffer", FULL, 100.0 + i) for i in range(1000)]
    assert said[0] is not None and "disk full" in said[0] and "buffer" in said[0]
    assert said[1:] == [None] * 999  # not once per record
    status = StorageError("disk-full", "state/status.json", "No space left on device")
    assert h.failed("status file", status, 1100.0) is None  # the same full disk, another file
    changed = h.failed("buffer", READ_ONLY, 1200.0)
    assert changed is not None and "read-only" in changed
    assert h.failed("buffer", READ_ONLY, 1201.0) is None
    h.unkept("telemetry", 3)
    partly = h.succeeded("buffer", 1250.0)
    assert partly is not None and "still failing: disk full" in partly
    back = h.succeeded("status file", 1300.0)
    assert back is not None and "writable again after 1200 s" in back and "3 records" in back
    assert h.succeeded("buffer", 1301.0) is None  # working, and it was: nothing to say


def test_one_place_coming_back_while_another_fails_for_the_same_reason_says_nothing() -> None:
    h = StorageHealth()
    ro = StorageError("read-only", "state/boot", "Read-only file system")
    assert h.failed("boot counter", ro, 10.0) is not None
    assert h.failed("status file", ro, 10.1) is None
    assert h.succeeded("boot counter", 11.0) is None  # still read-only: the status file says so
    back = h.succeeded("status file", 11.2)
    assert back is not None and back.startswith("storage: writable again after 1 s")


def test_the_condition_names_every_failing_place_since_the_first_fault() -> None:
    h = StorageHealth()
    assert h.clean and h.condition() == StorageCondition(True, None, None, {})
    h.failed("status file", StorageError("read-only", "state/status.json", "EROFS"), 50.0)
    h.failed("buffer", FULL, 60.0)
    h.unkept("telemetry")
    h.unkept("telemetry")
    h.unkept("events")
    c = h.condition()
    assert not c.ok and c.since == 50.0 and dict(c.unkept) == {"telemetry": 2, "events": 1}
    assert c.reasons == ("read-only", "disk-full")
    assert c.error is not None and "state/status.json" in c.error and "disk full" in c.error
    h.succeeded("status file", 70.0)
    assert h.condition().since == 50.0  # the trouble that began then is not over
    assert h.failing("buffer") and not h.failing("status file")
    h.succeeded("buffer", 80.0)
    c = h.condition()
    assert (
        c.ok and c.error is None and c.since is None and c.unkept == {"telemetry": 2, "events": 1}
    )
    assert not h.clean  # what was lost stays said until the agent restarts


def test_attempts_while_failing_are_paced_and_a_clock_going_back_does_not_stall_them() -> None:
    h = StorageHealth(retry_s=1.0)
    assert all(h.may_try("buffer", 10.0 + i / 10) for i in range(5))  # working: always
    h.failed("buffer", FULL, 10.0)
    assert not h.may_try("buffer", 10.5)
    assert h.may_try("buffer", 11.0)  # due: one caller tries...
    assert not h.may_try("buffer", 11.0)  # ...and the others count their records unkept
    asks = [11.0 + i / 100 for i in range(1, 1000)]  # 100 a second until 20.99
    assert [t for t in asks if h.may_try("buffer", t)] == [12.0 + s for s in range(9)]
    assert h.may_try("buffer", 5.0)  # the wall clock went back an hour or a few seconds
    assert not h.may_try("buffer", 5.5)


def test_storage_condition_travels_in_the_status_and_is_checked_on_the_way_in() -> None:
    c = StorageCondition(
        False, "disk full: state/buffer/3.log: full", 1700000000.5, {"drift": 2}, ("disk-full",)
    )
    status = Status("pi-01", True, 3, stats={"inferences": 9, "storage": c.to_json()})
    back = decode_status(encode(status))
    assert StorageCondition.from_json(back.stats["storage"], "s") == c
    raw = json.loads(encode(status))
    bad = [
        ({"ok": "no"}, "status.stats.storage.ok"),
        ({"ok": False, "error": 3}, "status.stats.storage.error"),
        ({"ok": False, "since": "yesterday"}, "status.stats.storage.since"),
        ({"ok": True, "unkept": {"telemetry": -1}}, "status.stats.storage.unkept.telemetry"),
        ({"ok": True, "unkept": {"telemetry": True}}, "status.stats.storage.unkept.telemetry"),
        ({"ok": False, "reasons": "disk-full"}, "status.stats.storage.reasons"),
        ({"ok": False, "reasons": [28]}, "status.stats.storage.reasons[0]"),
        ("fine", "status.stats.storage"),
    ]
    for storage, where in bad:
        raw["stats"]["storage"] = storage
        payload = dump_json({k: v for k, v in raw.items() if k != "v"})
        with pytest.raises(MessageError, match=re.escape(where)):
            decode_checked_status(payload)  # as the hub reads a status
    # an older agent says nothing of its storage: still a valid status
    del raw["stats"]["storage"]
    assert "storage" not in decode_status(dump_json(raw)).stats


# ---- guards -----------------------------------------------------------------------------------
def _boom(n: int) -> None:
    raise RuntimeError(f"take failed for batch {n}")  # the message differs, the place does not


def test_a_failure_is_logged_once_with_its_traceback_then_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    failures = Failures("sender")
    with caplog.at_level(logging.ERROR, logger="edge_agent.guard"):
        for n in range(1000):
            try:
                _boom(n)
            except RuntimeError as exc:
                failures.failed(exc)
        try:
            raise ValueError("another one")
        except ValueError as exc:
            assert failures.failed(exc)
    logged = [r for r in caplog.records if r.name == "edge_agent.guard"]
    with_traceback = [r for r in logged if r.exc_info]
    assert [r.getMessage() for r in with_traceback] == [
        "sender failed, going on: take failed for batch 0",
        "sender failed, going on: another one",
    ]
    assert [r.getMessage().split(":")[0] for r in logged if not r.exc_info] == [
        "sender failed again (10 times so far)",
        "sender failed again (100 times so far)",
        "sender failed again (1000 times so far)",
    ]
    assert failures.count == 1001


def test_run_guarded_runs_the_body_again_after_it_raised_until_it_returns() -> None:
    stop = threading.Event()
    runs: list[int] = []

    def body() -> None:
        runs.append(len(runs))
        if len(runs) < 3:
            _boom(len(runs))

    failures = run_guarded("sender", body, stop, pause=0.0)
    assert runs == [0, 1, 2] and failures.count == 2

    calls: list[int] = []

    def stopping() -> None:  # stopping: a body that raised is not run again
        calls.append(1)
        stop.set()
        _boom(0)

    assert run_guarded("updater", stopping, stop, pause=0.0).count == 1 and calls == [1]
    assert run_guarded("updater", stopping, stop, pause=0.0).count == 0  # stopped: never run


def test_a_source_whose_reader_raises_is_logged_once_and_starts_over(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The real file source with one bug injected into its reader: the thread goes on (the
    source starts over, as start() started it) and every line is still delivered."""

    class FileSourceWithABug(FileSource):
        bugs = 1

        def _replay(self, fd: int, stop: threading.Event) -> None:
            if self.bugs:
                self.bugs -= 1
                raise RuntimeError("a bug in the reader")
            super()._replay(fd, stop)

    path = tmp_path / "readings.csv"
    path.write_text("1,2\n3,4\n5,6\n")
    lines: list[bytes] = []
    source = FileSourceWithABug(path)
    with caplog.at_level(logging.ERROR, logger="edge_agent.guard"):
        source.start(lines.append)
        assert source.finished.wait(10), "the source did not go on after its reader raised"
        source.stop()
    assert lines == [b"1,2", b"3,4", b"5,6"]
    (logged,) = [r for r in caplog.records if r.name == "edge_agent.guard"]
    assert logged.exc_info and "failed, going on: a bug in the reader" in logged.getMessage()
