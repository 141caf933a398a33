"""The store-and-forward buffer: order, confirmations, the drop policy and surviving a restart."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.errors import STORAGE_REASONS, StorageError, TransportError
from edge_agent.protocol.messages import body_json, spans_of
from edge_agent.uplink.buffer import Buffer, Pending
from edge_agent.uplink.recordlog import record_line
from tests.support.buffer_files import on_disk


def confirm(buf: Buffer, pending: list[Pending]) -> int:
    """What the sender does with the hub's confirmation of these records."""
    return buf.confirm(spans_of(p.record for p in pending))


@pytest.fixture
def buf(tmp_path: Path) -> Iterator[Buffer]:
    b = Buffer(tmp_path / "state" / "buffer", boot=3, max_rows=1000)
    yield b
    b.close()


def test_append_assigns_increasing_seq_and_the_boot(buf: Buffer) -> None:
    records = [buf.append("telemetry", {"i": i}, ts=float(i)) for i in range(5)]
    assert [r.seq for r in records] == [0, 1, 2, 3, 4]
    assert {r.boot for r in records} == {3}
    assert buf.pending() == 5
    taken = buf.take(10, set())
    assert [p.record for p in taken] == records


def test_seq_keeps_increasing_across_kinds(buf: Buffer) -> None:
    seqs = [buf.append(kind, {}, ts=0.0).seq for kind in ("telemetry", "events", "drift", "events")]
    assert seqs == [0, 1, 2, 3]


def test_take_most_important_kind_first_oldest_first(buf: Buffer) -> None:
    buf.append("telemetry", {"n": "t0"}, ts=0.0)
    buf.append("drift", {"n": "d0"}, ts=0.0)
    buf.append("events", {"n": "e0"}, ts=0.0)
    buf.append("telemetry", {"n": "t1"}, ts=0.0)
    buf.append("events", {"n": "e1"}, ts=0.0)
    buf.append("drift", {"n": "d1"}, ts=0.0)

    def names(limit: int = 10, skip: set[int] | None = None) -> list[str]:
        return [p.record.body["n"] for p in buf.take(limit, skip or set())]

    # all of one kind per take, events before drift before telemetry
    assert names() == ["e0", "e1"]
    assert names(limit=1) == ["e0"]
    events = buf.take(10, set())
    assert {p.kind for p in events} == {"events"}
    confirm(buf, events)
    assert names() == ["d0", "d1"]
    confirm(buf, buf.take(10, set()))
    assert names() == ["t0", "t1"]
    confirm(buf, buf.take(10, set()))
    assert names() == []
    assert buf.pending() == 0


def test_take_skips_in_flight_ids(buf: Buffer) -> None:
    for i in range(4):
        buf.append("telemetry", {"i": i}, ts=0.0)
    buf.append("events", {"i": 99}, ts=0.0)
    first = buf.take(1, set())
    assert first[0].kind == "events"
    in_flight = {first[0].id}
    second = buf.take(2, in_flight)
    assert [p.record.body["i"] for p in second] == [0, 1]
    in_flight |= {p.id for p in second}
    third = buf.take(10, in_flight)
    assert [p.record.body["i"] for p in third] == [2, 3]
    assert buf.take(10, in_flight | {p.id for p in third}) == []


def test_confirm_deletes_only_the_confirmed(buf: Buffer) -> None:
    for i in range(3):
        buf.append("telemetry", {"i": i}, ts=0.0)
    taken = buf.take(3, set())
    assert confirm(buf, [taken[1]]) == 1
    assert buf.pending() == 2
    assert [p.record.body["i"] for p in buf.take(3, set())] == [0, 2]
    assert confirm(buf, [taken[1]]) == 0  # confirmed twice (a resend stored once): no harm
    assert buf.pending() == 2
    # bytes as kept: each record's line (compact JSON)
    lines = [record_line("telemetry", 3, seq, 0.0, f'{{"i":{seq}}}') for seq in (0, 2)]
    assert buf.usage() == {"telemetry": (2, sum(map(len, lines)))}


