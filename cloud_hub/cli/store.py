"""`edgehub store {status,upgrade}`: where the hub's database is, its schema revision against
the newest this edgefleet knows, what its tables hold; and the migrations, run by hand (every
hub process also runs them when it opens the store, one worker at a time)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.table import Table

from cloud_hub.cli.output import say, show
from cloud_hub.store.url import has_hub, store_url
from edge_agent.errors import ConfigError

if TYPE_CHECKING:  # SQLAlchemy and Alembic load when a store command runs
    from sqlalchemy import Engine

AddCommand = Callable[..., argparse.ArgumentParser]
BEFORE_MIGRATIONS = "before migrations"  # tables, but no revision: a hub from before them


def _opened(args: argparse.Namespace) -> tuple[str, Engine]:
    """The store's URL and engine, as it is (nothing migrated); ConfigError where there is no
    hub in --home to look at."""
    from cloud_hub.store.database import open_engine

    home = Path(args.home)
    if not has_hub(home):
        raise ConfigError(f"--home {home}: expected a hub folder (edgehub keys init), found none")
    url = store_url(home)
    return url, open_engine(url)


def status_of(url: str, engine: Engine) -> dict[str, Any]:
    """What `store status` shows: engine, URL (no password), revision, head, rows per table
    (None for a table the database does not have yet)."""
    from sqlalchemy import func, inspect, select

    from cloud_hub.store import migrations
    from cloud_hub.store.database import metadata
    from cloud_hub.store.errors import safe_url

    with engine.connect() as conn:
        revision = migrations.current(conn)
        present = set(inspect(conn).get_table_names())
        rows: dict[str, int | None] = {}
        for table in sorted(metadata.sorted_tables, key=lambda t: t.name):
            count = select(func.count()).select_from(table)
            rows[table.name] = conn.execute(count).scalar_one() if table.name in present else None
    if revision is None and migrations.BASELINE_TABLE in present:
        revision = BEFORE_MIGRATIONS
    head = migrations.head()
    return {
        "engine": engine.dialect.name,
        "url": safe_url(url),
        "revision": revision,
        "head": head,
        "up_to_date": revision == head,
        # made by a newer edgefleet: this one cannot upgrade it
        "newer": revision != BEFORE_MIGRATIONS and not migrations.known(revision),
        "rows": rows,
    }


def cmd_store_status(args: argparse.Namespace) -> int:
    url, engine = _opened(args)
    try:
        info = status_of(url, engine)
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    revision = info["revision"] or "none (an empty database)"
    behind = "" if info["up_to_date"] else " — run `edgehub store upgrade` (or start the hub)"
    if info["newer"]:
        behind = " — a newer edgefleet migrated it: upgrade edgefleet to use this database"
    say(f"store: {info['engine']} at {info['url']}")
    say(f"schema: {revision}, newest {info['head']}{behind}")
    table = Table(title="tables")
    table.add_column("table", no_wrap=True)
    table.add_column("rows", justify="right")
    for name, count in info["rows"].items():
        table.add_row(name, "missing" if count is None else str(count))
    show(table)
    return 0


def cmd_store_upgrade(args: argparse.Namespace) -> int:
    from cloud_hub.store import migrations

    _url, engine = _opened(args)
    try:
        before, after = migrations.upgrade_from(engine)
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps({"from": before, "to": after, "changed": before != after}))
    elif before == after:
        say(f"store: already at the newest schema revision, {after}")
    else:
        say(f"store: schema upgraded from {before or 'none (an empty database)'} to {after}")
    return 0


def register(sub: Any, add: AddCommand) -> argparse.ArgumentParser:
    """`edgehub store ...` under the top-level subparsers `sub`, with cli.build_parser's `add`."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "store", help="the hub's database", description="the hub's database"
    )
    store = parser.add_subparsers(dest="sub", required=True)
    add(
        store,
        "status",
        cmd_store_status,
        "engine, address, schema revision and rows per table",
        json_out=True,
    )
    add(
        store,
        "upgrade",
        cmd_store_upgrade,
        "bring the schema to the newest revision (hubs also do when they start)",
        json_out=True,
    )
    return parser
