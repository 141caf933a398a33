"""The buffer an earlier release kept in SQLite (`buffer.sqlite`, and the staging journal of
its group commit, `buffer.sqlite-staged`), read once so an upgraded device sends what it held.
sqlite3 is imported here only, and only on a device that has such a file."""

from __future__ import annotations

from pathlib import Path

from edge_agent.uplink.recordlog import key_of, record_fields, record_lines

LegacyRow = tuple[str, int, int, float, str]  # kind, boot, seq, ts, body's JSON


def read_sqlite_buffer(path: Path, kinds: frozenset[str]) -> tuple[list[LegacyRow], dict[str, int]]:
    """The records held (the committed rows, then the journal's lines past the moved mark: its
    lines are what a segment's are), each (boot, seq) once, and the drop counters. OSError
    when the file cannot be read."""
    import sqlite3

    try:
        db = sqlite3.connect(path)  # read-write: a WAL a kill left is replayed
        try:
            query = "SELECT kind, boot, seq, ts, body FROM records ORDER BY id"
            rows = db.execute(query).fetchall()
            counters = dict(db.execute("SELECT name, value FROM counters").fetchall())
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise OSError(f"the earlier release's buffer {path} cannot be read: {exc}") from exc
    moved = key_of(int(counters.get("moved.boot", 0)), int(counters.get("moved.seq", 0)))
    moved = moved if "moved.boot" in counters else -1
    held = {key_of(boot, seq): (kind, boot, seq, ts, body) for kind, boot, seq, ts, body in rows}
    staged = Path(f"{path}-staged")
    if staged.exists():
        data = staged.read_bytes()
        for line in record_lines(data, kinds, str(staged)):
            if key_of(line.boot, line.seq) > moved:
                ts, body = record_fields(data[line.offset : line.offset + line.length])
                held[key_of(line.boot, line.seq)] = (line.kind, line.boot, line.seq, ts, body)
    dropped = {
        name.removeprefix("dropped."): int(value)
        for name, value in counters.items()
        if name.startswith("dropped.") and int(value)
    }
    return [held[key] for key in sorted(held)], dropped