def test_confirm_matches_boot_and_seq_not_row_ids(tmp_path: Path) -> None:
    """A confirmation for what an earlier boot sent (the agent restarted before the hub's
    answer came) still frees those records; another boot's equal seqs stay."""
    path = tmp_path / "buffer"
    first = Buffer(path, boot=1)
    old = [first.append("telemetry", {"i": i}, ts=0.0) for i in range(3)]
    first.close()
    second = Buffer(path, boot=2)
    second.append("telemetry", {"i": 10}, ts=0.0)  # (2, 0): same seq as (1, 0)
    assert second.confirm(spans_of(old[:2])) == 2
    held = second.take(10, set())
    assert [(p.record.boot, p.record.seq) for p in held] == [(1, 2), (2, 0)]
    ids = [held[1].id, held[0].id, held[1].id + 1]  # the last names no record held
    assert [p.record.body["i"] for p in second.get(ids)] == [2, 10]
    second.close()


def test_a_confirmation_past_what_was_appended_forgets_nothing_to_come(tmp_path: Path) -> None:
    """A span that runs past the seqs appended so far (a confused hub, a seq past 32 bits)
    forgets the records it names and no other: not, after a restart, those appended later
    under the same boot, nor those of the next boot."""
    folder = tmp_path / "buffer"
    old = Buffer(folder, boot=1)
    for i in range(3):
        old.append("telemetry", {"i": i})
    old.close()
    buf = Buffer(folder, boot=2)
    buf.append("telemetry", {"i": 0})
    assert buf.confirm([(1, 0, 2**33)]) == 3  # boot 1's, not boot 2's seq 0
    assert buf.confirm([(2, 0, 10)]) == 1
    later = [(2, buf.append("events", {"i": i}).seq) for i in range(1, 4)]
    assert [p.key for p in buf.take(10, set())] == later
    buf.close()
    again = Buffer(folder, boot=3)
    assert [p.key for p in again.take(10, set())] == later
    again.close()


@pytest.mark.parametrize(("cap", "appended"), [(1, 5), (10, 10), (10, 11), (7, 100)])
def test_past_the_cap_oldest_telemetry_is_dropped_and_counted(
    tmp_path: Path, cap: int, appended: int
) -> None:
    b = Buffer(tmp_path / "b", boot=1, max_rows=cap)
    for i in range(appended):
        b.append("telemetry", {"i": i}, ts=float(i))
    dropped = b.dropped().get("telemetry", 0)
    assert b.pending() + dropped == appended
    assert b.pending() == min(cap, appended)
    survivors = [p.record.body["i"] for p in b.take(appended, set())]
    assert survivors == list(range(appended - b.pending(), appended))  # the newest
    b.close()


def test_drop_policy_spares_events_and_drift(tmp_path: Path) -> None:
    b = Buffer(tmp_path / "b", boot=1, max_rows=4)
    b.append("events", {"n": "e0"}, ts=0.0)
    b.append("drift", {"n": "d0"}, ts=0.0)
    b.append("telemetry", {"n": "t0"}, ts=0.0)
    b.append("telemetry", {"n": "t1"}, ts=0.0)
    b.append("telemetry", {"n": "t2"}, ts=0.0)  # drops t0
    assert b.dropped() == {"telemetry": 1}
    b.append("events", {"n": "e1"}, ts=0.0)  # drops t1
    b.append("events", {"n": "e2"}, ts=0.0)  # drops t2
    assert b.dropped() == {"telemetry": 3}
    b.append("events", {"n": "e3"}, ts=0.0)  # no telemetry left: drops the drift report
    assert b.dropped() == {"telemetry": 3, "drift": 1}
    b.append("events", {"n": "e4"}, ts=0.0)  # only events left: the oldest event goes
    assert b.dropped() == {"telemetry": 3, "drift": 1, "events": 1}
    assert [p.record.body["n"] for p in b.take(10, set())] == ["e1", "e2", "e3", "e4"]
    assert b.pending() == 4
    b.close()


def test_confirmations_make_room_without_dropping(tmp_path: Path) -> None:
    b = Buffer(tmp_path / "b", boot=1, max_rows=3)
    for i in range(3):
        b.append("telemetry", {"i": i}, ts=0.0)
    confirm(b, b.take(2, set()))
    b.append("telemetry", {"i": 3}, ts=0.0)
    b.append("telemetry", {"i": 4}, ts=0.0)
    assert b.dropped() == {}
    assert [p.record.body["i"] for p in b.take(10, set())] == [2, 3, 4]
    b.close()


