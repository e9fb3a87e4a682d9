"""Documents as given: the caller's exact fact document or log record, where the columns cannot render it.

Revision ID: ms_0003_documents
Revises: ms_0004_galera
Create Date: 2026-12-02 00:00:00

memstate's backend API promises that ``load(id)`` returns the document ``save()`` was given, and
that the log returns the records ``append_tx()`` was given. The typed columns render a canonical
form (every envelope key present, ``ts`` as UTC with ``Z``); a document that differs from it (extra
keys, missing keys, another spelling of ``ts``, a ``ts`` that is no timestamp) is kept here,
without its payload (facts) or its before/after images (log), which stay in their own columns.
NULL, the value of every row the store writes itself, means "the canonical rendering".

* ``<prefix>_facts.document`` and ``<prefix>_tx.document``: nullable JSON (JSONB on PostgreSQL).

Adding a nullable column without a default is a catalogue change on PostgreSQL and SQLite (ALTER
TABLE ADD COLUMN, no rewrite whatever the table's size); MySQL/MariaDB run their ALTER TABLE ADD
COLUMN (instant or in place, as the server can). Rows already stored read as canonical.

Downgrade drops the columns while no row uses them; otherwise it refuses and says how many rows
would lose their document (rewrite them with `SQLStorage.save` in canonical form first).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from memstate_sql.errors import SchemaVersionError
from memstate_sql.migrations import target
from memstate_sql.models import JSONDocument

revision: str = "ms_0003_documents"
down_revision: str | Sequence[str] | None = "ms_0004_galera"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMN = "document"


def _tables() -> tuple[list[str], str | None]:
    t = target()
    return [f"{t.prefix}_facts", f"{t.prefix}_tx"], t.schema


def _columns(table: str, schema: str | None) -> set[str]:
    ctx = op.get_context()
    if ctx.as_sql:
        return set()
    return {c["name"] for c in sa.inspect(ctx.bind).get_columns(table, schema=schema)}


def _qualified(name: str, schema: str | None) -> str:
    quote = op.get_context().dialect.identifier_preparer.quote
    return f"{quote(schema)}.{quote(name)}" if schema else quote(name)


def upgrade() -> None:
    tables, schema = _tables()
    for table in tables:
        # MySQL/MariaDB DDL is not transactional: a migration interrupted between the two tables
        # completes when run again.
        if COLUMN not in _columns(table, schema):
            op.add_column(table, sa.Column(COLUMN, JSONDocument(), nullable=True), schema=schema)


def downgrade_refusal(bind: sa.Connection, facts_table: str, log_table: str, schema: str | None) -> str | None:
    """Why this revision's downgrade would refuse on `bind` (None: it would not): rows that keep the
    document they were saved with, which the schema below has no place for (docs/migrations.md)."""
    quote = bind.dialect.identifier_preparer.quote
    used = [
        bind.execute(
            sa.text(
                f"SELECT COUNT(*) FROM {quote(schema) + '.' if schema else ''}{quote(table)} "  # noqa: S608
                f"WHERE {COLUMN} IS NOT NULL"
            )
        ).scalar_one()
        for table in (facts_table, log_table)
    ]
    if not any(used):
        return None
    return (
        f"cannot downgrade below ms_0003_documents: {used[0]} facts and {used[1]} log entries keep the "
        "document they were saved with (extra keys, missing keys or another ts spelling), which the older "
        "schema cannot store; save them again in canonical form first"
    )


def downgrade() -> None:
    tables, schema = _tables()
    if not op.get_context().as_sql:
        refusal = downgrade_refusal(op.get_bind(), tables[0], tables[1], schema)
        if refusal:
            raise SchemaVersionError(refusal)
    for table in tables:
        if op.get_context().dialect.name == "sqlite":
            # SQLite >= 3.35 drops an unindexed column in place (no table rebuild).
            op.execute(f"ALTER TABLE {_qualified(table, schema)} DROP COLUMN {COLUMN}")
        else:
            op.drop_column(table, COLUMN, schema=schema)
