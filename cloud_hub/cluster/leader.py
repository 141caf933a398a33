"""Which hub worker leads: one runs the rollout engine, experiments, retraining policies, the
command outbox and TUF publication (the signing side); every worker ingests (MQTT shared
subscriptions), serves transfers and the dashboard.

On PostgreSQL the leader holds a session advisory lock on a connection of its own
(`pg_try_advisory_lock`); the server drops it the moment that session ends, however the worker
ends (SIGKILL included: the socket closes), and the next worker to ask, on its next tick,
leads. A leader whose machine vanished (powered off, cut off) closes no socket: the server's
keepalives end its session within about 15 s (cloud_hub.store.database.PG_CONNECT_ARGS), and
that leader's own end gives up as soon. A leader process that hangs on a live machine
(stopped, deadlocked, swapped out) keeps its socket. So a thread of the leader says `SELECT 1`
on the lock's session (every HEARTBEAT_S, or a sixth of the leader timeout), and a worker that
asks for the lead and finds that session quiet for longer than the timeout
(`pg_stat_activity.state_change`, on the server's clock) ends it (`pg_terminate_backend`), and
leads on a later tick. The hung leader, should it wake, finds its session gone at its next look
(`holds`, before each of its steps) and follows. What it was doing when it hung does not go on
either: each worker that takes the lead bumps the store's leader epoch (hub_state), and every
transaction the leader's steps begin (`fence`) first reads that epoch, FOR SHARE, and is
refused (LostLead) if it moved on; the new leader's bump waits for a transaction that read it
before, so what the old leader wrote comes before anything the new one does. A worker whose
TUF repository is behind the one the leader published does not ask at all (cloud_hub.hub).
On SQLite (workers share one machine and one home) the same is a `flock` on HOME/leader.lock,
which the kernel drops with the process. A worker that loses its lock (its database connection
broke) stops leading at once and asks again on later ticks.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
from contextlib import AbstractContextManager
from pathlib import Path
from types import TracebackType
from typing import IO, Protocol

from sqlalchemy import Connection, Engine, event, text
from sqlalchemy.exc import SQLAlchemyError

from cloud_hub.cluster import LEADER_TIMEOUT_S
from cloud_hub.store.errors import StoreError, safe_url

log = logging.getLogger(__name__)

LOCK_KEY = 0x65646765666C7431  # "edgeflt1": the advisory lock every edgefleet hub asks for
LOCK_FILE = "leader.lock"
EPOCH_KEY = "leader_epoch"  # hub_state: the number of the lead, bumped by each worker taking it
# what a statement on a session that broke raises: SQLAlchemy's error, or the store's engine's
# translation of the driver's (cloud_hub.store.errors.raise_store_errors)
BROKEN = (SQLAlchemyError, StoreError)


LOCK_NOT_AVAILABLE = "55P03"  # the SQLSTATE of a lock_timeout (whatever lc_messages words it)


def _sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of the driver's error under `exc` (SQLAlchemy's `.orig`, or the cause of
    the store's StoreError), None if there is none."""
    seen: BaseException | None = exc
    while seen is not None:
        state = getattr(seen, "sqlstate", None)
        if isinstance(state, str):
            return state
        orig = getattr(seen, "orig", None)
        seen = orig if isinstance(orig, BaseException) else seen.__cause__
    return None


class LostLead(StoreError):
    """A transaction of a leader whose lead another worker has taken since (the store's leader
    epoch is no longer the one this worker took): refused before it ran a statement."""

    def __init__(self, where: str, mine: int, now: str | None) -> None:
        super().__init__("lost-lead", where, f"this worker led as epoch {mine}, now it is {now}")


class Leadership(Protocol):
    def leads(self) -> bool:
        """Whether this worker leads now: keeps a lock it holds (checking it still does), or
        tries to take it. Cheap enough for every tick."""
        ...

    def holds(self) -> bool:
        """Whether the lock this worker took is still its own (checked, never taken): what the
        leader asks before each step that changes the fleet."""
        ...

    def close(self) -> None:
        """Give the lead up (another worker takes it on its next tick)."""
        ...

    def fence(self) -> AbstractContextManager[object]:
        """Within it (entered in any thread), what this thread does in the store is the lead's
        as it is now: refused (LostLead) once another worker has taken the lead since."""
        ...