def test_rows_survive_reopening_with_their_old_boot(tmp_path: Path) -> None:
    path = tmp_path / "buffer"
    first = Buffer(path, boot=5, max_rows=3)
    for i in range(5):
        first.append("telemetry", {"i": i}, ts=float(i))
    first.append("events", {"event": "healthy"}, ts=9.0)
    old = [p.record for p in first.take(10, set())]
    first.close()

    second = Buffer(path, boot=6, max_rows=3)
    assert second.pending() == 3
    assert second.dropped() == {"telemetry": 3}  # counters survive too
    events = second.take(10, set())
    assert [(p.kind, p.record.boot, p.record.seq) for p in events] == [("events", 5, 5)]
    assert events[0].record == old[0]
    confirm(second, events)
    telemetry = second.take(10, set())
    assert [(p.record.boot, p.record.seq, p.record.body) for p in telemetry] == [
        (5, 3, {"i": 3}),
        (5, 4, {"i": 4}),
    ]
    new = second.append("telemetry", {"i": "after reboot"}, ts=10.0)
    assert (new.boot, new.seq) == (6, 0)
    # (boot, seq) stays unique across the reboot
    keys = [(p.record.boot, p.record.seq) for p in second.take(10, set())]
    assert len(keys) == len(set(keys)) == 3
    second.close()


def test_unopenable_path_is_a_transport_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with pytest.raises(TransportError, match="cannot open the telemetry buffer"):
        Buffer(blocker / "buffer", boot=1)


# ---- byte cap, drop accounting, drain pacing -----------------------------------------------------
def test_past_the_byte_cap_drops_match_exactly_what_is_missing(tmp_path: Path) -> None:
    body = {"payload": "x" * 90}
    size = len(body_json(body, "test"))  # what the buffer keeps and counts
    buf = Buffer(tmp_path / "b", boot=1, max_rows=10_000, max_bytes=size * 40)
    buf.append("events", {"event": "installed"})
    sent = [buf.append("telemetry", body).seq for _ in range(100)]
    (event,) = buf.take(1000, set())  # one kind per take: the events first
    kept = {p.record.seq for p in buf.take(1000, {event.id})}
    missing = set(sent) - kept
    assert buf.dropped() == {"telemetry": len(missing)}
    assert missing == set(sent[: len(missing)])  # the oldest telemetry went first
    assert event.kind == "events"  # events survive
    assert 0 < len(kept) < 40
    buf.close()
    reopened = Buffer(tmp_path / "b", boot=2, max_rows=10_000, max_bytes=size * 40)
    assert reopened.pending() == 1 + len(kept) and reopened.dropped() == {"telemetry": len(missing)}
    reopened.close()


def test_token_bucket_paces_a_drain() -> None:
    from edge_agent.uplink.buffer import TokenBucket

    bucket = TokenBucket(rate=100, burst=100, now=0.0)
    assert bucket.take(80, now=0.0) == 80
    assert bucket.take(80, now=0.0) == 20  # the burst is spent
    assert bucket.take(80, now=0.0) == 0
    assert bucket.wait(now=0.0) == pytest.approx(0.01)
    assert bucket.take(80, now=0.5) == 50  # 100 a second
    granted = sum(bucket.take(10, now=1.0 + i / 100) for i in range(1000))
    assert granted == pytest.approx(1000, abs=110)  # 10 s at 100/s, plus at most one burst
    assert TokenBucket(0, 1, 0.0).take(10**6, 0.0) == 10**6  # 0: unlimited


