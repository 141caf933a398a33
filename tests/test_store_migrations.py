"""An upgrade of edgefleet upgrades a live hub's schema (cloud_hub.store.migrations), on SQLite
and on PostgreSQL: a new store is built revision by revision into exactly the schema the code
declares, a store made before migrations is taken over without losing a record, and a
revision added later applies to a database that is already in use."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, insert, inspect, text

from cloud_hub.store import migrations
from cloud_hub.store.database import Store, metadata, records
from cloud_hub.store.url import store_url
from edge_agent.protocol.messages import Batch, Record

pytestmark = pytest.mark.usefixtures("each_store")  # on SQLite and on PostgreSQL

LATER = '''"""a later release: devices get a note

Revision ID: 0999
Revises: {head}
"""

import sqlalchemy as sa
from alembic import op

revision = "0999"
down_revision = "{head}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("devices", sa.Column("note", sa.String(200), nullable=True))


def downgrade() -> None:
    op.drop_column("devices", "note")
'''


def _telemetry(store: Store, device: str, n: int) -> None:
    now = time.time()
    records = tuple(Record(1, i, now, {"count": i}) for i in range(n))
    store.add_batch("telemetry", Batch(device, records))


def test_a_new_store_is_the_declared_schema_at_the_newest_revision(tmp_path: Path) -> None:
    store = Store(store_url(tmp_path))
    assert store.revision == migrations.script().get_current_head()
    with store.engine.connect() as c:
        assert migrations.current(c) == store.revision
        # the revisions build what the code declares: a table or column added to database.py
        # without a revision fails here
        assert compare_metadata(MigrationContext.configure(c), metadata) == []


def test_a_store_from_before_migrations_is_taken_over_with_its_records(tmp_path: Path) -> None:
    url = store_url(tmp_path)
    engine = create_engine(url)
    metadata.create_all(engine)  # what every hub before migrations did on open
    with engine.begin() as c:  # and the records it stored
        assert migrations.current(c) is None
        c.execute(
            insert(records),
            [
                {
                    "kind": "telemetry",
                    "device": "pi-01",
                    "boot": 1,
                    "seq": i,
                    "ts": 1.0,
                    "received": 1.0,
                    "rollout": None,
                    "body": {"count": i},
                }
                for i in range(3)
            ],
        )
    engine.dispose()

    store = Store(url)
    assert store.revision == migrations.script().get_current_head()
    assert store.count("telemetry", "pi-01") == 3
    _telemetry(store, "pi-01", 5)  # the repeats are ignored, as ever
    assert store.count("telemetry", "pi-01") == 5


def test_a_later_revision_applies_to_a_live_store(tmp_path: Path) -> None:
    url = store_url(tmp_path)
    store = Store(url)
    store.register("pi-01")
    _telemetry(store, "pi-01", 4)
    head = store.revision
    later = tmp_path / "migrations"
    shutil.copytree(migrations.HERE, later, ignore=shutil.ignore_patterns("__pycache__"))
    (later / "versions" / "0999_note.py").write_text(LATER.format(head=head))

    assert migrations.upgrade(store.engine, later) == "0999"
    with store.engine.connect() as c:
        assert migrations.current(c) == "0999"
        assert "note" in {col["name"] for col in inspect(c).get_columns("devices")}
        assert c.execute(text("select count(*) from devices")).scalar() == 1
    assert store.count("telemetry", "pi-01") == 4
    assert migrations.upgrade(store.engine, later) == "0999"  # again: nothing to do
