"""Vector index: one embedding per fact, beside the fact, written in the fact's transaction.

Revision ID: ms_0006_vectors
Revises: ms_0003_documents
Create Date: 2026-12-02 00:00:00

Creates ``<prefix>_vectors`` (docs/search.md): ``(namespace, fact_id)`` primary key, the fact
``version`` the embedding was computed for, ``dim``, ``text_hash`` (SHA-256 of the embedded text)
and ``vector`` (the unit-length embedding packed as little-endian float32; BLOB on SQLite and
MySQL/MariaDB, so at most 16,000 dimensions there; BYTEA on PostgreSQL). The table is portable:
it needs no database extension. It has no foreign key to the facts table on purpose (SQLite
enforces one only with ``PRAGMA foreign_keys``, and its table rebuilds would cascade); the store
deletes a fact's vector in the transaction that deletes the fact, and a search joins each vector to
its fact at the same version, so a vector never outlives or misrepresents its fact.

A new, empty table: nothing is rewritten, on any database. Downgrade drops it while it is empty
and refuses otherwise (drop the vectors of every namespace first, e.g. by removing the vector
index configuration and deleting the rows, if losing them is intended).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from memstate_sql.errors import SchemaVersionError
from memstate_sql.migrations import target
from memstate_sql.models import KeyString

revision: str = "ms_0006_vectors"
down_revision: str | Sequence[str] | None = "ms_0003_documents"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _exists(table: str, schema: str | None) -> bool:
    ctx = op.get_context()
    if ctx.as_sql:
        return False
    return sa.inspect(ctx.bind).has_table(table, schema=schema)


def upgrade() -> None:
    t = target()
    table = f"{t.prefix}_vectors"
    if _exists(table, t.schema):  # MySQL/MariaDB DDL is not transactional: a re-run completes
        return
    op.create_table(
        table,
        sa.Column("namespace", KeyString(), nullable=False, server_default=""),
        sa.Column("fact_id", KeyString(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("text_hash", sa.String(64), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("namespace", "fact_id", name=f"pk_{table}"),
        sa.CheckConstraint("dim >= 1", name=f"ck_{table}_dim"),
        schema=t.schema,
    )


def downgrade_refusal(bind: sa.Connection, facts_table: str, log_table: str, schema: str | None) -> str | None:
    """Why this revision's downgrade would refuse on `bind` (None: it would not): stored embeddings,
    which the older schema has no place for (docs/migrations.md)."""
    table = facts_table.removesuffix("_facts") + "_vectors"
    if not sa.inspect(bind).has_table(table, schema=schema):
        return None
    frozen = sa.Table(table, sa.MetaData(), sa.Column("fact_id", KeyString()), schema=schema)
    rows = bind.execute(sa.select(sa.func.count()).select_from(frozen)).scalar_one()
    if not rows:
        return None
    return (
        f"cannot downgrade below ms_0006_vectors: {table} holds {rows} embeddings, which the older "
        "schema has no place for; delete them first if losing them is intended"
    )


def downgrade() -> None:
    t = target()
    table = f"{t.prefix}_vectors"
    ctx = op.get_context()
    if not ctx.as_sql:
        refusal = downgrade_refusal(op.get_bind(), f"{t.prefix}_facts", f"{t.prefix}_tx", t.schema)
        if refusal:
            raise SchemaVersionError(refusal)
    op.drop_table(table, schema=t.schema)
