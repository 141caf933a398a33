"""Schema migrations of the hub's store (Alembic), applied when the store opens.

`upgrade(engine)` brings any database to the newest revision in `versions/`: a new one is
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
from sqlalchemy import Connection, Engine, inspect

HERE = Path(__file__).resolve().parent
BASELINE = "0001"
BASELINE_TABLE = "records"  # a table every hub before migrations had


def script(location: Path = HERE) -> ScriptDirectory:
    config = Config()
    config.set_main_option("script_location", str(location))
    return ScriptDirectory.from_config(config)


def current(connection: Connection) -> str | None:
    """The database's revision; None for a new database or one from before migrations."""
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine, location: Path = HERE) -> str:
    """Bring the database to the newest revision; returns it."""
    scripts = script(location)
    head = scripts.get_current_head()
    assert head is not None  # versions/ ships with the package
    with engine.begin() as connection:
        if current(connection) == head:
            return head
        if current(connection) is None and inspect(connection).has_table(BASELINE_TABLE):
            MigrationContext.configure(connection).stamp(scripts, BASELINE)

        def steps(rev: Any, _context: Any) -> Any:
            return scripts._upgrade_revs(head, rev)

        env = EnvironmentContext(Config(), scripts)
        env.configure(connection=connection, fn=steps)
        with env.begin_transaction():
            env.run_migrations()
        return head
