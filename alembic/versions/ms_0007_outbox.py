"""The outbox: what external indexes (vector stores) must still learn, written in the operation's transaction.

Revision ID: ms_0007_outbox
Revises: ms_0006_vectors
Create Date: 2026-12-02 00:00:00

Creates ``<prefix>_outbox`` (docs/search.md, "External indexes: hooks and the outbox"): one row per fact
change an external index has not received yet, deleted once delivered. A new, empty table: the upgrade
takes no lock on the existing tables on any database. The column types are frozen here (copies of
`memstate_sql.models`' types as of this revision).

Downgrade drops the table when it is empty, and refuses while undelivered rows remain (deliver them
first: ``memstate-sql outbox deliver``, or delete them knowingly).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from memstate_sql.errors import SchemaVersionError
from memstate_sql.migrations import target
from memstate_sql.models import KeyString, SeqType, UTCDateTime

revision: str = "ms_0007_outbox"
down_revision: str | Sequence[str] | None = "ms_0006_vectors"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _existing(table: str, schema: str | None) -> tuple[bool, set[str]]:
    """Whether `table` exists, and its index names (offline ``--sql``: nothing exists yet)."""
    ctx = op.get_context()
    if ctx.as_sql:
        return False, set()
    inspector = sa.inspect(ctx.bind)
    if not inspector.has_table(table, schema=schema):
        return False, set()
    return True, {i["name"] for i in inspector.get_indexes(table, schema=schema) if i["name"]}


def upgrade() -> None:
    t = target()
    outbox = f"{t.prefix}_outbox"
    # MySQL/MariaDB DDL is not transactional: each step checks what exists, so a migration killed
    # between two steps completes when run again (docs/migrations.md).
    exists, indexes = _existing(outbox, t.schema)
    if exists:
        _indexes(outbox, t.schema, indexes)
        return
    op.create_table(
        outbox,
        sa.Column("seq", SeqType, primary_key=True, autoincrement=True),
        sa.Column("namespace", KeyString(), nullable=False, server_default=""),
        sa.Column("target", KeyString(), nullable=False),
        sa.Column("fact_id", KeyString(), nullable=False),
        sa.Column("op", sa.String(16), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", UTCDateTime(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("lease_owner", sa.String(36), nullable=True),
        sa.Column("lease_until", UTCDateTime(), nullable=True),
        schema=t.schema,
    )
    _indexes(outbox, t.schema, set())


def _indexes(outbox: str, schema: str | None, present: set[str]) -> None:
    for name, columns in (
        (f"ix_{outbox}_fact", ["namespace", "target", "fact_id", "seq"]),
        (f"ix_{outbox}_due", ["namespace", "target", "next_attempt_at"]),
    ):
        if name not in present:
            op.create_index(name, outbox, columns, schema=schema)


def downgrade_refusal(bind: sa.Connection, facts_table: str, log_table: str, schema: str | None) -> str | None:
    """Why this revision's downgrade would refuse on `bind` (None: it would not): undelivered changes
    for external indexes (docs/migrations.md)."""
    outbox = facts_table.removesuffix("_facts") + "_outbox"
    quote = bind.dialect.identifier_preparer.quote
    name = f"{quote(schema)}.{quote(outbox)}" if schema else quote(outbox)
    pending = bind.execute(sa.text(f"SELECT COUNT(*) FROM {name}")).scalar()  # noqa: S608
    if not pending:
        return None
    return (
        f"cannot downgrade below ms_0007_outbox: {outbox} holds {pending} undelivered change(s) for "
        "external indexes; deliver them first (memstate-sql outbox deliver) or delete them knowingly"
    )


def downgrade() -> None:
    t = target()
    outbox = f"{t.prefix}_outbox"
    ctx = op.get_context()
    if not ctx.as_sql:
        refusal = downgrade_refusal(op.get_bind(), f"{t.prefix}_facts", f"{t.prefix}_tx", t.schema)
        if refusal:
            raise SchemaVersionError(refusal)
    op.drop_index(f"ix_{outbox}_due", table_name=outbox, schema=t.schema)
    op.drop_index(f"ix_{outbox}_fact", table_name=outbox, schema=t.schema)
    op.drop_table(outbox, schema=t.schema)
