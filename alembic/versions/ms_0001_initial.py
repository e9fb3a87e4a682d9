"""Initial schema: the facts table and the transaction log.

Revision ID: ms_0001_initial
Revises:
Create Date: 2026-11-24 00:00:00

Creates ``<prefix>_facts`` and ``<prefix>_tx`` (in the target's schema if one
is given), exactly as `memstate_sql.models.models_for` declares them, plus the
PostgreSQL-only GIN ``jsonb_path_ops`` index on the payload.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from memstate_sql.migrations import target
from memstate_sql.models import JSONDocument, KeyString, SeqType, UTCDateTime

revision: str = "ms_0001_initial"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = ("memstate_sql",)
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    t = target()
    facts, log = f"{t.prefix}_facts", f"{t.prefix}_tx"
    op.create_table(
        facts,
        sa.Column("id", KeyString(), primary_key=True),
        sa.Column("type", KeyString(), nullable=False),
        sa.Column("session_id", KeyString(), nullable=True),
        sa.Column("source", KeyString(), nullable=True),
        sa.Column("ts", UTCDateTime(), nullable=False),
        sa.Column("payload", JSONDocument(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("immutable", sa.Boolean(create_constraint=False), nullable=False),
        sa.Column("singleton", KeyString(), nullable=True),
        sa.UniqueConstraint("type", "singleton", name=f"uq_{facts}_singleton"),
        sa.CheckConstraint("version >= 1", name=f"ck_{facts}_version"),
        schema=t.schema,
    )
    for column in ("type", "session_id", "source", "ts"):
        op.create_index(f"ix_{facts}_{column}", facts, [column], schema=t.schema)
    if op.get_context().dialect.name == "postgresql":
        op.create_index(
            f"ix_{facts}_payload_gin",
            facts,
            ["payload"],
            schema=t.schema,
            postgresql_using="gin",
            postgresql_ops={"payload": "jsonb_path_ops"},
        )

    op.create_table(
        log,
        sa.Column("seq", SeqType, primary_key=True, autoincrement=True),
        sa.Column("uuid", sa.String(36), nullable=False),
        sa.Column("op", sa.String(32), nullable=False),
        sa.Column("session_id", KeyString(), nullable=True),
        sa.Column("fact_id", KeyString(), nullable=True),
        sa.Column("actor", KeyString(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("ts", UTCDateTime(), nullable=False),
        sa.Column("fact_before", JSONDocument(), nullable=True),
        sa.Column("fact_after", JSONDocument(), nullable=True),
        sa.Column("discarded", JSONDocument(), nullable=True),
        sa.Column("reverted_by", sa.String(36), nullable=True),
        sa.UniqueConstraint("uuid", name=f"uq_{log}_uuid"),
        schema=t.schema,
    )
    op.create_index(f"ix_{log}_session_seq", log, ["session_id", "seq"], schema=t.schema)
    op.create_index(f"ix_{log}_fact_id", log, ["fact_id"], schema=t.schema)


def downgrade() -> None:
    t = target()
    # Dropping a table drops its indexes (dropping indexes first fails on MariaDB when
    # one backs a constraint).
    op.drop_table(f"{t.prefix}_tx", schema=t.schema)
    op.drop_table(f"{t.prefix}_facts", schema=t.schema)
