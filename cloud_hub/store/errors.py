"""The store's own error family: what a database failure means, in the project's error tree.

SQLAlchemy raises its own exceptions, named after the driver's; the hub and the CLI should not
need to know them. Every error the engine raises while connecting or running a statement is
turned into a `StoreError` (a `TransportError`: the database may take the write later) with a
reason a person can act on, the database's address without its password, and what the driver
said. The CLI prints it as one line.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.engine import make_url

from edge_agent.errors import TransportError

# StoreError.reason -> what a person reads
STORE_REASONS = {
    "locked": "the database is locked by another process; retry, or stop the other writer",
    "unavailable": "cannot open or reach the database",
    "disk-full": "the disk under the database is full",
    "read-only": "the database is read-only",
    "corrupt": "the database file is damaged",
    "schema": "the database's tables do not match this version of edgefleet",
    "newer": "a newer edgefleet migrated this database: upgrade edgefleet to use it",
    "bad-url": "expected a database URL such as postgresql://user:password@host:5432/name "
    "or sqlite:////path/hub.sqlite",
    "no-driver": "the database's driver is not installed (PostgreSQL: pip install "
    "'edgefleet[postgres]')",
    "not-finite": "NaN and Infinity cannot be stored (JSON has no such numbers)",
    "failed": "the database refused the statement",
    "lost-lead": "another hub worker has taken the lead since: this one's leader work is refused",
}
# words in a driver's message -> reason (SQLite and PostgreSQL say these)
_MARKERS = (
    ("expected finite numbers", "not-finite"),  # cloud_hub.store.database.dumps
    ("no module named", "no-driver"),
    ("could not translate host name", "unavailable"),
    ("name or service not known", "unavailable"),
    ("fatal:", "unavailable"),  # PostgreSQL refused the session: no such database or role, ...
    ("database is locked", "locked"),
    ("database table is locked", "locked"),
    ("could not obtain lock", "locked"),
    ("unable to open database", "unavailable"),
    ("could not connect", "unavailable"),
    ("connection refused", "unavailable"),
    ("database or disk is full", "disk-full"),
    ("no space left", "disk-full"),
    ("readonly database", "read-only"),
    ("read-only", "read-only"),
    ("malformed", "corrupt"),
    ("file is not a database", "corrupt"),
    ("no such table", "schema"),
    ("no such column", "schema"),
    ("does not exist", "schema"),
)


class StoreError(TransportError):
    """A database failure. `reason` is a key of STORE_REASONS, `where` the database (no
    password), `detail` what the driver said."""

    def __init__(self, reason: str, where: str, detail: str) -> None:
        super().__init__(f"hub store {where}: {STORE_REASONS.get(reason, reason)} ({detail})")
        self.reason = reason
        self.where = where
        self.detail = detail


RecordKey = tuple[str, str, int, int]  # kind, device, boot, seq


class Unstorable(StoreError):
    """Records whose bodies the store cannot keep (a NaN or infinite number: JSON has none),
    found before any statement ran: `records` maps each one's key to where the number is. The
    caller may refuse those records for good and store the others."""

    def __init__(self, where: str, records: dict[RecordKey, str]) -> None:
        (kind, device, boot, seq), why = next(iter(records.items()))
        first = f"{kind} record of {device} ({boot}, {seq}): {why}"
        detail = first if len(records) == 1 else f"{len(records)} records; the first, {first}"
        super().__init__("not-finite", where, detail)
        self.records = records


def reason_of(detail: str) -> str:
    """The reason code of a driver's message (pure)."""
    low = detail.lower()
    return next((reason for marker, reason in _MARKERS if marker in low), "failed")


def safe_url(url: str) -> str:
    """The database's address as it may be printed: the password hidden (of a URL it cannot
    parse, whatever stands between a colon and an @)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL: what may be a password is hidden all the same
        return re.sub(r":[^:@/]*@", ":***@", url)


def store_error(url: str, exc: BaseException) -> StoreError:
    detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    return StoreError(reason_of(detail), safe_url(url), detail)


def raise_store_errors(engine: Engine) -> None:
    """Have `engine` raise StoreError in place of the driver's exceptions, for every statement
    and every connection attempt."""
    where = str(engine.url)

    def translate(context: Any) -> None:
        raise store_error(where, context.original_exception) from context.original_exception

    event.listen(engine, "handle_error", translate)
