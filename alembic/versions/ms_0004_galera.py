"""Singleton slots: the facts table's unique key is never NULL (multi-primary clusters).

Revision ID: ms_0004_galera
Revises: ms_0002_namespaces_expiry
Create Date: 2026-12-02 00:00:00

``UNIQUE(namespace, type, singleton)`` held NULL for every fact without a singleton key.
SQL databases let NULLs repeat in a unique key, but Galera certifies a unique key's NULLs
as equal values: any two concurrent inserts of non-singleton facts of one type on
different nodes conflicted (1213 at COMMIT, retried). This revision adds
``singleton_slot`` (NOT NULL): the singleton token for singleton facts, ``#`` + the fact
id (or ``#sha256:`` + its digest for ids of 191 characters) for the others, and moves the
unique key onto ``(namespace, type, singleton_slot)``. Constraint behaviour is unchanged:
tokens never start with ``#``, so a sentinel never collides with a token, and a fact's
sentinel is unique because its id is.

* MariaDB/MySQL: ADD COLUMN (instant), a batched backfill (5,000 rows per transaction: one
  replicated write-set each on Galera), then one in-place ALTER (NOT NULL, new key, old key
  dropped). Each step checks what exists, so an interrupted upgrade completes when run again.
* PostgreSQL: ADD COLUMN, backfill, the new unique index ``CONCURRENTLY`` (outside a transaction),
  then one short transaction: NOT NULL, the constraint swapped onto the index. Inside a host's
  transaction and in ``--sql`` scripts the plain forms are used.
* SQLite: the facts table is rebuilt (new table, rows copied, names swapped; one transaction).

Rows written by processes of an older release while the upgrade runs are filled by a second
backfill pass right before the NOT NULL step. The downgrade loses nothing (the slot is derived
from the other columns): it restores the previous key and drops the column.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

from memstate_sql.migrations import target
from memstate_sql.models import KeyString

revision: str = "ms_0004_galera"
down_revision: str | Sequence[str] | None = "ms_0002_namespaces_expiry"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: ``KEY_LENGTH`` of this revision (frozen).
KEY_LENGTH = 191
BATCH = 5000
FACT_INDEXES = {
    "ns_type": ["namespace", "type"],
    "ns_session_id": ["namespace", "session_id"],
    "ns_source": ["namespace", "source"],
    "ns_ts": ["namespace", "ts"],
    "ns_expires_at": ["namespace", "expires_at"],
}


def _slot(fact_id: str, token: str | None) -> str:
    """`records.singleton_slot` of this revision (frozen)."""
    import hashlib

    if token is not None:
        return token
    if len(fact_id) < KEY_LENGTH:
        return "#" + fact_id
    return "#sha256:" + hashlib.sha256(fact_id.encode("utf-8")).hexdigest()


def _dialect() -> str:
    return op.get_context().dialect.name


def _offline() -> bool:
    return bool(op.get_context().as_sql)


def _qualified(name: str, schema: str | None) -> str:
    quote = op.get_context().dialect.identifier_preparer.quote
    return f"{quote(schema)}.{quote(name)}" if schema else quote(name)


def _columns(table: str, schema: str | None) -> set[str]:
    if _offline():
        return set()
    return {c["name"] for c in sa.inspect(op.get_bind()).get_columns(table, schema=schema)}


def _keys(table: str, schema: str | None) -> set[str]:
    if _offline():
        return set()
    insp = sa.inspect(op.get_bind())
    names = {i["name"] for i in insp.get_indexes(table, schema=schema)}
    names |= {u["name"] for u in insp.get_unique_constraints(table, schema=schema)}
    return {n for n in names if n}


def _concat(dialect: str) -> str:
    return "CONCAT('#', id)" if dialect in ("mysql", "mariadb") else "'#' || id"


def _backfill(facts: str, schema: str | None) -> None:
    """Fill NULL slots: in SQL where the id is short (nearly always), in Python for long ids."""
    table = _qualified(facts, schema)
    dialect = _dialect()
    length = "CHAR_LENGTH(id)" if dialect in ("mysql", "mariadb") else "LENGTH(id)"
    where = f"singleton_slot IS NULL AND (singleton IS NOT NULL OR {length} < {KEY_LENGTH})"
    assign = f"UPDATE {table} SET singleton_slot = COALESCE(singleton, {_concat(dialect)}) WHERE {where}"  # noqa: S608
    if _offline():
        op.execute(assign)
        return
    bind = op.get_bind()
    if dialect in ("mysql", "mariadb"):
        while bind.execute(sa.text(f"{assign} LIMIT {BATCH}")).rowcount:
            if not op.get_context().opts.get("memstate_external_transaction"):
                bind.exec_driver_sql("COMMIT")  # one write-set per batch (Galera limits their size)
    else:
        bind.execute(sa.text(assign))
    rows = bind.execute(
        sa.text(f"SELECT namespace, id, singleton FROM {table} WHERE singleton_slot IS NULL")  # noqa: S608
    ).all()
    if rows:
        bind.execute(
            sa.text(f"UPDATE {table} SET singleton_slot = :slot WHERE namespace = :ns AND id = :id"),  # noqa: S608
            [{"slot": _slot(r.id, r.singleton), "ns": r.namespace, "id": r.id} for r in rows],
        )


def upgrade() -> None:
    t = target()
    facts, schema = f"{t.prefix}_facts", t.schema
    if _dialect() == "sqlite":
        _upgrade_sqlite(facts, schema)
        return
    if "singleton_slot" not in _columns(facts, schema):
        op.add_column(facts, sa.Column("singleton_slot", KeyString(), nullable=True), schema=schema)
    _backfill(facts, schema)
    if _dialect() == "postgresql":
        _upgrade_postgresql(facts, schema)
    else:
        _upgrade_mysql(facts, schema)


def _upgrade_mysql(facts: str, schema: str | None) -> None:
    quote = op.get_context().dialect.identifier_preparer.quote
    keys = _keys(facts, schema)
    if _offline() or f"uq_{facts}_singleton_slot" not in keys:
        _backfill(facts, schema)  # rows an older release wrote meanwhile
        clauses = [
            f"MODIFY {quote('singleton_slot')} VARCHAR({KEY_LENGTH}) CHARACTER SET utf8mb4 COLLATE "
            f"{_binary_collation()} NOT NULL",
            f"ADD UNIQUE INDEX {quote(f'uq_{facts}_singleton_slot')} (namespace, type, singleton_slot)",
        ]
        if _offline() or f"uq_{facts}_singleton" in keys:
            clauses.append(f"DROP INDEX {quote(f'uq_{facts}_singleton')}")
        op.execute(f"ALTER TABLE {_qualified(facts, schema)} {', '.join(clauses)}, ALGORITHM=INPLACE, LOCK=NONE")


def _binary_collation() -> str:
    dialect = op.get_context().dialect
    return "utf8mb4_nopad_bin" if getattr(dialect, "is_mariadb", False) else "utf8mb4_0900_bin"


def _upgrade_postgresql(facts: str, schema: str | None) -> None:
    ctx = op.get_context()
    quote = ctx.dialect.identifier_preparer.quote
    name = f"uq_{facts}_singleton_slot"
    table = _qualified(facts, schema)
    online = not _offline() and not ctx.opts.get("memstate_external_transaction")
    if online:
        bind = op.get_bind()
        valid = bind.execute(
            sa.text(
                "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relname = :name AND n.nspname = "
                "coalesce(:schema, current_schema())"
            ),
            {"name": name, "schema": schema},
        ).scalar()
        with ctx.autocommit_block():
            if valid is False:
                op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {_qualified(name, schema)}")
            if valid is not True:
                op.execute(
                    f"CREATE UNIQUE INDEX CONCURRENTLY {quote(name)} ON {table} (namespace, type, singleton_slot)"
                )
        _backfill(facts, schema)
        op.execute(f"ALTER TABLE {table} ALTER COLUMN singleton_slot SET NOT NULL")
        if name not in {u["name"] for u in sa.inspect(bind).get_unique_constraints(facts, schema=schema)}:
            op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {quote(name)} UNIQUE USING INDEX {quote(name)}")
        op.execute(f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {quote(f'uq_{facts}_singleton')}")
        return
    op.alter_column(facts, "singleton_slot", nullable=False, schema=schema)
    op.create_unique_constraint(name, facts, ["namespace", "type", "singleton_slot"], schema=schema)
    op.drop_constraint(f"uq_{facts}_singleton", facts, type_="unique", schema=schema)


# ---------------------------------------------------------------------------- SQLite

COLUMNS = "namespace, id, type, session_id, source, ts, payload, version, immutable, singleton, expires_at"


def _facts_table(facts: str, *, slot: bool) -> list[Any]:
    """The facts table of ms_0002 (``slot=False``) and of this revision (SQLite rebuild; frozen)."""
    from memstate_sql.models import JSONDocument, UTCDateTime

    columns: list[Any] = [
        sa.Column("namespace", KeyString(), nullable=False, server_default=""),
        sa.Column("id", KeyString(), nullable=False),
        sa.Column("type", KeyString(), nullable=False),
        sa.Column("session_id", KeyString(), nullable=True),
        sa.Column("source", KeyString(), nullable=True),
        sa.Column("ts", UTCDateTime(), nullable=False),
        sa.Column("payload", JSONDocument(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("immutable", sa.Boolean(create_constraint=False), nullable=False),
        sa.Column("singleton", KeyString(), nullable=True),
        sa.Column("expires_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("namespace", "id", name=f"{facts}_pkey"),
        sa.CheckConstraint("version >= 1", name=f"ck_{facts}_version"),
    ]
    if slot:
        columns.append(sa.Column("singleton_slot", KeyString(), nullable=False))
        columns.append(sa.UniqueConstraint("namespace", "type", "singleton_slot", name=f"uq_{facts}_singleton_slot"))
    else:
        columns.append(sa.UniqueConstraint("namespace", "type", "singleton", name=f"uq_{facts}_singleton"))
    return columns


def _rebuild_sqlite(facts: str, schema: str | None, *, slot: bool) -> None:
    new = f"_ms_rebuild_{facts}"
    op.create_table(new, *_facts_table(facts, slot=slot), schema=schema)
    if slot:
        long_id = "'#sha256:' || id"  # placeholder for long ids, replaced below (SQLite has no sha256)
        select = (
            f"SELECT {COLUMNS}, COALESCE(singleton, CASE WHEN LENGTH(id) < {KEY_LENGTH} THEN '#' || id "
            f"ELSE {long_id} END)"
        )
        source = _qualified(facts, schema)
        op.execute(f"INSERT INTO {_qualified(new, schema)} ({COLUMNS}, singleton_slot) {select} FROM {source}")
        if not _offline():
            bind = op.get_bind()
            rows = bind.execute(
                sa.text(
                    f"SELECT namespace, id FROM {_qualified(new, schema)} "  # noqa: S608
                    f"WHERE singleton IS NULL AND LENGTH(id) >= {KEY_LENGTH}"
                )
            ).all()
            if rows:
                bind.execute(
                    sa.text(
                        f"UPDATE {_qualified(new, schema)} SET singleton_slot = :slot "  # noqa: S608
                        "WHERE namespace = :ns AND id = :id"
                    ),
                    [{"slot": _slot(r.id, None), "ns": r.namespace, "id": r.id} for r in rows],
                )
    else:
        source = _qualified(facts, schema)
        op.execute(f"INSERT INTO {_qualified(new, schema)} ({COLUMNS}) SELECT {COLUMNS} FROM {source}")  # noqa: S608
    op.drop_table(facts, schema=schema)
    op.rename_table(new, facts, schema=schema)
    for suffix, cols in FACT_INDEXES.items():
        op.create_index(f"ix_{facts}_{suffix}", facts, cols, schema=schema)


def _upgrade_sqlite(facts: str, schema: str | None) -> None:
    _rebuild_sqlite(facts, schema, slot=True)


# ---------------------------------------------------------------------------- downgrade


def downgrade() -> None:
    """Back to ``UNIQUE(namespace, type, singleton)``; the slot column goes (nothing is lost: it is derived)."""
    t = target()
    facts, schema = f"{t.prefix}_facts", t.schema
    if _dialect() == "sqlite":
        _rebuild_sqlite(facts, schema, slot=False)
        return
    quote = op.get_context().dialect.identifier_preparer.quote
    if _dialect() == "postgresql":
        op.create_unique_constraint(f"uq_{facts}_singleton", facts, ["namespace", "type", "singleton"], schema=schema)
        op.drop_constraint(f"uq_{facts}_singleton_slot", facts, type_="unique", schema=schema)
        op.drop_column(facts, "singleton_slot", schema=schema)
        return
    keys = _keys(facts, schema)
    clauses = []
    if _offline() or f"uq_{facts}_singleton" not in keys:
        clauses.append(f"ADD UNIQUE INDEX {quote(f'uq_{facts}_singleton')} (namespace, type, singleton)")
    if _offline() or f"uq_{facts}_singleton_slot" in keys:
        clauses.append(f"DROP INDEX {quote(f'uq_{facts}_singleton_slot')}")
    if _offline() or "singleton_slot" in _columns(facts, schema):
        clauses.append(f"DROP COLUMN {quote('singleton_slot')}")
    if clauses:
        op.execute(f"ALTER TABLE {_qualified(facts, schema)} {', '.join(clauses)}")
