"""What the store's columns take on both engines: counts and row ids past 2**31, and device
text cut to what a column holds."""

from __future__ import annotations

from sqlalchemy import BigInteger, Integer

# a count, a sequence number or an autoincrement id: BIGINT on PostgreSQL (a fleet's records
# outrun 2**31 within days), INTEGER on SQLite, whose integers (and rowids) are 64-bit already
# and where only INTEGER PRIMARY KEY counts up by itself
WIDE = BigInteger().with_variant(Integer(), "sqlite")


def fit_text(value: str, length: int) -> str:
    """Text a device sent, as a column of `length` characters holds it on both engines:
    PostgreSQL refuses what is longer, a NUL character and half a surrogate pair, where SQLite
    takes them; cut and cleaned here, the record's body keeps what arrived (pure)."""
    clean = value.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")
    return clean[:length]
