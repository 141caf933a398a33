"""Which hub worker leads: one runs the rollout engine, experiments, retraining policies, the
command outbox and TUF publication (the signing side); every worker ingests (MQTT shared
subscriptions), serves transfers and the dashboard.

On PostgreSQL the leader holds a session advisory lock on a connection of its own
(`pg_try_advisory_lock`); the server drops it the moment that session ends, however the worker
ends (SIGKILL included: the socket closes), and the next worker to ask, on its next tick,
leads. A leader whose machine vanished (powered off, cut off) closes no socket: the server's
keepalives end its session within about 15 s (cloud_hub.store.database.PG_CONNECT_ARGS), and
that leader's own end gives up as soon. A leader process that hangs on a live machine keeps it.
A worker whose TUF repository is behind the one the leader published does not ask at all
(cloud_hub.hub). On SQLite (workers share one machine and one home) the same is a `flock` on
HOME/leader.lock, which the kernel drops with the process. A worker that loses its lock (its
database connection broke) stops leading at once and asks again on later ticks.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from pathlib import Path
from typing import IO, Protocol

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import SQLAlchemyError

log = logging.getLogger(__name__)

LOCK_KEY = 0x65646765666C7431  # "edgeflt1": the advisory lock every edgefleet hub asks for
LOCK_FILE = "leader.lock"


class Leadership(Protocol):
    def leads(self) -> bool:
        """Whether this worker leads now: keeps a lock it holds (checking it still does), or
        tries to take it. Cheap enough for every tick."""
        ...

    def close(self) -> None:
        """Give the lead up (another worker takes it on its next tick)."""
        ...


class AdvisoryLock:
    """A PostgreSQL session advisory lock, on a connection of its own."""

    def __init__(self, engine: Engine, key: int = LOCK_KEY) -> None:
        self._engine, self._key = engine, key
        self._conn: Connection | None = None
        self._held = False

    def leads(self) -> bool:
        try:
            if self._conn is None:
                self._conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            if self._held:
                self._conn.execute(text("SELECT 1"))  # the session, and with it the lock, lives
            else:
                self._held = bool(
                    self._conn.execute(
                        text("SELECT pg_try_advisory_lock(:key)"), {"key": self._key}
                    ).scalar()
                )
        except SQLAlchemyError as exc:
            if self._held:
                log.warning("lost the lead: its database session broke (%s)", exc)
            self._drop()
        return self._held

    def _drop(self) -> None:
        self._held = False
        if self._conn is not None:
            with contextlib.suppress(SQLAlchemyError):
                self._conn.close()
            self._conn = None

    def close(self) -> None:
        if self._held and self._conn is not None:
            with contextlib.suppress(SQLAlchemyError):
                self._conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": self._key})
        self._drop()


class FileLock:
    """An exclusive flock on HOME/leader.lock, for workers that share a home on one machine."""

    def __init__(self, home: Path) -> None:
        self._path = home / LOCK_FILE
        self._file: IO[str] | None = None

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

    def close(self) -> None:
        if self._file is not None:
            self._file.close()  # closing drops the flock
            self._file = None


class Sole:
    """The one hub on its store (no `--share` on SQLite): it always leads."""

    def leads(self) -> bool:
        return True

    def close(self) -> None:
        pass


class Follower:
    """A worker that never leads (`edgehub serve --ingest-only`: it holds no signing keys)."""

    def leads(self) -> bool:
        return False

    def close(self) -> None:
        pass


def leadership(engine: Engine, home: Path, shared: bool) -> Leadership:
    """The lock workers on this store compete for: on PostgreSQL always (workers may be on
    other machines); on SQLite only for workers that split the ingest (`shared`), else the
    hub is alone on its home (cloud_hub.home_lock) and leads."""
    if engine.dialect.name == "postgresql":
        return AdvisoryLock(engine)
    return FileLock(home) if shared else Sole()
