"""Store-and-forward buffer: SQLite in WAL mode, records deleted only when the hub confirms it
committed them (`confirm`, from the hub's message on dev/{id}/ack), never on the broker's PUBACK.

Each record carries (boot, seq), so the hub can drop what it has already stored when a record is
sent twice (after a lost confirmation, a reconnect, a crash or a broker that lost its queue).
Caps, in rows and in bytes (bodies' JSON size), hold per priority class and for the whole
buffer. `next_drop` is the drop policy, pure: a class past its own cap loses its own oldest
record (a flood of events never evicts a drift report); past the whole buffer's cap the oldest
record of the least important class goes (telemetry before labels before drift before events).
Every drop is counted, per kind.

A full, read-only or failing disk is the device's everyday weather: a record that cannot be
kept raises StorageError (nothing of it was written, and its seq is not used up, so a boot's
seqs have no gap), and the buffer goes on when the disk does. A buffer made without a boot is
closed until `open(boot)`: the agent opens it only under a boot it has persisted.

Group commit. With `group_rows` 1 each `append` is its own transaction. With `group_rows` N > 1
(the agent's default), `append` writes the record as one line to a staging journal next to the
SQLite file (`<name>-staged`, append-only, one `os.write`) and stages it in memory; one
transaction moves the staged records into SQLite when N are staged, when `group_window_s` has
passed since the first of them (a thread of the buffer's own commits then), at `flush()`,
before `take` and at `close()`, and the journal is then truncated. The same transaction records
the last (boot, seq) it moved, so `open` replays the journal's records past that mark and only
those: a kill between the COMMIT and the truncation duplicates nothing. A line cut short by a
kill belongs to an `append` that never returned and is ignored. What a caller can rely on:

- when `append` returns, the record survives a SIGKILL of the agent (group commit or not);
- the hub is only ever sent records committed to SQLite: `take` commits first;
- a journal write that fails (a full disk, even half written) is cut back: StorageError,
  nothing of the record kept, its seq not used;
- a commit that fails (a full disk) writes nothing: the append that filled the group is
  refused (StorageError, its seq not used, its journal line cut back), the records staged
  before it stay staged (and in the journal) and are tried again at the next commit point
  (the window, `flush`, `take`, the next full group, the next `open`).

"Survives" is what the kernel holds for a killed process: SQLite's WAL with synchronous=NORMAL
and the journal's written lines alike. Neither is fsynced per record: a power cut may lose the
journal's lines and the commits since the last checkpoint, never corrupt the file.

`TokenBucket` paces the drain after a reconnect, so a returning fleet does not flatten the hub.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from edge_agent.errors import ConfigError, MessageError, StorageError
from edge_agent.protocol.messages import Record, Span, body_json, record_json
from edge_agent.system.fsutil import storage_error
from edge_agent.uplink.caps import Cap

log = logging.getLogger(__name__)

# Sent in this order, dropped past the whole buffer's cap in the reverse. Buffers written before
# labels existed hold the integers 0-2 in their `priority` column: labels rank between drift
# and telemetry as 1.5.
PRIORITY: dict[str, float] = {"events": 0, "drift": 1, "labels": 1.5, "telemetry": 2}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    priority INTEGER NOT NULL,
    boot INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    ts REAL NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_order ON records (priority, id);
CREATE INDEX IF NOT EXISTS records_key ON records (boot, seq);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
# counters rows holding the last (boot, seq) moved from the staging journal into SQLite
_MOVED = ("moved.boot", "moved.seq")


def next_drop(
    usage: Mapping[str, tuple[int, int]],
    kind: str,
    incoming: int,
    total: Cap,
    caps: Mapping[str, Cap],
) -> str | None:
    """The class whose oldest record goes before a `kind` record of `incoming` bytes is added,
    or None when it fits. `usage` is kind -> (rows, bytes) now; call again after each drop."""
    rows, size = usage.get(kind, (0, 0))
    cap = caps.get(kind)
    if cap is not None and cap.full(rows, size, incoming):
        return kind
    all_rows = sum(r for r, _ in usage.values())
    all_bytes = sum(b for _, b in usage.values())
    if not total.full(all_rows, all_bytes, incoming):
        return None
    return max((k for k, (r, _) in usage.items() if r), key=PRIORITY.__getitem__)


_Row = tuple[str, float, int, int, float, str]  # kind, priority, boot, seq, ts, body's JSON


class Pending(NamedTuple):
    """A record held in the buffer, as kept: its body is the JSON text `append` wrote, which
    goes into a batch as it is (`wire`), never parsed and dumped again on the way out."""

    id: int
    kind: str
    boot: int
    seq: int
    ts: float
    body: str  # the body's JSON

    @property
    def key(self) -> tuple[int, int]:
        return self.boot, self.seq

    @property
    def record(self) -> Record:
        return Record(self.boot, self.seq, self.ts, json.loads(self.body))

    def wire(self) -> str:
        """The record's JSON in a batch (`Record.to_json`'s), from the kept text."""
        return record_json(self.boot, self.seq, self.ts, self.body)


def journal_line(row: _Row) -> bytes:
    """One staged record as a journal line. The body's JSON (`body_json`: ASCII) holds no tab
    and no newline, and a kind is a word: tabs part the fields, a newline ends the line."""
    kind, _, boot, seq, ts, text = row
    return f"{kind}\t{boot}\t{seq}\t{ts!r}\t{text}\n".encode()


def journal_rows(data: bytes, after: tuple[int, int]) -> list[_Row]:
    """The records of a journal's bytes whose (boot, seq) is past `after` (those at or before
    it are already in SQLite), in order. A last line without its newline, or a line that does
    not parse, was cut short by a kill during its write: its `append` never returned."""
    rows: list[_Row] = []
    for line in data.split(b"\n")[:-1]:  # what follows the last newline is unfinished
        try:
            kind, boot, seq, ts, text = line.decode().split("\t", 4)
            row = (kind, PRIORITY[kind], int(boot), int(seq), float(ts), text)
        except (ValueError, KeyError, UnicodeDecodeError):
            log.warning("a staging journal line that does not parse is skipped: %.80r", line)
            continue
        if (row[2], row[3]) > after:
            rows.append(row)
    return rows


class Buffer:
    def __init__(
        self,
        path: Path,
        boot: int | None,
        max_rows: int = 100_000,
        max_bytes: int | None = None,
        caps: Mapping[str, Cap] | None = None,
        group_rows: int = 1,
        group_window_s: float = 0.0,
    ) -> None:
        if group_rows < 1 or group_window_s < 0 or (group_rows > 1 and group_window_s <= 0):
            raise ConfigError(
                "a buffer's group commit expected group_rows >= 1 and, past 1, a positive "
                f"group_window_s, found {group_rows} and {group_window_s}"
            )
        self.path = path
        self.group_rows = group_rows
        self.group_window_s = group_window_s
        self.boot = 0
        self.total = Cap(max_rows, max_bytes)
        self.caps = dict(caps or {})  # kind -> its own cap
        self._lock = threading.Lock()
        self._staged: list[_Row] = []  # appended, not yet committed (group commit)
        self._due = 0.0  # monotonic time by which the staged records are committed
        self._commits = threading.Condition(self._lock)  # wakes the group-commit thread
        self._seq = 0
        self._conn: sqlite3.Connection | None = None
        self.journal = path.with_name(path.name + "-staged")
        self._journal_fd = -1  # open while the buffer is
        self._journal_size = 0  # bytes of staged records' lines in it
        self._usage: dict[str, tuple[int, int]] = {}
        self._dropped: Counter[str] = Counter()  # the counters table, as committed
        if boot is not None:
            self.open(boot)

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StorageError("write-failed", str(self.path), "the telemetry buffer is not open")
        return self._conn

    @property
    def opened(self) -> bool:
        return self._conn is not None

    def open(self, boot: int) -> None:
        """Open the file; records appended from now on carry `boot`. StorageError when it cannot
        be opened for writing (a read-only or full disk): the buffer stays closed then."""
        with self._lock:
            if self._conn is not None:
                raise RuntimeError(f"{self.path}: the telemetry buffer is already open")
            db = None
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.executescript(_SCHEMA)
                # SQLite opens a file it may not write read-only, and stays so after the disk
                # comes back: a write that is rolled back tells before any record is refused
                db.execute("BEGIN IMMEDIATE")
                db.execute("INSERT OR REPLACE INTO counters (name, value) VALUES ('probe', 0)")
                db.execute("ROLLBACK")
                usage = _count(db)
                counters = dict(db.execute("SELECT name, value FROM counters").fetchall())
                fd = os.open(self.journal, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            except (sqlite3.Error, OSError) as exc:
                if db is not None:
                    db.close()
                err = storage_error(exc, self.path)
                raise StorageError(
                    err.reason, err.where, f"cannot open the telemetry buffer ({err.detail})"
                ) from exc
            self._conn, self.boot, self._seq, self._usage = db, boot, 0, usage
            self._dropped = Counter(
                {
                    n.removeprefix("dropped."): int(v)
                    for n, v in counters.items()
                    if n[:8] == "dropped."
                }
            )
            self._journal_fd = fd
            self._replay(tuple(int(counters.get(name, -1)) for name in _MOVED))
            if self.group_rows > 1:
                threading.Thread(
                    target=self._commit_in_time, args=(db,), name="buffer-commit", daemon=True
                ).start()

    def _replay(self, moved: tuple[int, ...]) -> None:
        """Stage the journal's records not yet in SQLite (past `moved`, the last (boot, seq)
        moved) and move them now; if the disk refuses, they stay staged (and in the journal)
        for the next commit point."""
        data = b""
        while chunk := os.read(self._journal_fd, 1 << 20):
            data += chunk
        self._staged = journal_rows(data, (moved[0], moved[1]))
        self._journal_size = len(data)
        if not self._staged:
            self._truncate_journal(0)
            return
        log.info(
            "%s: %d staged records replayed from %s", self.path, len(self._staged), self.journal
        )
        self._due = time.monotonic() + self.group_window_s
        try:
            self._commit()
        except StorageError as exc:
            log.error("%s: replayed records wait for the disk: %s", self.path, exc)

    def _write_journal(self, row: _Row) -> None:
        """Append one staged record's line (the lock held). A failed or short write is cut
        back to what the journal held before: StorageError, nothing of the record kept."""
        line = journal_line(row)
        try:
            written = os.write(self._journal_fd, line)
            if written != len(line):
                raise OSError(28, os.strerror(28))  # ENOSPC: a short write on a full disk
        except OSError as exc:
            self._truncate_journal(self._journal_size)
            raise storage_error(exc, self.journal) from exc
        self._journal_size += written

    def _truncate_journal(self, size: int) -> None:
        """Cut the journal to `size` bytes. A failure is logged: the moved mark keeps a replay
        from duplicating what the journal still holds."""
        try:
            os.ftruncate(self._journal_fd, size)
        except OSError as exc:
            log.warning("%s: cannot truncate the staging journal: %s", self.journal, exc)
            return
        self._journal_size = size

    def append(self, kind: str, body: dict[str, Any], ts: float | None = None) -> Record:
        """Keep one record under the next seq of this boot: when it returns, the record survives
        a SIGKILL (committed to SQLite, or, under group commit, written to the staging journal;
        see the module's docstring). StorageError when it cannot be kept, MessageError when the
        body is not JSON (NaN, a value JSON has no form for): then nothing of it was written and
        its seq is the next record's."""
        at = time.time() if ts is None else ts
        if not math.isfinite(at):
            raise MessageError(f"a {kind} record: expected a finite timestamp, got {at!r}")
        text = body_json(body, f"a {kind} record")
        with self._lock:
            _ = self._db  # StorageError when closed
            row = (kind, PRIORITY[kind], self.boot, self._seq, at, text)
            before = self._journal_size
            if self.group_rows > 1:
                self._write_journal(row)
            self._staged.append(row)
            self._seq += 1
            if len(self._staged) >= self.group_rows:
                try:
                    self._commit()
                except BaseException:
                    self._staged.pop()  # this one was not kept: the earlier ones wait
                    self._seq -= 1
                    self._truncate_journal(before)
                    raise
            elif len(self._staged) == 1:
                self._due = time.monotonic() + self.group_window_s
                self._commits.notify()
        return Record(row[2], row[3], at, body)

    def flush(self) -> None:
        """Commit every record appended so far. StorageError when the disk refuses: they stay
        staged and are tried again."""
        with self._lock:
            self._commit()

    def _commit(self) -> None:
        """Write the staged records in one transaction (the lock held), the drop policy applied
        record by record as they go in. On failure nothing was written and they stay staged."""
        if not self._staged:
            return
        db = self._db
        usage, dropped = dict(self._usage), Counter[str]()
        run: list[_Row] = []  # rows to insert before the next drop (oldest first)
        try:
            db.execute("BEGIN IMMEDIATE")
            for row in self._staged:
                kind, size = row[0], len(row[5])
                while victim := next_drop(self._usage, kind, size, self.total, self.caps):
                    self._insert(run)
                    run = []
                    self._drop_oldest(victim)
                    dropped[victim] += 1
                run.append(row)
                self._add(kind, 1, size)
            self._insert(run)
            last = self._staged[-1]
            if self._journal_size:  # what the journal holds is in SQLite once this commits
                db.executemany(
                    "INSERT OR REPLACE INTO counters (name, value) VALUES (?, ?)",
                    zip(_MOVED, (last[2], last[3]), strict=True),
                )
            db.execute("COMMIT")
        except BaseException as exc:
            self._usage = usage
            self._rollback()
            if isinstance(exc, sqlite3.Error):
                raise storage_error(exc, self.path) from exc
            raise
        self._staged = []
        self._dropped.update(dropped)
        if self._journal_size:
            self._truncate_journal(0)

    def _insert(self, rows: list[_Row]) -> None:
        if rows:
            self._db.executemany(
                "INSERT INTO records (kind, priority, boot, seq, ts, body) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )

    def _commit_in_time(self, db: sqlite3.Connection) -> None:
        """The group-commit thread: staged records are committed by their due time. A failed
        commit is logged once and tried again a window later. Ends when `db` is closed."""
        failing = False
        with self._commits:
            while self._conn is db:
                if not self._staged:
                    self._commits.wait()
                    continue
                left = self._due - time.monotonic()
                if left > 0:
                    self._commits.wait(left)
                    continue
                try:
                    self._commit()
                except StorageError as exc:
                    if not failing:
                        log.error("%s: the group commit failed, retrying: %s", self.path, exc)
                    failing = True
                    self._due = time.monotonic() + self.group_window_s
                else:
                    failing = False

    def _rollback(self) -> None:
        """End a failed transaction, if SQLite has not already: a COMMIT that fails on a full
        disk rolls back by itself, and a ROLLBACK then would fail with "no transaction is
        active", hiding the error that matters. A ROLLBACK that fails is logged, not raised."""
        db = self._conn
        if db is None or not db.in_transaction:
            return
        try:
            db.execute("ROLLBACK")
        except sqlite3.Error as exc:
            log.warning("%s: ROLLBACK after a failed write failed too: %s", self.path, exc)

    def _add(self, kind: str, rows: int, size: int) -> None:
        old_rows, old_size = self._usage.get(kind, (0, 0))
        self._usage[kind] = (old_rows + rows, old_size + size)

    def _drop_oldest(self, kind: str) -> None:
        rid, size = self._db.execute(
            "SELECT id, LENGTH(body) FROM records WHERE priority = ? ORDER BY id LIMIT 1",
            (PRIORITY[kind],),
        ).fetchone()
        self._db.execute("DELETE FROM records WHERE id = ?", (rid,))
        self._db.execute(
            "INSERT INTO counters (name, value) VALUES (?, 1) "
            "ON CONFLICT(name) DO UPDATE SET value = value + 1",
            (f"dropped.{kind}",),
        )
        self._add(kind, -1, -int(size))

    def take(self, limit: int, skip: set[int]) -> list[Pending]:
        """Oldest records of the most important class first, all of one kind, not in `skip`:
        committed ones only (the staged are committed first; if that fails, they wait)."""
        with self._lock:
            try:
                self._commit()
            except StorageError as exc:
                log.debug("%s: staged records wait: %s", self.path, exc)
            rows = self._db.execute(
                "SELECT id, kind, boot, seq, ts, body FROM records ORDER BY priority, id LIMIT ?",
                (limit + len(skip),),
            ).fetchall()
        out: list[Pending] = []
        for rid, kind, boot, seq, ts, body in rows:
            if rid in skip:
                continue
            if out and kind != out[0].kind:
                break
            out.append(Pending(rid, kind, boot, seq, ts, body))
            if len(out) == limit:
                break
        return out

    def get(self, ids: Iterable[int]) -> list[Pending]:
        """Those of these records still held, oldest first (to send a batch again)."""
        wanted = list(ids)
        out: list[Pending] = []
        with self._lock:
            for start in range(0, len(wanted), 500):  # SQLite's bound-parameter limit
                chunk = wanted[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(
                    f"SELECT id, kind, boot, seq, ts, body FROM records WHERE id IN ({marks})",
                    chunk,
                ).fetchall()
                out += [Pending(*row) for row in rows]
        return sorted(out, key=lambda p: p.id)

    def confirm(self, spans: Iterable[Span]) -> int:
        """The hub committed these (boot, seq) spans: forget them. Returns how many records
        went (a span confirmed twice, or records already gone, cost nothing)."""
        gone: list[tuple[str, int]] = []
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for boot, first, last in spans:
                    gone += self._db.execute(
                        "DELETE FROM records WHERE boot = ? AND seq BETWEEN ? AND ? "
                        "RETURNING kind, LENGTH(body)",
                        (boot, first, last),
                    ).fetchall()
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
            for kind, size in gone:
                self._add(kind, -1, -int(size))
        return len(gone)

    @property
    def appended(self) -> int:
        """Records accepted under this boot so far (their seqs are 0 .. appended - 1)."""
        return self._seq

    def pending(self) -> int:
        """Records held, committed or staged."""
        with self._lock:
            return sum(rows for rows, _ in self._usage.values()) + len(self._staged)

    def usage(self) -> dict[str, tuple[int, int]]:
        """kind -> (rows, bytes of bodies) held now."""
        with self._lock:
            return {k: v for k, v in self._usage.items() if v[0]}

    def dropped(self) -> dict[str, int]:
        """Records dropped past the caps, per kind, ever (the counters survive reboots)."""
        with self._lock:
            return {kind: n for kind, n in self._dropped.items() if n}

    def close(self) -> None:
        """Commit what is staged and close (StorageError if the disk refuses: closed all the
        same, the staged records kept in the journal for the next `open`)."""
        with self._lock:
            if self._conn is None:
                return
            try:
                self._commit()
            finally:
                self._staged = []
                self._conn.close()
                self._conn = None
                os.close(self._journal_fd)
                self._journal_fd, self._journal_size = -1, 0
                self._commits.notify_all()


def _count(db: sqlite3.Connection) -> dict[str, tuple[int, int]]:
    """kind -> (rows, bytes of bodies) held now."""
    rows = db.execute(
        "SELECT kind, COUNT(*), COALESCE(SUM(LENGTH(body)), 0) FROM records GROUP BY kind"
    ).fetchall()
    return {kind: (int(n), int(size)) for kind, n, size in rows}


class TokenBucket:
    """At most `rate` tokens a second on average, `burst` at once (pure: the caller gives `now`).
    A rate of 0 means unlimited."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self._tokens = self.burst
        self._at = now

    def take(self, wanted: int, now: float) -> int:
        """How many of `wanted` may go now (they are spent)."""
        if self.rate <= 0:
            return wanted
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        granted = min(wanted, int(self._tokens))
        self._tokens -= granted
        return granted

    def refund(self, unused: int) -> None:
        """Tokens taken but not spent go back."""
        self._tokens = min(self.burst, self._tokens + unused)

    def wait(self, now: float) -> float:
        """Seconds until one token is there (0 if one is)."""
        if self.rate <= 0:
            return 0.0
        tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        return 0.0 if tokens >= 1 else (1 - tokens) / self.rate
