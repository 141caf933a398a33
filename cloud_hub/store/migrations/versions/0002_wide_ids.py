"""Row ids, record sequence numbers and counts as 64-bit integers on PostgreSQL: a fleet of
thousands of devices stores 2**31 records within days, and the wire allows (boot, seq) up to
2**63 - 1. SQLite's integers are 64-bit already: nothing changes there.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

WIDENED = (
    ("records", "id"),
    ("records", "boot"),
    ("records", "seq"),
    ("outbox", "id"),
    ("devices", "boot"),
    ("devices", "version"),
    ("refusals", "count"),
    ("prediction_spans", "id"),
    ("prediction_spans", "record"),
)
SEQUENCES = ("records_id_seq", "outbox_id_seq", "prediction_spans_id_seq")


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, column in WIDENED:
        op.alter_column(table, column, type_=sa.BigInteger(), existing_type=sa.Integer())
    for sequence in SEQUENCES:
        op.execute(f"ALTER SEQUENCE IF EXISTS {sequence} AS bigint")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, column in WIDENED:
        op.alter_column(table, column, type_=sa.Integer(), existing_type=sa.BigInteger())
