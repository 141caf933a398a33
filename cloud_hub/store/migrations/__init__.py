"""Schema migrations of the hub's store (Alembic), applied when the store opens.

`upgrade(engine)` brings any database to the newest revision in `versions/` (`edgehub store
upgrade` runs it by hand, `edgehub store status` shows where a database is): a new one is
created revision by revision; one made by a hub from before migrations (its tables there, no
`alembic_version`) is first stamped as the baseline it already holds. So upgrading edgefleet
upgrades a live hub's schema, on SQLite and PostgreSQL alike. No env.py: the store runs the
revisions itself, on its own connection, in one transaction.

A new revision: `alembic -c cloud_hub/store/migrations/alembic.ini revision -m "what"`, then
write its upgrade() with `op.add_column(...)` and the like (keep it working on both engines).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect, text

from cloud_hub.store.errors import StoreError, safe_url

HERE = Path(__file__).resolve().parent
BASELINE = "0001"
BASELINE_TABLE = "records"  # a table every hub before migrations had
UPGRADE_LOCK_KEY = 0x65646765666C7432  # "edgeflt2": held while a worker migrates the database


def script(location: Path = HERE) -> ScriptDirectory:
    config = Config()
    config.set_main_option("script_location", str(location))
    return ScriptDirectory.from_config(config)


def current(connection: Connection) -> str | None:
    """The database's revision; None for a new database or one from before migrations."""
    return MigrationContext.configure(connection).get_current_revision()


def known(revision: str | None, location: Path = HERE) -> bool:
    """Whether this edgefleet knows `revision` (None, a database before any: yes); a database
    at one it does not know was migrated by a newer edgefleet."""
    revisions = script(location).walk_revisions()
    return revision is None or any(r.revision == revision for r in revisions)


def newer_error(engine: Engine, revision: str, location: Path = HERE) -> StoreError:
    return StoreError(
        "newer",
        safe_url(str(engine.url)),
        f"its schema revision is {revision}; this edgefleet knows up to {head(location)}",
    )


def head(location: Path = HERE) -> str:
    """The newest revision this edgefleet knows."""
    found = script(location).get_current_head()
    assert found is not None  # versions/ ships with the package
    return found


def upgrade(engine: Engine, location: Path = HERE) -> str:
    """Bring the database to the newest revision; returns it."""
    return upgrade_from(engine, location)[1]


def upgrade_from(engine: Engine, location: Path = HERE) -> tuple[str | None, str]:
    """Bring the database to the newest revision; returns (the revision before, None for an
    empty database, and the newest).
    Workers that open one un-migrated database at once take turns (`_upgrade_lock`): the first
    migrates, the others find it done.
    A database a newer edgefleet migrated (a revision this one does not know) is a
    StoreError saying so: nothing is changed, and this edgefleet must be upgraded."""
    scripts = script(location)
    newest = head(location)
    with engine.connect() as connection:  # the common case, without a lock: nothing to do
        if current(connection) == newest:
            return newest, newest
    with engine.begin() as connection:
        _upgrade_lock(connection)
        before = current(connection)  # again: another worker may have migrated meanwhile
        if before == newest:
            return before, newest
        if not known(before, location):
            assert before is not None
            raise newer_error(engine, before, location)
        if before is None and inspect(connection).has_table(BASELINE_TABLE):
            MigrationContext.configure(connection).stamp(scripts, BASELINE)
            before = BASELINE  # what it holds: the schema from before migrations

        def steps(rev: Any, _context: Any) -> Any:
            return scripts._upgrade_revs(newest, rev)

        env = EnvironmentContext(Config(), scripts)
        env.configure(connection=connection, fn=steps)
        with env.begin_transaction():
            env.run_migrations()
        return before, newest


def _upgrade_lock(connection: Connection) -> None:
    """Hold the database's upgrade lock until `connection`'s transaction ends: on PostgreSQL a
    transaction advisory lock (the server drops it at commit, rollback or a dead session); on
    SQLite the write lock, taken at the start (BEGIN IMMEDIATE), so the revision read next is
    the one the migrations start from."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": UPGRADE_LOCK_KEY})
    elif connection.dialect.name == "sqlite":
        connection.exec_driver_sql("BEGIN IMMEDIATE")
