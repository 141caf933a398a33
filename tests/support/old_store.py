"""What a hub from before schema migrations made of its store: `metadata.create_all` of the
tables it had then, which are the baseline revision's (0001). Tables a later revision added
are left out: such a hub never had them, and their revision creates them."""

from __future__ import annotations

from sqlalchemy import Engine

from cloud_hub.store.database import metadata

LATER_TABLES = {"repo_files"}  # revision 0003


def create_before_migrations(engine: Engine) -> None:
    tables = [t for t in metadata.sorted_tables if t.name not in LATER_TABLES]
    metadata.create_all(engine, tables=tables)
