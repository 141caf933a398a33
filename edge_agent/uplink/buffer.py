"""Store-and-forward buffer: records kept in append-only files, deleted only when the hub
confirms it committed them (`confirm`, from the hub's message on dev/{id}/ack), never on the
broker's PUBACK.

Each record carries (boot, seq), so the hub can drop what it has already stored when a record is
sent twice (after a lost confirmation, a reconnect, a crash or a broker that lost its queue).
Caps, in rows and in bytes (records as kept, one line each), hold per priority class and for
the whole buffer. `next_drop` is the drop policy, pure: a class past its own cap loses its own
oldest record (a flood of events never evicts a drift report); past the whole buffer's cap the
oldest record of the least important class goes (telemetry before labels before drift before
events). Every drop is counted, per kind.

The files (a folder; edge_agent.uplink.recordlog has their formats). `append` writes the record
as one line at the end of the current segment, with one `os.write`; a confirmation or a drop is
one line of the gone log. A segment whose records are all gone is deleted; a segment less than
half of which is still held is copied forward (its held records appended to the current
segment) and deleted, so the folder holds at most about twice what the caps allow. `open`
reads the segments and the gone log back: a key met twice (a copy cut short by a kill) is one
record. The index in memory holds two ints a record (about 120 bytes), not the bodies.

What a caller can rely on:

- when `append` returns, the record survives a SIGKILL of the agent (the kernel holds the line);
- a write that fails (a full disk, even half written) is cut back: StorageError, nothing of
  the record kept, its seq not used, so a boot's seqs have no gap;
- a read-only or failing disk at `open` keeps the buffer closed (StorageError); a buffer made
  without a boot is closed until `open(boot)`: the agent opens it only under a boot it has
  persisted.

Group commit. A power cut may lose what the kernel had not yet written to the disk. With
`group_rows` 1 each `append` is fsynced before it returns; with N > 1 (the agent's default) the
segment is fsynced once N records are appended, `group_window_s` after the first of them at the
latest (a thread of the buffer's own), at `flush()` and at `close()`: an SD card sees one flush
a group instead of one a record. A confirmation lost to a power cut sends its records again
(the hub stores each (boot, seq) once).

`TokenBucket` paces the drain after a reconnect, so a returning fleet does not flatten the hub.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from edge_agent.errors import ConfigError, MessageError, StorageError
from edge_agent.protocol.messages import Record, Span, body_json, record_json
from edge_agent.system.fsutil import fsync_dir, storage_error
from edge_agent.uplink import recordlog as rl
from edge_agent.uplink.caps import Cap

log = logging.getLogger(__name__)

# Sent in this order, dropped past the whole buffer's cap in the reverse.
PRIORITY: dict[str, float] = {"events": 0, "drift": 1, "labels": 1.5, "telemetry": 2}
KINDS = frozenset(PRIORITY)
_ORDER = sorted(PRIORITY, key=PRIORITY.__getitem__)
SEGMENT_BYTES = 1 << 20  # a segment is sealed past this and a new one begun
GONE_BYTES = 1 << 16  # the gone log is rewritten once past this and twice its last rewrite
GONE = "gone.log"


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


class Pending(NamedTuple):
    """A record held in the buffer, as kept: its body is the JSON text `append` wrote, which
    goes into a batch as it is (`wire`), never parsed and dumped again on the way out."""

    id: int  # its key: (boot, seq) in one int
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


def _segment_number(path: Path) -> int | None:
    stem, dot, ext = path.name.partition(".")
    return int(stem) if dot and ext == "log" and stem.isdigit() else None


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
        self.path = path  # a folder
        self.group_rows = group_rows
        self.group_window_s = group_window_s
        self.boot = 0
        self.total = Cap(max_rows, max_bytes)
        self.caps = dict(caps or {})  # kind -> its own cap
        self._lock = threading.Lock()
        self._syncs = threading.Condition(self._lock)  # wakes the group-commit thread
        self._opened = False
        self._seq = 0
        self._index: dict[str, dict[int, int]] = {kind: {} for kind in _ORDER}  # key -> loc
        self._fds: dict[int, int] = {}  # segment -> its open file
        self._held: Counter[int] = Counter()  # segment -> bytes of its records still held
        self._lowest: dict[int, int] = {}  # segment -> the lowest key it has a line of
        self._generation = 0  # of opens: the group-commit thread of an earlier one ends
        self._active = 0  # the segment appended to
        self._size = 0  # its bytes
        self._gone_fd = -1
        self._gone_size = 0
        self._gone_rewritten = 0  # the gone log's size after its last rewrite
        self._unsynced = 0  # records appended since the last fsync
        self._due = 0.0  # monotonic time by which they are fsynced
        self._usage: dict[str, tuple[int, int]] = {}
        self._dropped: Counter[str] = Counter()
        if boot is not None:
            self.open(boot)

    @property
    def opened(self) -> bool:
        return self._opened

    # ---- open and close ----------------------------------------------------------------------
    def open(self, boot: int) -> None:
        """Open the folder; records appended from now on carry `boot`. StorageError when it
        cannot be opened for writing (a read-only or full disk): the buffer stays closed then."""
        with self._lock:
            if self._opened:
                raise RuntimeError(f"{self.path}: the telemetry buffer is already open")
            try:
                self.path.mkdir(parents=True, exist_ok=True)
                self._gone_fd = os.open(
                    self.path / GONE, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644
                )
                self._load()
                self._import_legacy()
            except StorageError:
                self._close_files()
                raise
            except OSError as exc:
                self._close_files()
                err = storage_error(exc, self.path)
                raise StorageError(
                    err.reason, err.where, f"cannot open the telemetry buffer ({err.detail})"
                ) from exc
            self.boot, self._seq, self._opened = boot, 0, True
            self._generation += 1
            if self.group_rows > 1:
                threading.Thread(
                    target=self._sync_in_time,
                    args=(self._generation,),
                    name="buffer-sync",
                    daemon=True,
                ).start()

    def _load(self) -> None:
        """Read the segments and the gone log back into the index; append to the last segment
        (its unfinished tail, if a kill left one, cut off), or to a new one."""
        segments = sorted(n for p in self.path.iterdir() if (n := _segment_number(p)) is not None)
        self._index, self._lowest = {kind: {} for kind in _ORDER}, {}
        for number in segments:
            fd = os.open(self.path / f"{number}.log", os.O_RDWR | os.O_APPEND)
            self._fds[number] = fd
            data = _read_all(fd)
            for line in rl.record_lines(data, KINDS, f"{self.path}/{number}.log"):
                key = rl.key_of(line.boot, line.seq)
                # a key met twice (a copy forward cut short): the later copy
                self._index[line.kind][key] = rl.loc_of(number, line.offset, line.length)
                self._lowest[number] = min(key, self._lowest.get(number, key))
            self._active, self._size = number, data.rfind(b"\n") + 1
        data = _read_all(self._gone_fd)
        gone = rl.read_gone(data, str(self.path / GONE))
        self._gone_size = self._gone_rewritten = data.rfind(b"\n") + 1
        if self._gone_size < len(data):  # a line cut short: the next one is not glued to it
            os.ftruncate(self._gone_fd, self._gone_size)
        for first, last in gone.spans:
            self._forget(first, last)
        self._dropped = gone.dropped
        self._reindex()
        if not segments:
            self._begin_segment(1)
        else:
            if self._size < os.fstat(self._fds[self._active]).st_size:
                os.ftruncate(self._fds[self._active], self._size)  # a line a kill cut short
            for number in segments[:-1]:
                self._release(number)

    def _reindex(self) -> None:
        """Each kind's keys in ascending order (appended order: a record copied forward is
        back in its place), and the counts of what is held, from the index."""
        self._held = Counter()
        for kind, held in self._index.items():
            self._index[kind] = {k: held[k] for k in sorted(held)}
            self._usage[kind] = (len(held), sum(rl.length_of(loc) for loc in held.values()))
            for loc in held.values():
                self._held[rl.segment_of(loc)] += rl.length_of(loc)

    def _import_legacy(self) -> None:
        """Records an earlier release kept in SQLite (`<folder>.sqlite` and its staging
        journal), moved into the segments with their (boot, seq), then its files deleted."""
        old = self.path.with_name(self.path.name + ".sqlite")
        if not old.exists():
            return
        from edge_agent.uplink.legacy import read_sqlite_buffer

        try:
            rows, dropped = read_sqlite_buffer(old, KINDS)
        except OSError as exc:  # kept aside, so the buffer goes on without what it held
            log.error("%s: %s; it is left as %s.unreadable", self.path, exc, old.name)
            os.replace(old, f"{old}.unreadable")
            return
        for kind, boot, seq, ts, text in rows:
            key = rl.key_of(boot, seq)
            self._index[kind][key] = self._write(rl.record_line(kind, boot, seq, ts, text), key)
        os.fsync(self._fds[self._active])
        for suffix in ("", "-wal", "-shm", "-staged"):  # a kill before this: moved in again
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{old}{suffix}")
        self._dropped.update(dropped)
        os.write(self._gone_fd, rl.totals_lines(Counter(dropped)))
        os.fsync(self._gone_fd)
        self._reindex()
        log.info("%s: %d records moved in from %s", self.path, len(rows), old)

    def close(self) -> None:
        """fsync what was appended and close (closing a closed buffer is no error)."""
        with self._lock:
            if not self._opened:
                return
            try:
                self._sync()
            finally:
                self._opened = False
                self._close_files()
                self._syncs.notify_all()

    def _close_files(self) -> None:
        for fd in [*self._fds.values(), self._gone_fd]:
            if fd >= 0:
                os.close(fd)
        self._fds, self._gone_fd, self._unsynced = {}, -1, 0

    # ---- append -------------------------------------------------------------------------------
    def append(self, kind: str, body: dict[str, Any], ts: float | None = None) -> Record:
        """Keep one record under the next seq of this boot: when it returns, the record survives
        a SIGKILL (see the module's docstring). StorageError when it cannot be kept,
        MessageError when the body is not JSON (NaN, a value JSON has no form for): then
        nothing of it was written and its seq is the next record's."""
        at = time.time() if ts is None else ts
        if not math.isfinite(at):
            raise MessageError(f"a {kind} record: expected a finite timestamp, got {at!r}")
        text = body_json(body, f"a {kind} record")
        with self._lock:
            if not self._opened:
                raise StorageError(
                    "write-failed", str(self.path), "the telemetry buffer is not open"
                )
            seq, key = self._seq, rl.key_of(self.boot, self._seq)
            line = rl.record_line(kind, self.boot, seq, at, text)
            if len(line) > rl.MAX_LINE:
                raise MessageError(
                    f"a {kind} record: expected at most {rl.MAX_LINE} bytes, got {len(line)}"
                )
            loc = self._write(line, key)
            self._seq += 1
            drops = []
            while victim := next_drop(self._usage, kind, len(line), self.total, self.caps):
                drops.append(self._drop_oldest(victim))
            self._index[kind][key] = loc
            self._add(kind, 1, len(line))
            self._held[self._active] += len(line)
            if drops:
                self._note_gone(b"".join(drops))
            self._unsynced += 1
            if self._unsynced >= self.group_rows:
                try:
                    self._sync()
                except StorageError as exc:  # kept all the same: the kernel holds the line
                    log.error("%s: cannot sync the buffer to the disk: %s", self.path, exc)
            elif self._unsynced == 1:
                self._due = time.monotonic() + self.group_window_s
                self._syncs.notify()
        return Record(self.boot, seq, at, body)

    def _write(self, line: bytes, key: int, seal: bool = True) -> int:
        """Append one record's line to the current segment (a new one first if it is full
        and `seal`); its loc. A failed or short write is cut back: StorageError, nothing of
        the line kept."""
        try:
            if seal and self._size and self._size + len(line) > SEGMENT_BYTES:
                self._seal()
        except OSError as exc:
            raise storage_error(exc, self.path) from exc
        try:
            _append(self._fds[self._active], line, self._size)
        except OSError as exc:
            raise storage_error(exc, self.path / f"{self._active}.log") from exc
        offset, self._size = self._size, self._size + len(line)
        self._lowest[self._active] = min(key, self._lowest.get(self._active, key))
        return rl.loc_of(self._active, offset, len(line))

    def _seal(self) -> None:
        """Begin the next segment; copy forward what little the older ones still hold."""
        sealed = self._active
        self._sync()  # the sealed segment is on the disk before anything refers past it
        self._begin_segment(sealed + 1)
        self._release(sealed)
        for number in [n for n in self._fds if n != self._active]:
            if 0 < self._held[number] <= os.fstat(self._fds[number]).st_size // 2:
                self._copy_forward(number)

    def _begin_segment(self, number: int) -> None:
        fd = os.open(self.path / f"{number}.log", os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        self._fds[number], self._active, self._size = fd, number, 0

    def _copy_forward(self, number: int) -> None:
        """Append the records segment `number` still holds to the current one, then delete
        it. A failure (a full disk) leaves it as it was: its records stay where they are."""
        moved: list[tuple[str, int, int]] = []  # kind, key, new loc
        try:
            for kind, held in self._index.items():
                for key, loc in held.items():
                    if rl.segment_of(loc) == number:
                        offset, length = rl.span_of(loc)
                        line = os.pread(self._fds[number], length, offset)
                        moved.append((kind, key, self._write(line, key, seal=False)))
            os.fsync(self._fds[self._active])  # the copies on the disk before the old go
        except (OSError, StorageError) as exc:
            log.warning("%s: segment %d stays as it is: %s", self.path, number, exc)
            return
        for kind, key, loc in moved:
            self._index[kind][key] = loc
            self._held[self._active] += rl.length_of(loc)
        self._held[number] = 0
        self._release(number)

    def _release(self, number: int) -> None:
        """Delete a segment other than the current one if none of its records is held."""
        if number == self._active or self._held[number] > 0:
            return
        os.close(self._fds.pop(number))
        self._held.pop(number, None)
        try:
            os.unlink(self.path / f"{number}.log")
        except OSError as exc:  # its lowest key stays: the gone log keeps what it says of it
            log.warning("%s: cannot delete segment %d: %s", self.path, number, exc)
            return
        self._lowest.pop(number, None)

    # ---- fsync -------------------------------------------------------------------------------
    def flush(self) -> None:
        """fsync every record appended so far. StorageError when the disk refuses."""
        with self._lock:
            self._sync()

    def _sync(self) -> None:
        if not self._unsynced:
            return
        try:
            os.fsync(self._fds[self._active])
            os.fsync(self._gone_fd)
        except OSError as exc:
            raise storage_error(exc, self.path) from exc
        self._unsynced = 0

    def _sync_in_time(self, generation: int) -> None:
        """The group-commit thread: appended records are fsynced by their due time. A failed
        fsync is logged once and tried again a window later. Ends when the buffer closes."""
        failing = False
        with self._syncs:
            while self._opened and self._generation == generation:
                if not self._unsynced:
                    self._syncs.wait()
                    continue
                left = self._due - time.monotonic()
                if left > 0:
                    self._syncs.wait(left)
                    continue
                try:
                    self._sync()
                except StorageError as exc:
                    if not failing:
                        log.error("%s: the group commit failed, retrying: %s", self.path, exc)
                    failing = True
                    self._due = time.monotonic() + self.group_window_s
                else:
                    failing = False

    # ---- what leaves: drops and confirmations -----------------------------------------------
    def _drop_oldest(self, kind: str) -> bytes:
        held = self._index[kind]
        key = next(iter(held))
        self._gone(kind, key, held.pop(key))
        self._dropped[kind] += 1
        boot, seq = rl.boot_seq(key)
        return rl.dropped_line(kind, boot, seq)

    def _gone(self, kind: str, key: int, loc: int) -> None:
        size, number = rl.length_of(loc), rl.segment_of(loc)
        self._add(kind, -1, -size)
        self._held[number] -= size
        if self._held[number] <= 0:
            self._release(number)

    def _forget(self, first: int, last: int) -> list[tuple[str, int, int]]:
        """Take the keys first..last out of the index: (kind, key, loc) of those it held."""
        out = []
        for kind, held in self._index.items():
            if not held:
                continue
            keys = range(first, last + 1) if last - first < len(held) else list(held)
            for key in keys:
                if first <= key <= last and (loc := held.pop(key, None)) is not None:
                    out.append((kind, key, loc))
        return out

    def _note_gone(self, lines: bytes) -> None:
        """Say in the gone log that records left. A failure is logged: after a restart those
        records come back and are sent again (the hub keeps each (boot, seq) once)."""
        try:
            _append(self._gone_fd, lines, self._gone_size)  # a half line would eat the next
            self._gone_size += len(lines)
            if self._gone_size > max(GONE_BYTES, 2 * self._gone_rewritten):
                self._rewrite_gone()
        except OSError as exc:
            log.warning("%s: cannot note records gone: %s", self.path, exc)

    def _rewrite_gone(self) -> None:
        """The gone log, rewritten: the drop counts, and the spans that may still name a
        record some segment holds. A kill mid-way leaves the old one (os.replace)."""
        floor = min(self._lowest.values(), default=rl.key_of(self.boot, self._seq))
        spans = rl.read_gone(_read_all(self._gone_fd), str(self.path / GONE)).spans
        data = rl.totals_lines(self._dropped) + rl.kept_spans(spans, floor)
        tmp = self.path / f".{GONE}.tmp"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
        try:
            _append(fd, data, 0)
            os.fsync(fd)
            os.replace(tmp, self.path / GONE)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        os.close(self._gone_fd)  # the replaced one: what is noted from now on goes to the new
        self._gone_fd, self._gone_size, self._gone_rewritten = fd, len(data), len(data)
        fsync_dir(self.path)

    def confirm(self, spans: Iterable[Span]) -> int:
        """The hub committed these (boot, seq) spans: forget them. Returns how many records
        went (a span confirmed twice, or records already gone, cost nothing)."""
        with self._lock:
            if not self._opened:
                return 0
            lines, count = [], 0
            for boot, first, last in spans:
                # seqs not yet appended name no record: a line naming them would forget, at
                # the next open, records still to come (this boot's, or the next boot's keys)
                last = min(last, self._seq - 1 if boot == self.boot else rl.MAX_SEQ)
                if first > last:
                    continue
                gone = self._forget(rl.key_of(boot, first), rl.key_of(boot, last))
                for kind, key, loc in gone:
                    self._gone(kind, key, loc)
                if gone:
                    lines.append(rl.confirmed_line(boot, first, last))
                count += len(gone)
            if lines:
                self._note_gone(b"".join(lines))
        return count

    # ---- what goes out ------------------------------------------------------------------------
    def take(self, limit: int, skip: set[int]) -> list[Pending]:
        """Oldest records of the most important class first, all of one kind, not in `skip`."""
        with self._lock:
            for kind in _ORDER:
                chosen = []
                for key, loc in self._index[kind].items():
                    if key not in skip:
                        chosen.append((key, loc))
                        if len(chosen) == limit:
                            break
                if chosen:
                    return self._read(kind, chosen)
        return []

    def get(self, ids: Iterable[int]) -> list[Pending]:
        """Those of these records still held, oldest first (to send a batch again)."""
        out = []
        with self._lock:
            for key in sorted(set(ids)):
                for kind, held in self._index.items():
                    if (loc := held.get(key)) is not None:
                        out += self._read(kind, [(key, loc)])
                        break
        return out

    def _read(self, kind: str, chosen: list[tuple[int, int]]) -> list[Pending]:
        """The records at these (key, loc), read from their segments: lines that follow one
        another in a segment (a stream of one kind) in one read."""
        out: list[Pending] = []
        start = 0
        while start < len(chosen):
            number = rl.segment_of(chosen[start][1])
            first, end = rl.span_of(chosen[start][1])
            end += first
            stop = start + 1
            while stop < len(chosen) and rl.segment_of(chosen[stop][1]) == number:
                offset, length = rl.span_of(chosen[stop][1])
                if offset != end:
                    break
                end, stop = end + length, stop + 1
            data = os.pread(self._fds[number], end - first, first)
            for key, loc in chosen[start:stop]:
                offset, length = rl.span_of(loc)
                ts, text = rl.record_fields(data[offset - first : offset - first + length])
                boot, seq = rl.boot_seq(key)
                out.append(Pending(key, kind, boot, seq, ts, text))
            start = stop
        return out

    # ---- counts -------------------------------------------------------------------------------
    def _add(self, kind: str, rows: int, size: int) -> None:
        old_rows, old_size = self._usage.get(kind, (0, 0))
        self._usage[kind] = (old_rows + rows, old_size + size)

    @property
    def appended(self) -> int:
        """Records accepted under this boot so far (their seqs are 0 .. appended - 1)."""
        return self._seq

    def pending(self) -> int:
        """Records held."""
        with self._lock:
            return sum(rows for rows, _ in self._usage.values())

    def usage(self) -> dict[str, tuple[int, int]]:
        """kind -> (rows, bytes of records as kept) held now."""
        with self._lock:
            return {k: v for k, v in self._usage.items() if v[0]}

    def dropped(self) -> dict[str, int]:
        """Records dropped past the caps, per kind, ever (the counts survive reboots)."""
        with self._lock:
            return {kind: n for kind, n in self._dropped.items() if n}


def _append(fd: int, data: bytes, size: int) -> None:
    """Write `data` at the end of the file (`size` bytes before it); a failed or short write
    (a full disk) is cut back to `size` and raised as OSError: nothing of it stays."""
    try:
        if os.write(fd, data) != len(data):
            raise OSError(28, os.strerror(28))  # ENOSPC: a short write on a full disk
    except OSError:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, size)
        raise


def _read_all(fd: int) -> bytes:
    """A file's bytes from its start (the file's position is left at its end)."""
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


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
