"""Store-and-forward buffer: SQLite in WAL mode, records deleted only after the broker's ack.

Each record carries (boot, seq), so the hub can drop what it has already stored when a record is
sent twice (after a lost ack, a reconnect or a crash). Past the row cap or the byte cap (bodies'
JSON size), the explicit drop policy removes the oldest record of the least important class
(telemetry before drift before events) and counts what it dropped, per kind.

`TokenBucket` paces the drain after a reconnect, so a returning fleet does not flatten the hub.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.errors import TransportError
from edge_agent.protocol.messages import Record

PRIORITY = {"events": 0, "drift": 1, "telemetry": 2}

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
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class Pending:
    id: int
    kind: str
    record: Record


class Buffer:
    def __init__(
        self, path: Path, boot: int, max_rows: int = 100_000, max_bytes: int | None = None
    ) -> None:
        self.boot = boot
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._seq = 0
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise TransportError(f"{path}: cannot open the telemetry buffer ({exc})") from exc
        self._rows, self._bytes = self._count()

    def _count(self) -> tuple[int, int]:
        rows, size = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0) FROM records"
        ).fetchone()
        return int(rows), int(size)

    def _full(self, incoming: int) -> bool:
        if self._rows and self.max_bytes is not None and self._bytes + incoming > self.max_bytes:
            return True
        return self._rows >= self.max_rows

    def append(self, kind: str, body: dict[str, Any], ts: float | None = None) -> Record:
        record = Record(self.boot, 0, ts if ts is not None else time.time(), body)
        with self._lock:
            record = Record(self.boot, self._seq, record.ts, body)
            self._seq += 1
            text = json.dumps(body)
            self._db.execute("BEGIN IMMEDIATE")
            try:
                while self._full(len(text)):
                    self._drop_one()
                self._db.execute(
                    "INSERT INTO records (kind, priority, boot, seq, ts, body) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (kind, PRIORITY[kind], record.boot, record.seq, record.ts, text),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                self._rows, self._bytes = self._count()
                raise
            self._rows += 1
            self._bytes += len(text)
        return record

    def _drop_one(self) -> None:
        row = self._db.execute(
            "SELECT id, kind, LENGTH(body) FROM records ORDER BY priority DESC, id LIMIT 1"
        ).fetchone()
        self._db.execute("DELETE FROM records WHERE id = ?", (row[0],))
        self._db.execute(
            "INSERT INTO counters (name, value) VALUES (?, 1) "
            "ON CONFLICT(name) DO UPDATE SET value = value + 1",
            (f"dropped.{row[1]}",),
        )
        self._rows -= 1
        self._bytes -= int(row[2])

    def take(self, limit: int, skip: set[int]) -> list[Pending]:
        """Oldest records of the most important class first, all of one kind, not in `skip`."""
        with self._lock:
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
            out.append(Pending(rid, kind, Record(boot, seq, ts, json.loads(body))))
            if len(out) == limit:
                break
        return out

    def ack(self, ids: list[int]) -> None:
        with self._lock:
            self._db.executemany("DELETE FROM records WHERE id = ?", [(i,) for i in ids])
            self._rows, self._bytes = self._count()

    @property
    def appended(self) -> int:
        """Records accepted under this boot so far (their seqs are 0 .. appended - 1)."""
        return self._seq

    def pending(self) -> int:
        with self._lock:
            return self._rows

    def dropped(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT name, value FROM counters").fetchall()
        return {name.removeprefix("dropped."): int(v) for name, v in rows}

    def close(self) -> None:
        with self._lock:
            self._db.close()


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

    def wait(self, now: float) -> float:
        """Seconds until one token is there (0 if one is)."""
        if self.rate <= 0:
            return 0.0
        tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        return 0.0 if tokens >= 1 else (1 - tokens) / self.rate