HEARTBEAT_S = 5.0  # how often (at most) a leader's thread says SELECT 1 on the lock's session
# the longest a worker taking the lead waits for the previous lead's transactions (its tick, and
# the ingest on its thread, wait with it)
BUMP_WAIT_S = 5.0


class AdvisoryLock:
    """A PostgreSQL session advisory lock, on a connection of its own, kept alive by a thread
    while held; a worker that cannot take it ends the session of a holder quiet for longer
    than `timeout_s`."""

    def __init__(
        self, engine: Engine, key: int = LOCK_KEY, timeout_s: float = LEADER_TIMEOUT_S
    ) -> None:
        self._engine, self._key, self._timeout_s = engine, key, timeout_s
        self._conn: Connection | None = None
        self._held = False
        self._mutex = threading.Lock()  # the connection: the tick's thread and the heartbeat
        self._beating: threading.Event | None = None  # set: the heartbeat thread stops
        self._fenced: set[int] = set()  # holders this worker ended (said once each)
        self.epoch: int | None = None  # the lead's epoch, while held
        self._fencing = threading.local()  # .epoch: what this thread's transactions check
        event.listen(engine, "begin", self._check_epoch)

    def leads(self) -> bool:
        with self._mutex:
            try:
                if self._conn is None:
                    self._conn = self._engine.connect().execution_options(
                        isolation_level="AUTOCOMMIT"
                    )
                    # the bump waits this long at most for a transaction of an earlier lead
                    ms = int(BUMP_WAIT_S * 1000)
                    self._conn.execute(text(f"SET lock_timeout = {ms}"))
                if self._held:
                    self._conn.execute(text("SELECT 1"))  # the session, and its lock, lives
                    return True
                self._held = bool(
                    self._conn.execute(
                        text("SELECT pg_try_advisory_lock(:key)"), {"key": self._key}
                    ).scalar()
                )
                if self._held:
                    self.epoch = self._bump(self._conn)
                    if self.epoch is None:  # an earlier lead's transaction still reads it
                        unlock = text("SELECT pg_advisory_unlock(:key)")
                        self._conn.execute(unlock, {"key": self._key})
                        self._held = False
                else:
                    self._fence(self._conn)
            except BROKEN as exc:
                self._lost(exc)
            if self._held and self._beating is None:
                self._beating = threading.Event()
                threading.Thread(
                    target=self._beat, args=(self._beating,), name="leader-heartbeat", daemon=True
                ).start()
            return self._held

    def holds(self) -> bool:
        with self._mutex:
            if not self._held or self._conn is None:
                return False
            try:
                # the epoch is not checked here: this session's transaction began (autobegin)
                # in leads(), unfenced, and never ends, so no "begin" event fires for it again
                self._conn.execute(text("SELECT 1"))
            except BROKEN as exc:
                self._lost(exc)
            return self._held

    def _bump(self, conn: Connection) -> int | None:
        """The store's leader epoch, one more (the first lead's is 1; after a value no bump
        wrote, 1 again). It waits for the transactions of an earlier lead that read the epoch
        (FOR SHARE) to end, BUMP_WAIT_S at most: None if one is still open then (the lead is
        given back, and asked for again on a later tick). A transaction idle for longer than
        the leader timeout is a hung leader's (a session of it that the fencing did not end:
        its URL names its sessions itself) and is ended first."""
        with contextlib.suppress(*BROKEN):  # one not ended: the bump waits, gives up
            self._end_idle_readers(conn)
        try:
            value = conn.execute(
                text(
                    "INSERT INTO hub_state (key, value) VALUES (:key, CAST('1' AS json)) "
                    "ON CONFLICT (key) DO UPDATE SET value = to_json(CASE "
                    "WHEN CAST(hub_state.value AS text) ~ '^[0-9]{1,18}$' "
                    "THEN CAST(CAST(hub_state.value AS text) AS bigint) ELSE 0 END + 1) "
                    "RETURNING CAST(value AS text)"
                ),
                {"key": EPOCH_KEY},
            ).scalar_one()
        except BROKEN as exc:
            if _sqlstate(exc) != LOCK_NOT_AVAILABLE:
                raise
            log.warning(
                "a transaction of the previous lead still reads the leader epoch after %.0f s: "
                "the lead is given back and asked for again (one idle for %.0f s is ended)",
                BUMP_WAIT_S,
                self._timeout_s,
            )
            return None
        return int(value)

    def _end_idle_readers(self, conn: Connection) -> None:
        """End the sessions idle in a transaction that holds a row lock on hub_state (the
        epoch, read FOR SHARE; a plain read does not hold the bump back) for longer than the
        leader timeout: a hung leader's (or waiting that long for it to read a result: a leader
        stopped while one was on its way). One at a time: a session this role may not end
        (pg_terminate_backend refuses) keeps none of the others from being ended."""
        pids = conn.execute(
            text(
                "SELECT a.pid FROM pg_stat_activity a "
                "WHERE a.datname = current_database() AND a.pid <> pg_backend_pid() "
                "AND (a.state = 'idle in transaction' "
                "OR a.state = 'active' AND a.wait_event = 'ClientWrite') "
                "AND a.state_change < now() - make_interval(secs => :quiet) "
                "AND EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid "
                "AND l.relation = CAST('hub_state' AS regclass) "
                "AND l.mode <> 'AccessShareLock')"
            ),
            {"quiet": self._timeout_s},
        ).scalars()
        for pid in list(pids):
            with contextlib.suppress(*BROKEN):  # not this role's to end
                conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})

    def fence(self) -> AbstractContextManager[object]:
        return _Fence(self._fencing, self.epoch)

    def _check_epoch(self, conn: Connection) -> None:
        """At the start of each transaction on the store's engine: in a fenced thread, the
        store's epoch must still be the fence's (read FOR SHARE: the next lead's bump waits
        for this transaction)."""
        epoch = getattr(self._fencing, "epoch", None)
        if epoch is None:
            return
        now = conn.exec_driver_sql(
            "SELECT CAST(value AS text) FROM hub_state WHERE key = %(key)s FOR SHARE",
            {"key": EPOCH_KEY},
        ).scalar()
        if epoch < 1 or now != str(epoch):  # as text: a value no bump wrote is refused too
            raise LostLead(safe_url(str(self._engine.url)), epoch, now)

    def _beat(self, stop: threading.Event) -> None:
        """While held: SELECT 1 on the lock's session every HEARTBEAT_S (what a worker asking
        for the lead reads as this leader being alive), whatever the tick is busy with."""
        while not stop.wait(min(HEARTBEAT_S, self._timeout_s / 6)):
            with self._mutex:
                if self._beating is not stop or not self._held or self._conn is None:
                    return
                try:
                    self._conn.execute(text("SELECT 1"))
                except BROKEN as exc:
                    self._lost(exc)
                    return

    def _fence(self, conn: Connection) -> None:
        """The lock is another session's (in this database): end it if it has been quiet longer
        than the timeout (its worker no longer runs: a running leader's heartbeat speaks every
        few seconds), and the other sessions of that worker with it (its SESSION_NAME: they may
        hold a transaction, and row locks the next leader's steps would wait on). Where this
        role may not see or end those sessions, the lock stays where it is, said once."""
        hi, lo = (self._key >> 32) & 0xFFFFFFFF, self._key & 0xFFFFFFFF
        row = conn.execute(
            text(
                "SELECT a.pid, a.application_name, a.client_addr, "
                "EXTRACT(EPOCH FROM now() - a.state_change) "
                "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = :hi "
                "AND l.objid = :lo AND l.objsubid = 1 AND l.database = "
                "(SELECT oid FROM pg_database WHERE datname = current_database())"
            ),
            {"hi": hi, "lo": lo},
        ).first()
        if row is None:  # released meanwhile: the next ask takes it
            return
        pid, name, address, quiet = int(row[0]), row[1] or "", row[2], row[3]
        who = f"the leading worker ({name or 'database session ' + str(pid)}, from "
        who += f"{address or 'a local socket'})"
        if quiet is None:
            self._say_once(
                pid,
                logging.ERROR,
                "%s cannot be watched for the leader timeout: this database role does not see "
                "its activity (grant it pg_read_all_stats, or run every worker as one role)",
                who,
            )
            return
        if float(quiet) <= self._timeout_s or pid in self._fenced:
            return
        try:
            ended = bool(
                conn.execute(
                    text(
                        "SELECT bool_or(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid() AND "
                        "(pid = :pid OR (application_name = :name AND :name LIKE 'edgehub:%' "
                        "AND :name <> current_setting('application_name')))"
                    ),
                    {"pid": pid, "name": name},
                ).scalar()
            )
        except BROKEN:  # not this role's to end
            ended = False
        if (
            not ended
            and not conn.execute(
                text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}
            ).scalar()
        ):
            return  # another worker ended it first
        self._fenced.add(pid)  # tried once: never again (a refusal would repeat every tick)
        if ended:
            log.warning(
                "%s has been silent for %.0f s, past the leader timeout of %.0f s: its "
                "sessions are ended, and the lead goes to the next worker to ask",
                who,
                float(quiet),
                self._timeout_s,
            )
        else:
            log.error(
                "%s has been silent for %.0f s, and this database role may not end its "
                "session (pg_terminate_backend): it keeps the lead",
                who,
                float(quiet),
            )

    def _say_once(self, pid: int, level: int, message: str, *args: object) -> None:
        if pid not in self._fenced:
            self._fenced.add(pid)
            log.log(level, message, *args)

    def _lost(self, exc: Exception) -> None:
        """Under the mutex: a statement on the lock's session failed (mostly: the connection
        broke); the session is closed, and a lock it held goes with it."""
        if self._held:
            log.warning("lost the lead: its database session broke (%s)", exc)
        self._drop()

    def _drop(self) -> None:
        self._held = False
        self.epoch = None
        if self._beating is not None:
            self._beating.set()
            self._beating = None
        if self._conn is not None:
            with contextlib.suppress(*BROKEN):
                # closed, not put back in the engine's pool: its session may still hold the
                # lock (a statement that failed on a live session), and it sets lock_timeout
                self._conn.invalidate()
                self._conn.close()
            self._conn = None

    def close(self) -> None:
        with self._mutex:
            if self._held and self._conn is not None:
                with contextlib.suppress(*BROKEN):
                    self._conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": self._key})
            self._drop()


