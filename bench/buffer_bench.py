"""The agent's store-and-forward buffer against bare sqlite3, side by side in one run.

Append: `edge_agent.uplink.buffer.Buffer.append` of one telemetry record (group commit as
firmware_configs/base.toml's [buffer] sets it for the agent: each record one line of its files
when it is accepted, the files fsynced once a group), against bare `sqlite3` inserting the same
JSON body into a table of the same shape, one autocommitted INSERT per row, WAL and
synchronous=NORMAL (never fsynced per commit: what an earlier release's buffer did).

Drain: `Buffer.take(100)` + `Buffer.confirm(spans)` (what the sender does per MQTT message and
hub confirmation) until empty, against bare `SELECT ... ORDER BY id LIMIT 100` + `DELETE ...
WHERE id = ?` (executemany).

Interleaved repetitions (A B, B A, ...) on fresh files in one temporary folder; medians.

    .venv/bin/python bench/buffer_bench.py [--rows 5000] [--reps 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench_machine import help_line, machine
from rich.console import Console
from rich.table import Table

from edge_agent.protocol.messages import spans_of
from edge_agent.uplink.buffer import Buffer
from firmware_configs import profile_path

BODY = {
    "window_s": 2.0,
    "model": {"name": "iris", "version": 3},
    "count": 40,
    "latency_ms": {"p50": 0.05, "p95": 0.09, "p99": 0.2},
    "errors": {"bad-number": 1},
    "predictions": {"0": 13, "1": 14, "2": 13},
}


def _ours(path: Path, boot: int, rows: int) -> Buffer:
    grouped = tomllib.loads(profile_path("base").read_text(encoding="utf-8"))["buffer"]
    return Buffer(
        path,
        boot=boot,
        max_rows=rows * 2,
        group_rows=grouped["group_rows"],
        group_window_s=grouped["group_window_s"],
    )


def ours_append(path: Path, rows: int) -> float:
    buf = _ours(path, 1, rows)
    start = time.perf_counter()
    for _ in range(rows):
        buf.append("telemetry", BODY)
    seconds = time.perf_counter() - start
    buf.close()
    return seconds


def ours_drain(path: Path, rows: int) -> float:
    buf = _ours(path, 2, rows)
    start = time.perf_counter()
    while True:
        pending = buf.take(100, set())
        if not pending:
            break
        buf.confirm(spans_of(p.record for p in pending))
    seconds = time.perf_counter() - start
    buf.close()
    return seconds


def _bare_db(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute(
        "CREATE TABLE IF NOT EXISTS records (id INTEGER PRIMARY KEY AUTOINCREMENT, "
        "kind TEXT, boot INTEGER, seq INTEGER, ts REAL, body TEXT)"
    )
    return db


def bare_append(path: Path, rows: int) -> float:
    db = _bare_db(path)
    start = time.perf_counter()
    for seq in range(rows):
        db.execute(
            "INSERT INTO records (kind, boot, seq, ts, body) VALUES (?, ?, ?, ?, ?)",
            ("telemetry", 1, seq, time.time(), json.dumps(BODY)),
        )
    seconds = time.perf_counter() - start
    db.close()
    return seconds


def bare_drain(path: Path, rows: int) -> float:
    db = _bare_db(path)
    start = time.perf_counter()
    while True:
        got = db.execute("SELECT id, body FROM records ORDER BY id LIMIT 100").fetchall()
        if not got:
            break
        [json.loads(body) for _, body in got]
        db.executemany("DELETE FROM records WHERE id = ?", [(rid,) for rid, _ in got])
    seconds = time.perf_counter() - start
    db.close()
    return seconds


def interleaved(
    folder: Path, rows: int, reps: int, ours: Callable[..., float], bare: Callable[..., float]
) -> tuple[list[float], list[float]]:
    """(ours, bare) seconds per rep; each rep appends into fresh files, then drains them."""
    o: list[float] = []
    b: list[float] = []
    for rep in range(reps):
        pair = (
            [("ours", ours), ("bare", bare)] if rep % 2 == 0 else [("bare", bare), ("ours", ours)]
        )
        for name, fn in pair:
            (o if name == "ours" else b).append(fn(folder / f"{name}-{rep}", rows))
    return o, b


def measure(rows: int, reps: int) -> list[dict[str, Any]]:
    out = []
    with tempfile.TemporaryDirectory(prefix="buffer-bench-") as tmp:
        folder = Path(tmp)
        for what, ours, bare in (
            ("append", ours_append, bare_append),
            ("drain", ours_drain, bare_drain),
        ):
            o, b = interleaved(folder, rows, reps, ours, bare)
            ours_rate = rows / statistics.median(o)
            bare_rate = rows / statistics.median(b)
            out.append(
                {
                    "operation": what,
                    "rows": rows,
                    "ours_rows_per_s": round(ours_rate),
                    "bare_rows_per_s": round(bare_rate),
                    "ours_over_bare": round(ours_rate / bare_rate, 3),
                }
            )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=help_line(__doc__))
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    info = machine()
    rows = measure(args.rows, args.reps)
    report = {"bench": "buffer", "machine": info, "rows": rows, "targets": []}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    console = Console()
    console.print(f"[bold]machine[/bold] {info['cpu']}, {info['cores']} cores")
    table = Table(title="telemetry buffer vs bare sqlite3 (median of interleaved reps)")
    for col in rows[0]:
        table.add_column(col)
    for r in rows:
        table.add_row(*[str(v) for v in r.values()])
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
