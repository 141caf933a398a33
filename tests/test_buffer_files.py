"""The buffer's files (edge_agent.uplink.buffer, formats in edge_agent.uplink.recordlog): a
record whose `append` returned survives a SIGKILL of the agent, exactly once, whatever the
buffer was doing (appending, copying a segment forward, rewriting its gone log). A child
process appends and says on its stdout what each call returned; the test kills it (SIGKILL)
where the world would and counts with the files' plain text against what was said."""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edge_agent.protocol.messages import spans_of
from edge_agent.uplink import buffer as buffer_module
from edge_agent.uplink.buffer import Buffer
from edge_agent.uplink.caps import Cap
from tests.support.buffer_files import on_disk
from tests.support.processes import processes  # noqa: F401  (a fixture)

GROUP = 50
CHILD = """
import os, signal, sys
from pathlib import Path
from edge_agent.uplink import buffer as module
from edge_agent.uplink.buffer import Buffer
from edge_agent.protocol.messages import spans_of

module.SEGMENT_BYTES = 4096  # many segments, so sealing and copying forward happen
path, mode = Path(sys.argv[1]), sys.argv[2]
buf = Buffer(path, boot=int(sys.argv[3]), group_rows={group}, group_window_s=60.0)

def say(line):
    sys.stdout.write(line + "\\n")
    sys.stdout.flush()

if mode == "stream":  # append for ever, each returned seq said
    while True:
        say(str(buf.append("telemetry", {{"count": 400, "cpu_pct": 12.5}}).seq))
elif mode == "copy-then-die":  # killed after a copy forward, before the old segment goes
    kept = [buf.append("events", {{"i": 0, "pad": "x" * 200}})]  # pins the first segment
    sent = [buf.append("telemetry", {{"i": i, "pad": "x" * 200}}) for i in range(1, 15)]
    buf.confirm(spans_of(sent))  # the first segment now holds one record of 15
    os.unlink = lambda path: os.kill(os.getpid(), signal.SIGKILL)
    for i in range(15, 40):
        buf.append("telemetry", {{"i": i, "pad": "x" * 200}})
    say("not killed")
elif mode == "commands":  # one command a line on stdin: "append PAD" or "flush"
    for line in sys.stdin:
        op, *arg = line.split()
        try:
            if op == "append":
                say("kept " + str(buf.append("telemetry", {{"pad": "x" * int(arg[0])}}).seq))
            else:
                buf.flush()
                say("flushed")
        except Exception as exc:
            say("refused " + getattr(exc, "reason", type(exc).__name__))
"""


