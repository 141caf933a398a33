"""Store-and-forward buffer: SQLite in WAL mode, records deleted only after the broker's ack.

Each record carries (boot, seq), so the hub can drop what it has already stored when a record is
sent twice (after a lost ack, a reconnect or a crash). Past the row cap, the explicit drop policy
removes the oldest record of the least important class (telemetry before drift before events)
and counts what it dropped, per kind.
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
    def __init__(self, path: Path, boot: int, max_rows: int = 100_000) -> None:
        self.boot = boot
        self.max_rows = max_rows
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
        self._rows = self._count()

    def _count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM records").fetchone()[0])

    def append(self, kind: str, body: dict[str, Any], ts: float | None = None) -> Record:
        record = Record(self.boot, 0, ts if ts is not None else time.time(), body)
        with self._lock:
            record = Record(self.boot, self._seq, record.ts, body)
            self._seq += 1
            self._db.execute("BEGIN IMMEDIATE")
            try:
                while self._rows >= self.max_rows:
                    self._drop_one()
                self._db.execute(
                    "INSERT INTO records (kind, priority, boot, seq, ts, body) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (kind, PRIORITY[kind], record.boot, record.seq, record.ts, json.dumps(body)),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._rows += 1
        return record

    def _drop_one(self) -> None:
        row = self._db.execute(
            "SELECT id, kind FROM records ORDER BY priority DESC, id LIMIT 1"
        ).fetchone()
        self._db.execute("DELETE FROM records WHERE id = ?", (row[0],))
        self._db.execute(
            "INSERT INTO counters (name, value) VALUES (?, 1) "
            "ON CONFLICT(name) DO UPDATE SET value = value + 1",
            (f"dropped.{row[1]}",),
        )
        self._rows -= 1

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
            self._rows = self._count()

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
