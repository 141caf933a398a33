"""The schema of the hub's store as it stood when migrations began (edgefleet 0.x, before
Alembic): every table the hub had created with `metadata.create_all`. A database made by such
a hub is stamped with this revision instead of running it (cloud_hub.store.migrations).

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "command_counters",
        sa.Column("device", sa.String(length=64), nullable=False),
        sa.Column("counter", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("device"),
    )
    op.create_table(
        "devices",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("online", sa.Boolean(), nullable=False),
        sa.Column("boot", sa.Integer(), nullable=False),
        sa.Column("agent_version", sa.String(length=32), nullable=False),
        sa.Column("profile", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=64), nullable=True),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("last_seen", sa.Float(), nullable=False),
        sa.Column("stats", sa.JSON(), nullable=False),
        sa.Column("public_key", sa.String(length=64), nullable=True),
        sa.Column("online_since", sa.Float(), nullable=False),
        sa.Column("group", sa.String(length=64), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "experiments",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("created", sa.Float(), nullable=False),
        sa.Column("updated", sa.Float(), nullable=False),
        sa.Column("rev", sa.Integer(), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "grants",
        sa.Column("device", sa.String(length=64), nullable=False),
        sa.Column("target", sa.String(length=200), nullable=False),
        sa.Column("encrypt", sa.Boolean(), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("device", "target"),
    )
    op.create_table(
        "ground_truth",
        sa.Column("device", sa.String(length=64), nullable=False),
        sa.Column("boot", sa.BigInteger(), nullable=False),
        sa.Column("row_number", sa.BigInteger(), nullable=False),
        sa.Column("label", sa.JSON(), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("received", sa.Float(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("model", sa.String(length=64), nullable=True),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("prediction", sa.JSON(), nullable=True),
        sa.Column("predicted", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("device", "boot", "row_number"),
    )
    op.create_index(
        "ground_truth_model", "ground_truth", ["model", "version", "received"], unique=False
    )
    op.create_index("ground_truth_state", "ground_truth", ["state", "received"], unique=False)
    op.create_table(
        "hub_state",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_table(
        "label_counts",
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("reason", sa.String(length=16), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("last", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("source", "reason"),
    )
    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("device", sa.String(length=64), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.Column("created", sa.Float(), nullable=False),
        sa.Column("sent", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "prediction_spans",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("record", sa.Integer(), nullable=False),
        sa.Column("device", sa.String(length=64), nullable=False),
        sa.Column("boot", sa.BigInteger(), nullable=False),
        sa.Column("first_row", sa.BigInteger(), nullable=False),
        sa.Column("last_row", sa.BigInteger(), nullable=False),
        sa.Column("sample", sa.Boolean(), nullable=False),
        sa.Column("has_predictions", sa.Boolean(), nullable=False),
        sa.Column("model", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("ts", sa.Float(), nullable=False),
        sa.Column("received", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "prediction_spans_rows", "prediction_spans", ["device", "boot", "first_row"], unique=False
    )
    op.create_table(
        "records",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("device", sa.String(length=64), nullable=False),
        sa.Column("boot", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("ts", sa.Float(), nullable=False),
        sa.Column("received", sa.Float(), nullable=False),
        sa.Column("rollout", sa.String(length=64), nullable=True),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("device", "boot", "seq", name="records_once"),
    )
    op.create_index(op.f("ix_records_device"), "records", ["device"], unique=False)
    op.create_index(op.f("ix_records_rollout"), "records", ["rollout"], unique=False)
    op.create_table(
        "refusals",
        sa.Column("device", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.String(length=16), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("last", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("device", "reason"),
    )
    op.create_table(
        "retrain_policies",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=64), nullable=False),
        sa.Column("created", sa.Float(), nullable=False),
        sa.Column("last_fired", sa.Float(), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "retrain_runs",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("policy", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=24), nullable=False),
        sa.Column("created", sa.Float(), nullable=False),
        sa.Column("updated", sa.Float(), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_retrain_runs_policy"), "retrain_runs", ["policy"], unique=False)
    op.create_table(
        "rollouts",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("created", sa.Float(), nullable=False),
        sa.Column("updated", sa.Float(), nullable=False),
        sa.Column("rev", sa.Integer(), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_table("rollouts")
    op.drop_index(op.f("ix_retrain_runs_policy"), table_name="retrain_runs")
    op.drop_table("retrain_runs")
    op.drop_table("retrain_policies")
    op.drop_table("refusals")
    op.drop_index(op.f("ix_records_rollout"), table_name="records")
    op.drop_index(op.f("ix_records_device"), table_name="records")
    op.drop_table("records")
    op.drop_index("prediction_spans_rows", table_name="prediction_spans")
    op.drop_table("prediction_spans")
    op.drop_table("outbox")
    op.drop_table("label_counts")
    op.drop_table("hub_state")
    op.drop_index("ground_truth_state", table_name="ground_truth")
    op.drop_index("ground_truth_model", table_name="ground_truth")
    op.drop_table("ground_truth")
    op.drop_table("grants")
    op.drop_table("experiments")
    op.drop_table("devices")
    op.drop_table("command_counters")