def spawn(
    started: list[subprocess.Popen[str]], path: Path, mode: str, boot: int = 1
) -> subprocess.Popen[str]:
    script = path.parent.parent / f"child-{mode}.py"
    script.write_text(CHILD.format(group=GROUP), encoding="utf-8")
    proc = subprocess.Popen(
        [sys.executable, str(script), str(path), mode, str(boot)],
        stdin=subprocess.PIPE if mode == "commands" else None,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    started.append(proc)
    return proc


def held(folder: Path, boot: int) -> list[tuple[int, int]]:
    """The agent's next start: the buffer opened under a new boot; (boot, seq) of all it holds."""
    buf = Buffer(folder, boot=boot, group_rows=GROUP, group_window_s=60.0)
    seen: set[int] = set()
    try:
        while batch := buf.take(1_000_000, seen):  # one kind a take
            seen |= {p.id for p in batch}
        return sorted(p.key for p in buf.get(seen))
    finally:
        buf.close()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_kill_anywhere_keeps_exactly_the_records_whose_append_returned(
    tmp_path: Path,
    processes: list[subprocess.Popen[str]],  # noqa: F811
    seed: int,
) -> None:
    path = tmp_path / "disk" / "buffer"
    path.parent.mkdir()
    proc = spawn(processes, path, "stream")
    assert proc.stdout is not None
    kill_after = random.Random(seed).randrange(1, 8 * GROUP)  # mid-group, or a few segments in
    returned: list[int] = []
    for line in proc.stdout:
        returned.append(int(line))
        if len(returned) > kill_after:
            break
    proc.kill()
    proc.wait(10)
    returned += [int(line) for line in proc.stdout]  # said before it died, read after
    kept = on_disk(path)
    assert len(kept) == len(set(kept))  # each once
    seqs = [seq for _, seq in kept]
    # every returned record, in order and with no hole; at most the one it was appending
    # when killed beyond them (written, its `append` cut short before it returned)
    assert seqs[: len(returned)] == returned == list(range(len(returned)))
    assert len(seqs) - len(returned) in (0, 1)
    assert held(path, boot=2) == kept


def test_a_kill_between_a_copy_forward_and_the_old_segment_going_duplicates_nothing(
    tmp_path: Path,
    processes: list[subprocess.Popen[str]],  # noqa: F811
) -> None:
    path = tmp_path / "disk" / "buffer"
    path.parent.mkdir()
    proc = spawn(processes, path, "copy-then-die")
    assert proc.stdout is not None
    assert proc.stdout.read() == ""  # killed at the first segment deleted, before saying anything
    assert proc.wait(10) == -9
    copies = on_disk(path)
    confirmed = [(1, seq) for seq in range(1, 15)]
    later = sorted(set(copies) - {(1, 0), *confirmed})  # appended since, before the seal
    # the old segment (the event, 14 confirmed records, any since) and what it held, copied
    assert copies.count((1, 0)) == 2 and all(copies.count(key) == 1 for key in confirmed)
    for boot in (2, 3):  # the event once, the confirmed gone; a second start finds the same
        assert held(path, boot) == [(1, 0), *later]


def test_records_copied_forward_are_on_the_disk_before_their_old_segment_goes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A power cut right after a copy forward loses nothing: the segment the records were
    copied to is fsynced after the copies and before the old segment is deleted."""
    monkeypatch.setattr(buffer_module, "SEGMENT_BYTES", 4096)
    folder = tmp_path / "buffer"
    buf = Buffer(folder, boot=1)
    buf.append("events", {"i": 0, "pad": "x" * 200})  # pins the first segment
    sent = [buf.append("telemetry", {"i": i, "pad": "x" * 200}) for i in range(1, 15)]
    buf.confirm(spans_of(sent))  # the first segment now holds one record of 15
    unsynced: set[int] = set()  # files written to since their last fsync
    deleted: list[tuple[str, set[int]]] = []
    write, fsync, unlink = os.write, os.fsync, os.unlink

    def watched_write(fd: int, data: bytes) -> int:
        unsynced.add(fd)
        return write(fd, data)

    def watched_fsync(fd: int) -> None:
        unsynced.discard(fd)
        fsync(fd)

    def watched_unlink(path: Any) -> None:
        deleted.append((Path(path).name, set(unsynced)))
        unlink(path)

    monkeypatch.setattr(os, "write", watched_write)
    monkeypatch.setattr(os, "fsync", watched_fsync)
    monkeypatch.setattr(os, "unlink", watched_unlink)
    for i in range(15, 40):
        buf.append("telemetry", {"i": i, "pad": "x" * 200})
    monkeypatch.undo()
    assert [name for name, _ in deleted][:1] == ["1.log"]
    assert deleted[0][1] == set(), "copies not fsynced before their segment was deleted"
    buf.close()


def test_a_disk_full_during_a_write_keeps_nothing_of_it_and_loses_nothing(
    tmp_path: Path,
    tmpfs: Any,
    processes: list[subprocess.Popen[str]],  # noqa: F811
) -> None:
    """A line that meets a full disk is cut back (even when the disk took part of it: a line
    longer than what its last page has left), its seq is not used, and after a kill the
    reopened buffer holds each accepted record once."""
    disk = tmpfs(tmp_path / "disk", "512k")
    path = disk.path / "buffer"
    proc = spawn(processes, path, "commands")
    assert proc.stdin is not None and proc.stdout is not None

    def ask(command: str) -> str:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(command + "\n")
        proc.stdin.flush()
        return proc.stdout.readline().strip()

    accepted = [int(ask("append 100").split()[1]) for _ in range(GROUP + 7)]
    assert accepted == list(range(GROUP + 7))
    disk.fill()
    sizes = {p.name: p.stat().st_size for p in path.iterdir()}
    assert any(size % 4096 for size in sizes.values())  # a last page with room: half written
    answers = [ask("append 20000") for _ in range(3)]
    assert answers == ["refused disk-full"] * 3, answers
    after = {p.name: p.stat().st_size for p in path.iterdir()}
    assert {name: after[name] for name in sizes} == sizes  # cut back each time
    assert not any(size for name, size in after.items() if name not in sizes)  # a new segment
    disk.free()
    accepted.append(int(ask("append 100").split()[1]))
    assert accepted[-1] == GROUP + 7  # the refused used no seq
    proc.kill()
    proc.wait(10)
    assert on_disk(path) == [(1, seq) for seq in accepted]
    assert held(path, boot=2) == [(1, seq) for seq in accepted]


def test_a_gone_line_a_full_disk_cut_short_does_not_eat_the_next(
    tmp_path: Path, tmpfs: Any
) -> None:
    """A confirmation whose line the full disk took part of is cut back (its records come
    back after a restart, to be sent again); the next confirmation, written once space
    returns, is not glued to that half line and lost."""
    disk = tmpfs(tmp_path / "disk", "256k")
    folder = disk.path / "buffer"
    buf = Buffer(folder, boot=1)
    for i in range(1200):
        buf.append("telemetry", {"i": i})
    gone = folder / "gone.log"
    seq = 0
    while not 1 <= 4096 - gone.stat().st_size % 4096 < 12:  # its last page nearly full
        buf.confirm([(1, seq, seq)])
        seq += 2
    disk.fill()
    assert buf.confirm([(1, 1001, 1001)]) == 1  # "c 1 1001 1001" is 14 bytes: part fits
    assert gone.read_bytes().endswith(b"\n")  # cut back
    disk.free()
    assert buf.confirm([(1, 1003, 1003)]) == 1
    buf.close()
    came_back = {seq for _, seq in held(folder, boot=2)}
    assert 1001 in came_back and 1003 not in came_back


def test_a_gone_line_cut_short_is_cut_off(tmp_path: Path) -> None:
    """What a power cut leaves at the gone log's end is cut off when the buffer opens: the
    next line is read on its own."""
    folder = tmp_path / "buffer"
    buf = Buffer(folder, boot=1)
    for i in range(4):
        buf.append("telemetry", {"i": i})
    buf.close()
    with (folder / "gone.log").open("ab") as f:
        f.write(b"c\t1\t0")
    again = Buffer(folder, boot=2)
    assert again.confirm([(1, 2, 2)]) == 1
    again.close()
    assert held(folder, boot=3) == [(1, 0), (1, 1), (1, 3)]


def test_a_line_a_kill_cut_short_is_no_record_and_is_cut_off(tmp_path: Path) -> None:
    """What a kill in the middle of a write leaves at a segment's end: the buffer reads the
    records before it, cuts it off, and appends after them."""
    folder = tmp_path / "buffer"
    buf = Buffer(folder, boot=1)
    for i in range(3):
        buf.append("telemetry", {"i": i})
    buf.close()
    (segment,) = folder.glob("[0-9]*.log")
    with segment.open("ab") as f:
        f.write(b'telemetry\t1\t3\t1.5\t{"i":')
    again = Buffer(folder, boot=2)
    assert again.append("events", {"event": "up"}).seq == 0
    again.close()
    assert segment.read_bytes().endswith(b"\n")
    assert on_disk(folder) == [(1, 0), (1, 1), (1, 2), (2, 0)]


def test_the_gone_log_is_rewritten_and_says_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Confirmations and drops, many: the gone log stays small (rewritten past a size), and a
    reopened buffer holds what the running one held, with the same drop counts."""
    monkeypatch.setattr(buffer_module, "GONE_BYTES", 2048)
    monkeypatch.setattr(buffer_module, "SEGMENT_BYTES", 8192)
    folder = tmp_path / "buffer"
    buf = Buffer(folder, boot=1, max_rows=50)
    rng = random.Random(7)
    for i in range(3000):
        buf.append(rng.choice(["telemetry", "telemetry", "events"]), {"i": i})
        if i % 7 == 0:
            batch = buf.take(rng.randrange(1, 9), set())
            buf.confirm([(p.boot, p.seq, p.seq) for p in batch])
    keys, counts, dropped = [p.key for p in buf.take(10_000, set())], buf.usage(), buf.dropped()
    buf.close()
    assert (folder / "gone.log").stat().st_size < 3 * 2048
    assert sum(p.stat().st_size for p in folder.glob("[0-9]*.log")) < 3 * 8192
    again = Buffer(folder, boot=2, max_rows=50)
    assert [p.key for p in again.take(10_000, set())] == keys
    assert again.usage() == counts and again.dropped() == dropped and sum(dropped.values()) > 0
    again.close()


def test_the_gone_log_stays_small_while_an_old_record_is_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One old record held all along (a label the hub has not yet taken) keeps every later
    span in the gone log; rewritten, spans that meet are one, so the log stays about the
    size it is rewritten at, and says the same."""
    monkeypatch.setattr(buffer_module, "GONE_BYTES", 2048)
    monkeypatch.setattr(buffer_module, "SEGMENT_BYTES", 8192)
    folder = tmp_path / "buffer"
    buf = Buffer(folder, boot=1, caps={"telemetry": Cap(20)})
    buf.append("labels", {"label": "cat"})
    for i in range(3000):
        buf.append("events" if i % 3 == 0 else "telemetry", {"i": i})
        if i % 10 == 0:
            buf.confirm([(p.boot, p.seq, p.seq) for p in buf.take(5, set()) if p.kind == "events"])
    keys, counts, dropped = [p.key for p in buf.take(10_000, set())], buf.usage(), buf.dropped()
    buf.close()
    assert (folder / "gone.log").stat().st_size < 3 * 2048
    again = Buffer(folder, boot=2, caps={"telemetry": Cap(20)})
    assert [p.key for p in again.take(10_000, set())] == keys
    assert again.usage() == counts and again.dropped() == dropped
    again.close()


def test_an_earlier_release_s_sqlite_buffer_is_moved_in(tmp_path: Path) -> None:
    """A device upgraded from a release that kept its buffer in SQLite (buffer.sqlite and the
    staging journal of its group commit) sends what it held, with the same (boot, seq), and
    keeps its drop counts; the old files go."""
    old = tmp_path / "buffer.sqlite"
    db = sqlite3.connect(old)
    db.executescript(
        "CREATE TABLE records (id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, "
        "priority INTEGER NOT NULL, boot INTEGER NOT NULL, seq INTEGER NOT NULL, "
        "ts REAL NOT NULL, body TEXT NOT NULL);"
        "CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);"
    )
    db.executemany(
        "INSERT INTO records (kind, priority, boot, seq, ts, body) VALUES (?, ?, ?, ?, ?, ?)",
        [("telemetry", 2, 4, 7, 1.0, '{"i":7}'), ("events", 0, 4, 8, 2.0, '{"event":"up"}')],
    )
    db.executemany(
        "INSERT INTO counters VALUES (?, ?)",
        [("moved.boot", 4), ("moved.seq", 8), ("dropped.telemetry", 5)],
    )
    db.commit()
    db.close()
    staged = tmp_path / "buffer.sqlite-staged"
    staged.write_bytes(  # one line already moved, one not, one cut short by a kill
        b'events\t4\t8\t2.0\t{"event":"up"}\ntelemetry\t4\t9\t3.0\t{"i":9}\ntelemetry\t4\t1'
    )
    buf = Buffer(tmp_path / "buffer", boot=5)
    assert not old.exists() and not staged.exists()
    events, telemetry = buf.take(10, set()), buf.take(10, {p.id for p in buf.take(10, set())})
    assert [(p.kind, p.key, p.ts, p.body) for p in events + telemetry] == [
        ("events", (4, 8), 2.0, '{"event":"up"}'),
        ("telemetry", (4, 7), 1.0, '{"i":7}'),
        ("telemetry", (4, 9), 3.0, '{"i":9}'),
    ]
    assert buf.dropped() == {"telemetry": 5}
    buf.close()
    again = Buffer(tmp_path / "buffer", boot=6)
    assert again.pending() == 3 and again.dropped() == {"telemetry": 5}
    again.close()


def test_an_earlier_release_s_buffer_that_cannot_be_read_is_set_aside(tmp_path: Path) -> None:
    """A damaged SQLite file does not keep the buffer closed for ever: it is renamed aside (for
    a person to look at), said in the log, and the buffer opens."""
    old = tmp_path / "buffer.sqlite"
    old.write_bytes(b"not a database, a file cut short by a power cut" * 100)
    buf = Buffer(tmp_path / "buffer", boot=2)
    assert buf.opened and buf.pending() == 0
    assert not old.exists() and (tmp_path / "buffer.sqlite.unreadable").exists()
    assert buf.append("telemetry", {"n": 1}).seq == 0
    buf.close()


def test_lines_a_power_cut_damaged_are_skipped_and_the_rest_is_sent(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """What a power cut can leave in the middle of a segment (zeros where a line was, a line
    whose fields are not numbers): skipped with a warning, each other record read and sent."""
    folder = tmp_path / "buffer"
    buf = Buffer(folder, boot=1)
    buf.append("telemetry", {"i": 0})
    buf.close()
    (segment,) = folder.glob("[0-9]*.log")
    with segment.open("ab") as f:
        f.write(b"\0" * 300 + b"\n")
        f.write(b'telemetry\t1\t1\tnan\t{"i":1}\n')
        f.write(b'telemetry\t1\tx\t1.0\t{"i":1}\n')
        f.write(b'weather\t1\t1\t1.0\t{"i":1}\n')
        f.write(b'telemetry\t1\t2\t2.5\t{"i":2}\n')
    again = Buffer(folder, boot=2)
    first, last = again.take(10, set())
    assert (first.key, first.record.body) == ((1, 0), {"i": 0})
    assert (last.key, last.ts, last.record.body) == ((1, 2), 2.5, {"i": 2})
    again.close()
    assert caplog.text.count("does not parse") == 4


def test_a_segment_that_cannot_be_deleted_keeps_its_records_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A segment the disk will not let go (unlink refused) stays on it with records the hub
    confirmed: the gone log, rewritten meanwhile, still says they are gone, so a restart does
    not send them again."""
    monkeypatch.setattr(buffer_module, "GONE_BYTES", 1024)
    monkeypatch.setattr(buffer_module, "SEGMENT_BYTES", 2048)
    real = os.unlink

    def refuse_segments(path: Any, *args: Any, **kwargs: Any) -> None:
        if str(path).endswith(".log"):
            raise PermissionError(1, "Operation not permitted", str(path))
        real(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", refuse_segments)
    folder = tmp_path / "buffer"
    buf = Buffer(folder, boot=1)
    for i in range(600):  # many segments, each refused its deletion, and gone-log rewrites
        record = buf.append("telemetry", {"i": i, "pad": "x" * 40})
        buf.confirm([(record.boot, record.seq, record.seq)])
    kept = buf.append("events", {"event": "last"})
    buf.close()
    monkeypatch.setattr(os, "unlink", real)
    assert len(on_disk(folder)) == 601  # every segment still there
    assert held(folder, boot=2) == [(kept.boot, kept.seq)]