class _Fence:
    """AdvisoryLock.fence: sets the epoch its thread's transactions check, for its `with`."""

    def __init__(self, fencing: threading.local, epoch: int | None) -> None:
        self._fencing, self._epoch = fencing, epoch
        self._outer: int | None = None

    def __enter__(self) -> None:
        self._outer = getattr(self._fencing, "epoch", None)
        self._fencing.epoch = self._epoch if self._epoch is not None else -1  # no lead: none

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._fencing.epoch = self._outer


class FileLock:
    """An exclusive flock on HOME/leader.lock, for workers that share a home on one machine."""

    def __init__(self, home: Path) -> None:
        self._path = home / LOCK_FILE
        self._file: IO[str] | None = None

    def holds(self) -> bool:
        return self._file is not None

    def leads(self) -> bool:
        if self._file is not None:
            return True
        f = self._path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            return False
        f.truncate(0)
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._file = f
        return True

    def fence(self) -> AbstractContextManager[object]:
        return contextlib.nullcontext()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()  # closing drops the flock
            self._file = None


class Sole:
    """The one hub on its store (no `--share` on SQLite): it always leads."""

    def leads(self) -> bool:
        return True

    def holds(self) -> bool:
        return True

    def fence(self) -> AbstractContextManager[object]:
        return contextlib.nullcontext()

    def close(self) -> None:
        pass


class Follower:
    """A worker that never leads (`edgehub serve --ingest-only`: it holds no signing keys)."""

    def leads(self) -> bool:
        return False

    def holds(self) -> bool:
        return False

    def fence(self) -> AbstractContextManager[object]:
        return contextlib.nullcontext()

    def close(self) -> None:
        pass


def leadership(
    engine: Engine, home: Path, shared: bool, timeout_s: float = LEADER_TIMEOUT_S
) -> Leadership:
    """The lock workers on this store compete for: on PostgreSQL always (workers may be on
    other machines; a holder silent for `timeout_s` is ended); on SQLite only for workers
    that split the ingest (`shared`), else the hub is alone on its home
    (cloud_hub.home_lock) and leads."""
    if engine.dialect.name == "postgresql":
        return AdvisoryLock(engine, timeout_s=timeout_s)
    return FileLock(home) if shared else Sole()
