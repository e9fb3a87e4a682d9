"""Log order: each log entry's position in its session's log, and the sessions table that hands them out.

Revision ID: ms_0005_log_order
Revises: ms_0007_outbox
Create Date: 2026-12-02 00:00:00

``seq`` (the log's identity) is unique but is not commit order: it is assigned at INSERT,
so a lower ``seq`` can commit later, and on Galera each node hands out its own values
(docs/log-order.md). This revision adds what rollback and every session reader order by:

* ``<prefix>_tx.session_seq``: the entry's position in its session's log, NULL for entries
  without a session (they take no position, so their writers are not serialised); a plain
  index ``ix_<prefix>_tx_session_position (namespace, session_id, session_seq)`` (not UNIQUE:
  Galera certifies a unique key holding NULLs as a shared key, so concurrent sessionless
  inserts would conflict; the session's row lock keeps positions unique, `verify` checks it);
* ``<prefix>_sessions(namespace, session_id, without_session, last_seq)``: one row per
  session holding the last position handed out; the operation's transaction writes it
  (so one session's writers are serialised, and certified on Galera).

Existing entries of sessions are numbered in their ``seq`` order per session (the order the
previous release used), and each session's row gets the last number; entries without a
session stay NULL. Stop writers of the previous
release before upgrading: they do not assign positions.

PostgreSQL builds the index ``CONCURRENTLY`` when it runs on its own connection.
Downgrade drops the positions only when every session's position order is its ``seq``
order (nothing would be lost); otherwise it refuses (`downgrade_refusal`, which
`memstate_sql.migrations.downgrade` also asks before it changes anything).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from memstate_sql.errors import SchemaVersionError
from memstate_sql.migrations import target
from memstate_sql.models import KeyString, SeqType

revision: str = "ms_0005_log_order"
down_revision: str | Sequence[str] | None = "ms_0007_outbox"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _dialect() -> str:
    return op.get_context().dialect.name


def _qualified(name: str, schema: str | None) -> str:
    quote = op.get_context().dialect.identifier_preparer.quote
    return f"{quote(schema)}.{quote(name)}" if schema else quote(name)


def _inspector() -> sa.Inspector | None:
    ctx = op.get_context()
    return None if ctx.as_sql else sa.inspect(ctx.bind)


def _columns(table: str, schema: str | None) -> set[str]:
    insp = _inspector()
    return set() if insp is None else {c["name"] for c in insp.get_columns(table, schema=schema)}


def _tables(schema: str | None) -> set[str]:
    insp = _inspector()
    return set() if insp is None else set(insp.get_table_names(schema=schema))


def _indexes(table: str, schema: str | None) -> set[str]:
    insp = _inspector()
    return set() if insp is None else {i["name"] for i in insp.get_indexes(table, schema=schema) if i["name"]}


def _online_ddl() -> bool:
    ctx = op.get_context()
    return _dialect() == "postgresql" and not ctx.as_sql and not ctx.opts.get("memstate_external_transaction")


def upgrade() -> None:
    t = target()
    log, sessions, schema = f"{t.prefix}_tx", f"{t.prefix}_sessions", t.schema
    tx, st = _qualified(log, schema), _qualified(sessions, schema)
    if op.get_context().as_sql or sessions not in _tables(schema):
        op.create_table(
            sessions,
            sa.Column("namespace", KeyString(), nullable=False),
            sa.Column("session_id", KeyString(), nullable=False),
            sa.Column("without_session", sa.Boolean(create_constraint=False), nullable=False),
            sa.Column("last_seq", SeqType, nullable=False),
            sa.PrimaryKeyConstraint("namespace", "session_id", "without_session", name=f"{sessions}_pkey"),
            schema=schema,
        )
    if op.get_context().as_sql or "session_seq" not in _columns(log, schema):
        op.add_column(log, sa.Column("session_seq", SeqType, nullable=True), schema=schema)

    # Number the existing entries of each session in seq order (window functions: PostgreSQL, MariaDB >=
    # 10.2, MySQL 8, SQLite >= 3.25), only those without a position (a re-run after an interruption).
    # Entries without a session take no position: they stay NULL.
    numbered = (
        "SELECT seq AS n_seq, ROW_NUMBER() OVER (PARTITION BY namespace, session_id ORDER BY seq) AS n_pos "  # noqa: S608
        f"FROM {tx} WHERE session_id IS NOT NULL"
    )
    if _dialect() == "mysql":
        op.execute(
            f"UPDATE {tx} JOIN ({numbered}) AS numbered ON {tx}.seq = numbered.n_seq "  # noqa: S608
            f"SET {tx}.session_seq = numbered.n_pos WHERE {tx}.session_seq IS NULL"
        )
    else:
        op.execute(
            f"UPDATE {tx} SET session_seq = numbered.n_pos FROM ({numbered}) AS numbered "  # noqa: S608
            f"WHERE {tx}.seq = numbered.n_seq AND {tx}.session_seq IS NULL"
        )
    op.execute(f"DELETE FROM {st}")  # noqa: S608
    false = "FALSE" if _dialect() == "postgresql" else "0"
    op.execute(
        f"INSERT INTO {st} (namespace, session_id, without_session, last_seq) "  # noqa: S608
        f"SELECT namespace, session_id, {false}, MAX(session_seq) FROM {tx} "
        "WHERE session_id IS NOT NULL GROUP BY namespace, session_id"
    )
    index = f"ix_{log}_session_position"
    columns = ["namespace", "session_id", "session_seq"]
    if not op.get_context().as_sql and index in _indexes(log, schema):
        return
    if _online_ddl():
        quote = op.get_context().dialect.identifier_preparer.quote
        with op.get_context().autocommit_block():
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {_qualified(index, schema)}")  # an invalid leftover
            cols = ", ".join(quote(c) for c in columns)
            op.execute(f"CREATE INDEX CONCURRENTLY {quote(index)} ON {tx} ({cols})")
    else:
        op.create_index(index, log, columns, schema=schema)


def downgrade_refusal(bind: sa.Connection, facts_table: str, log_table: str, schema: str | None) -> str | None:
    """Why this revision's downgrade would refuse on `bind` (None: it would not). Asked by
    `memstate_sql.migrations.downgrade` for every revision on the path down before anything changes,
    and by `downgrade()` itself (the Alembic CLI path). Two entries of one session whose position order
    is not their seq order: ms_0002 orders a session's log by seq, so dropping the positions would
    change which entry a rollback undoes. Entries without a session have no positions."""
    quote = bind.dialect.identifier_preparer.quote
    tx = f"{quote(schema)}.{quote(log_table)}" if schema else quote(log_table)
    crossed = bind.execute(
        sa.text(
            f"SELECT COUNT(*) FROM {tx} a JOIN {tx} b ON a.namespace = b.namespace "  # noqa: S608
            "AND a.session_id = b.session_id AND a.session_seq < b.session_seq AND a.seq > b.seq"
        )
    ).scalar_one()
    if not crossed:
        return None
    return (
        f"cannot downgrade {log_table} to ms_0002_namespaces_expiry: {crossed} pairs of log entries of one "
        "session were committed in another order than their seq (Galera or concurrent writers); "
        "ms_0002 orders a session's log by seq and would roll back the wrong entries"
    )


def downgrade() -> None:
    t = target()
    log, sessions, schema = f"{t.prefix}_tx", f"{t.prefix}_sessions", t.schema
    if not op.get_context().as_sql:
        refusal = downgrade_refusal(op.get_bind(), f"{t.prefix}_facts", log, schema)
        if refusal:
            raise SchemaVersionError(refusal)
    op.drop_index(f"ix_{log}_session_position", table_name=log, schema=schema)
    if _dialect() == "sqlite":
        with op.batch_alter_table(log, schema=schema) as batch:
            batch.drop_column("session_seq")
    else:
        op.drop_column(log, "session_seq", schema=schema)
    op.drop_table(sessions, schema=schema)