# ---- caps per priority class ---------------------------------------------------------------
def test_next_drop_is_the_policy_in_plain_values() -> None:
    from edge_agent.uplink.buffer import Cap, next_drop

    total = Cap(max_rows=10, max_bytes=1000)
    caps = {"events": Cap(2), "drift": Cap(3, 300), "telemetry": Cap(8)}
    assert next_drop({}, "telemetry", 10, total, caps) is None
    # a class at its own cap loses its own oldest, whatever else is held
    assert next_drop({"events": (2, 20), "telemetry": (1, 10)}, "events", 10, total, caps) == (
        "events"
    )
    assert next_drop({"drift": (1, 295)}, "drift", 10, total, caps) == "drift"  # its bytes
    assert next_drop({"drift": (1, 295)}, "events", 10, total, caps) is None
    # the whole buffer at its cap: the least important class present goes first
    full = {"events": (2, 20), "drift": (3, 30), "telemetry": (5, 50)}
    assert next_drop(full, "events", 1, total, {}) == "telemetry"
    assert next_drop({"events": (2, 20), "drift": (8, 80)}, "telemetry", 1, total, caps) == "drift"
    assert next_drop({"events": (1, 995)}, "telemetry", 10, total, caps) == "events"
    # a record larger than every cap still goes into an empty buffer
    assert next_drop({}, "drift", 5000, total, caps) is None


def test_a_class_past_its_own_cap_drops_only_its_own(tmp_path: Path) -> None:
    from edge_agent.uplink.buffer import Cap

    caps = {"events": Cap(3), "drift": Cap(2), "telemetry": Cap(100)}
    b = Buffer(tmp_path / "b", boot=1, max_rows=1000, caps=caps)
    b.append("drift", {"n": "d0"})
    b.append("telemetry", {"n": "t0"})
    for i in range(5):  # a flood of events evicts old events, not the drift report
        b.append("events", {"n": f"e{i}"})
    assert b.dropped() == {"events": 2}
    assert b.usage()["events"][0] == 3 and b.usage()["drift"][0] == 1
    assert [p.record.body["n"] for p in b.take(10, set())] == ["e2", "e3", "e4"]
    b.close()


@pytest.mark.parametrize("seed", range(4))
def test_filled_past_its_caps_the_drop_counters_match_what_is_missing(
    tmp_path: Path, seed: int
) -> None:
    """Random kinds and body sizes, some confirmed on the way: per class, what was appended =
    what is still held + what was confirmed + what the counters say was dropped."""
    import random

    from edge_agent.uplink.buffer import Cap

    rng = random.Random(seed)
    caps = {"events": Cap(15, 3000), "drift": Cap(20), "telemetry": Cap(60, 6000)}
    b = Buffer(tmp_path / "b", boot=1, max_rows=80, max_bytes=9000, caps=caps)
    appended: dict[str, set[int]] = {"events": set(), "drift": set(), "telemetry": set()}
    confirmed: dict[str, set[int]] = {k: set() for k in appended}
    for i in range(600):
        kind = rng.choice(["telemetry"] * 6 + ["drift"] * 2 + ["events"])
        appended[kind].add(b.append(kind, {"pad": "x" * rng.randrange(200)}).seq)
        if i % 97 == 0:  # the hub confirmed one batch
            batch = b.take(5, set())
            confirm(b, batch)
            confirmed[batch[0].kind] |= {p.record.seq for p in batch}
    held: dict[str, set[int]] = {k: set() for k in appended}
    seen: set[int] = set()
    while batch := b.take(1000, seen):
        seen |= {p.id for p in batch}
        held[batch[0].kind] |= {p.record.seq for p in batch}
        size = sum(len(p.body) for p in batch)
        assert size <= (caps[batch[0].kind].max_bytes or 9000)
    dropped = b.dropped()
    for kind, seqs in appended.items():
        missing = seqs - held[kind] - confirmed[kind]
        assert dropped.get(kind, 0) == len(missing), kind
        assert len(held[kind]) <= caps[kind].max_rows
        if missing and held[kind]:  # the oldest went first
            assert max(missing) < min(held[kind]), kind
    assert dropped.get("telemetry", 0) > 0 and sum(len(h) for h in held.values()) <= 80
    # the running tally agrees with what is there
    assert {k: rows for k, (rows, _) in b.usage().items()} == {k: len(h) for k, h in held.items()}
    b.close()
    reopened = Buffer(tmp_path / "b", boot=2, max_rows=80, max_bytes=9000, caps=caps)
    assert reopened.usage() == b.usage() and reopened.dropped() == dropped
    reopened.close()


# ---- a disk that fills or goes read-only (real tmpfs mounts) ---------------------------------
def _seqs_on_disk(folder: Path) -> list[int]:
    return [seq for _, seq in on_disk(folder)]


