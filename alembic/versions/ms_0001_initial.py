"""Initial schema: the facts table and the transaction log.

Revision ID: ms_0001_initial
Revises:
Create Date: 2026-11-24 00:00:00

Creates ``<prefix>_facts`` and ``<prefix>_tx`` (in the target's schema if one
is given), exactly as `memstate_sql.models.models_for` declares them, plus the
PostgreSQL-only GIN ``jsonb_path_ops`` index on the payload.

Each step checks what exists first (a table, an index), so that a migration
killed half-way on MySQL/MariaDB (no transactional DDL: each statement commits
by itself, and each is atomic) is completed by the next run, which the
migration lock admits for that state (`memstate_sql.migrations.resumable`). On
PostgreSQL and SQLite the whole migration is one transaction and the checks
find nothing.

The column types come from `memstate_sql.models` (their DDL differs per
database). If one of them ever has to render different DDL, freeze a copy of
the old type here first: a revision must keep producing the same schema.
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


class _Existing:
    """What already exists of the target's tables (nothing in offline ``--sql`` scripts)."""

    def __init__(self, schema: str | None) -> None:
        ctx = op.get_context()
        self.schema = schema
        self.inspector = None if ctx.as_sql else sa.inspect(ctx.bind)

    def table(self, name: str) -> bool:
        if self.inspector is None:
            return False
        self.inspector.clear_cache()  # read again: a step just before may have created it
        return self.inspector.has_table(name, schema=self.schema)

    def indexes(self, table: str) -> set[str]:
        if self.inspector is None or not self.table(table):
            return set()
        return {str(i["name"]) for i in self.inspector.get_indexes(table, schema=self.schema)}


def upgrade() -> None:
    t = target()
    facts, log = f"{t.prefix}_facts", f"{t.prefix}_tx"
    have = _Existing(t.schema)
    if not have.table(facts):
        _create_facts(facts, t.schema)
    done = have.indexes(facts)
    for column in ("type", "session_id", "source", "ts"):
        if f"ix_{facts}_{column}" not in done:
            op.create_index(f"ix_{facts}_{column}", facts, [column], schema=t.schema)
    if op.get_context().dialect.name == "postgresql" and f"ix_{facts}_payload_gin" not in done:
        op.create_index(
            f"ix_{facts}_payload_gin",
            facts,
            ["payload"],
            schema=t.schema,
            postgresql_using="gin",
            postgresql_ops={"payload": "jsonb_path_ops"},
        )
    if not have.table(log):
        _create_log(log, t.schema)
    done = have.indexes(log)
    if f"ix_{log}_session_seq" not in done:
        op.create_index(f"ix_{log}_session_seq", log, ["session_id", "seq"], schema=t.schema)
    if f"ix_{log}_fact_id" not in done:
        op.create_index(f"ix_{log}_fact_id", log, ["fact_id"], schema=t.schema)


def _create_facts(facts: str, schema: str | None) -> None:
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
        schema=schema,
    )


def _create_log(log: str, schema: str | None) -> None:
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
        schema=schema,
    )


def downgrade() -> None:
    t = target()
    # Dropping a table drops its indexes (dropping indexes first fails on MariaDB when
    # one backs a constraint).
    op.drop_table(f"{t.prefix}_tx", schema=t.schema)
    op.drop_table(f"{t.prefix}_facts", schema=t.schema)