def test_a_full_disk_fails_the_append_as_itself_and_the_buffer_goes_on(
    tmp_path: Path, tmpfs: Any
) -> None:
    """The error says the disk is full, nothing of the record was written (a line half
    written is cut back), its seq is not used up, and once space returns the buffer goes on."""
    import errno

    disk = tmpfs(tmp_path / "disk", "256k")
    folder = disk.path / "buffer"
    buf = Buffer(folder, boot=1, max_rows=100_000)
    kept = [buf.append("telemetry", {"i": i, "pad": "x" * 200}).seq for i in range(5)]
    disk.fill()
    with pytest.raises(StorageError) as info:
        for i in range(5, 10_000):  # what the last page has left goes first
            kept.append(buf.append("telemetry", {"i": i, "pad": "x" * 200}).seq)
    err = info.value
    assert err.reason == "disk-full", err
    assert "No space left on device" in str(err)
    assert isinstance(err.__cause__, OSError) and err.__cause__.errno == errno.ENOSPC
    assert buf.pending() == len(kept) and buf.usage()["telemetry"][0] == len(kept)
    assert _seqs_on_disk(folder) == kept  # nothing of the refused one
    with pytest.raises(StorageError):  # and again, the same way, while the disk stays full
        buf.append("events", {"event": "healthy", "pad": "x" * 200})
    assert buf.pending() == len(kept) and _seqs_on_disk(folder) == kept

    disk.free()
    after = buf.append("telemetry", {"i": "after"})
    assert after.seq == len(kept)  # no gap: the failed appends used no seq
    assert buf.pending() == len(kept) + 1
    buf.close()
    assert _seqs_on_disk(folder) == list(range(len(kept) + 1))


def test_a_read_only_disk_keeps_the_buffer_closed_until_it_is_writable(
    tmp_path: Path, tmpfs: Any
) -> None:
    """Two ways a read-only disk shows: a buffer closed cleanly, and the files a killed agent
    left (a record appended, nothing closed). Both are refused at open, as read-only; both open
    once it is rw, the killed one's record still there."""
    import subprocess
    import sys

    disk = tmpfs(tmp_path / "disk", "1m")
    clean, crashed = disk.path / "clean", disk.path / "crashed"
    Buffer(clean, boot=1).close()
    left = (
        "import os, sys; from pathlib import Path; from edge_agent.uplink.buffer import Buffer;"
        "Buffer(Path(sys.argv[1]), boot=1).append('events', {'event': 'installed'});"
        "os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", left, str(crashed)], check=True, timeout=60)
    assert _seqs_on_disk(crashed) == [0]
    disk.remount(read_only=True)
    for path in (clean, crashed):
        buf = Buffer(path, None)
        assert not buf.opened and buf.pending() == 0 and buf.dropped() == {}
        with pytest.raises(StorageError) as info:
            buf.open(2)
        assert info.value.reason == "read-only", info.value
        assert not buf.opened
        with pytest.raises(StorageError):
            buf.append("telemetry", {})
        buf.close()  # closing a closed buffer is no error
    disk.remount(read_only=False)
    for path in (clean, crashed):
        buf = Buffer(path, None)
        buf.open(2)
        assert (buf.append("telemetry", {"n": 1}).boot, buf.appended) == (2, 1)
        buf.close()
    assert _seqs_on_disk(crashed) == [0, 0]  # boot 1's event and boot 2's record


def test_storage_errors_name_the_reason() -> None:
    import errno

    from edge_agent.system.fsutil import storage_error

    where = Path("/nowhere/state/boot")
    cases = [
        (OSError(errno.ENOSPC, "No space left on device"), "disk-full"),
        (OSError(errno.EROFS, "Read-only file system"), "read-only"),
        (OSError(errno.EPERM, "Operation not permitted"), "permission"),
        (OSError(errno.EACCES, "Permission denied"), "permission"),
        (OSError(errno.EIO, "Input/output error"), "io-error"),
    ]
    for exc, reason in cases:
        err = storage_error(exc, where)
        assert (err.reason, err.where) == (reason, str(where)), exc
        assert str(err).startswith(f"{STORAGE_REASONS[reason]}: {where}: "), err
    assert storage_error(OSError(errno.ENOTDIR, "Not a directory"), where).reason == "write-failed"
