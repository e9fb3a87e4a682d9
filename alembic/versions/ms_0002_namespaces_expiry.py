"""Namespaces and expiry: every fact and log entry belongs to a namespace; facts may expire.

Revision ID: ms_0002_namespaces_expiry
Revises: ms_0001_initial
Create Date: 2026-12-01 00:00:00

Upgrades an ``ms_0001`` database in place: existing facts and log entries land in
the default namespace (``''``) and keep their ids, order and history.

* ``<prefix>_facts``: ``namespace`` (NOT NULL, default ``''``) and ``expires_at``
  (NULL: never); the primary key becomes ``(namespace, id)``, the singleton key is
  unique per ``(namespace, type)``, every index leads with the namespace, and
  ``(namespace, expires_at)`` serves sweeping.
* ``<prefix>_tx``: ``namespace``; its indexes lead with it, and log uuids are unique per namespace.
* PostgreSQL: the payload GIN index loses its pending list (``fastupdate = off``), so the planner
  prices it by the index itself.

Large tables on PostgreSQL: the column additions are metadata-only (a constant
default). When an ``ms_0001`` store is upgraded, `online_prepare` first builds the
new unique and plain indexes ``CONCURRENTLY`` (outside any transaction: writers are
not blocked); the revision itself then runs inside the migration's one transaction
(under its transaction-level lock) and only moves the primary key and the
singleton constraint onto the ready indexes (``ADD CONSTRAINT ... USING INDEX``),
building there whatever is missing (an interrupted or skipped concurrent build).
A fresh store (ms_0001 and ms_0002 in one transaction) needs no concurrent build.
Offline ``--sql`` scripts use the plain forms. MySQL/MariaDB change the primary key with
online DDL (in place, no table lock); each step checks what exists first, so a
migration interrupted there (DDL is not transactional) completes when run again.
SQLite rebuilds the facts table (new table, rows copied, names swapped; one transaction).

Downgrade to ``ms_0001`` works while only the default namespace is used and no
fact carries an expiry; otherwise it refuses and says what to clear.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

from memstate_sql.errors import SchemaVersionError
from memstate_sql.migrations import target
from memstate_sql.models import JSONDocument, KeyString, SeqType, UTCDateTime

revision: str = "ms_0002_namespaces_expiry"
down_revision: str | Sequence[str] | None = "ms_0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: Indexes of ms_0001 (name suffix, columns) and what replaces them.
FACT_INDEXES_V1 = {"type": ["type"], "session_id": ["session_id"], "source": ["source"], "ts": ["ts"]}
FACT_INDEXES_V2 = {
    "ns_type": ["namespace", "type"],
    "ns_session_id": ["namespace", "session_id"],
    "ns_source": ["namespace", "source"],
    "ns_ts": ["namespace", "ts"],
    "ns_expires_at": ["namespace", "expires_at"],
}
LOG_INDEXES_V1 = {"session_seq": ["session_id", "seq"], "fact_id": ["fact_id"]}
LOG_INDEXES_V2 = {"ns_session_seq": ["namespace", "session_id", "seq"], "ns_fact_id": ["namespace", "fact_id"]}


def _dialect() -> str:
    return op.get_context().dialect.name


def _inspector() -> sa.Inspector | None:
    ctx = op.get_context()
    return None if ctx.as_sql else sa.inspect(ctx.bind)


def _columns(table: str, schema: str | None) -> set[str]:
    insp = _inspector()
    return set() if insp is None else {c["name"] for c in insp.get_columns(table, schema=schema)}


def _indexes(table: str, schema: str | None) -> set[str]:
    insp = _inspector()
    if insp is None:
        return set()
    names = {i["name"] for i in insp.get_indexes(table, schema=schema)}
    names |= {u["name"] for u in insp.get_unique_constraints(table, schema=schema)}
    return {n for n in names if n}


def _primary_key(table: str, schema: str | None) -> list[str]:
    insp = _inspector()
    return [] if insp is None else list(insp.get_pk_constraint(table, schema=schema)["constrained_columns"])


def _qualified(name: str, schema: str | None) -> str:
    quote = op.get_context().dialect.identifier_preparer.quote
    return f"{quote(schema)}.{quote(name)}" if schema else quote(name)


def _pg_index_state(bind: Any, name: str, schema: str | None) -> bool | None:
    """Whether a PostgreSQL index is valid (None: it does not exist)."""
    found = bind.execute(
        sa.text(
            "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relname = :name AND n.nspname = "
            "coalesce(:schema, current_schema())"
        ),
        {"name": name, "schema": schema},
    ).scalar()
    return None if found is None else bool(found)


def _pg_new_indexes(facts: str, log: str) -> list[tuple[str, str, list[str], bool]]:
    """(name, table, columns, unique) of the indexes this revision builds on PostgreSQL."""
    return [
        (f"pk_{facts}", facts, ["namespace", "id"], True),
        (f"uq_{facts}_ns_singleton", facts, ["namespace", "type", "singleton"], True),
        *((f"ix_{facts}_{suffix}", facts, cols, False) for suffix, cols in FACT_INDEXES_V2.items()),
        *((f"ix_{log}_{suffix}", log, cols, False) for suffix, cols in LOG_INDEXES_V2.items()),
        (f"uq_{log}_ns_uuid", log, ["namespace", "uuid"], True),
    ]


def _pg_create_index(
    execute: Any, quote: Any, name: str, table: str, columns: list[str], schema: str | None, *, unique: bool, how: str
) -> None:
    cols = ", ".join(quote(c) for c in columns)
    kind = "UNIQUE INDEX" if unique else "INDEX"
    target = f"{quote(schema)}.{quote(table)}" if schema else quote(table)
    execute(f"CREATE {kind} {how}{quote(name)} ON {target} ({cols})")


def online_prepare(conn: Any, prefix: str, schema: str | None) -> None:
    """PostgreSQL, upgrading an ``ms_0001`` store: add the columns and build this revision's indexes
    ``CONCURRENTLY`` before the migration's transaction (`memstate_sql.migrations` calls it on a
    connection in autocommit, outside the migration lock, when ms_0001 is the current revision). Writers
    keep going meanwhile. Best effort: an index it could not build (another process building it, a lock
    timeout) is built by `upgrade` inside the migration's transaction."""
    if conn.dialect.name != "postgresql":
        return  # MySQL/MariaDB: online DDL in the revision itself; SQLite: a rebuild
    facts, log = f"{prefix}_facts", f"{prefix}_tx"
    quote = conn.dialect.identifier_preparer.quote

    def qualified(name: str) -> str:
        return f"{quote(schema)}.{quote(name)}" if schema else quote(name)

    columns = [
        (facts, sa.Column("namespace", KeyString(), nullable=False, server_default="")),
        (facts, sa.Column("expires_at", UTCDateTime(), nullable=True)),
        (log, sa.Column("namespace", KeyString(), nullable=False, server_default="")),
    ]
    with conn.begin():  # metadata-only ADD COLUMNs (constant defaults), one short transaction
        conn.execute(sa.text("SET LOCAL lock_timeout = '10s'"))
        for table, column in columns:
            spec = sa.schema.CreateColumn(column).compile(dialect=conn.dialect)
            conn.execute(sa.text(f"ALTER TABLE {qualified(table)} ADD COLUMN IF NOT EXISTS {spec}"))
    with conn.engine.connect() as own:  # CONCURRENTLY runs outside any transaction: autocommit
        auto = own.execution_options(isolation_level="AUTOCOMMIT")
        for name, table, columns, unique in _pg_new_indexes(facts, log):
            if _pg_index_state(auto, name, schema) is not None:
                continue  # built, or an interrupted build that `upgrade` replaces under the lock
            try:
                _pg_create_index(
                    lambda sql: auto.execute(sa.text(sql)),
                    quote,
                    name,
                    table,
                    columns,
                    schema,
                    unique=unique,
                    how="CONCURRENTLY IF NOT EXISTS ",
                )
            except sa.exc.DBAPIError:
                continue  # left to `upgrade`, inside the migration's transaction


def upgrade() -> None:
    t = target()
    facts, log, schema = f"{t.prefix}_facts", f"{t.prefix}_tx", t.schema
    if _dialect() == "sqlite":
        _upgrade_sqlite(facts, log, schema)
        return
    have = _columns(facts, schema)
    if "namespace" not in have:
        op.add_column(facts, sa.Column("namespace", KeyString(), nullable=False, server_default=""), schema=schema)
    if "expires_at" not in have:
        op.add_column(facts, sa.Column("expires_at", UTCDateTime(), nullable=True), schema=schema)
    if "namespace" not in _columns(log, schema):
        op.add_column(log, sa.Column("namespace", KeyString(), nullable=False, server_default=""), schema=schema)

    if _dialect() == "postgresql" and not op.get_context().as_sql:
        _upgrade_postgresql(facts, log, schema)
    elif _dialect() == "postgresql":
        _upgrade_postgresql_in_transaction(facts, log, schema)
    else:
        _upgrade_mysql(facts, log, schema)


def _upgrade_postgresql(facts: str, log: str, schema: str | None) -> None:
    """Inside the migration's transaction: the new indexes (built concurrently beforehand by
    `online_prepare` when the store already existed; built here otherwise), then one short swap of
    the constraints onto them."""
    quote = op.get_context().dialect.identifier_preparer.quote
    bind = op.get_bind()
    for name, table, columns, unique in _pg_new_indexes(facts, log):
        state = _pg_index_state(bind, name, schema)
        if state is True:
            continue
        if state is False:  # an interrupted concurrent build
            op.execute(f"DROP INDEX {_qualified(name, schema)}")
        _pg_create_index(op.execute, quote, name, table, columns, schema, unique=unique, how="")
    if _primary_key(facts, schema) != ["namespace", "id"]:
        op.execute(
            f"ALTER TABLE {_qualified(facts, schema)} DROP CONSTRAINT {quote(facts + '_pkey')}, "
            f"ADD CONSTRAINT {quote(facts + '_pkey')} PRIMARY KEY USING INDEX {quote('pk_' + facts)}"
        )
    if f"uq_{facts}_singleton" in _indexes(facts, schema):
        op.execute(
            f"ALTER TABLE {_qualified(facts, schema)} DROP CONSTRAINT {quote(f'uq_{facts}_singleton')}, "
            f"ADD CONSTRAINT {quote(f'uq_{facts}_singleton')} UNIQUE USING INDEX "
            f"{quote(f'uq_{facts}_ns_singleton')}"
        )
    if _unique_columns(log, f"uq_{log}_uuid", schema) == ["uuid"]:
        op.execute(
            f"ALTER TABLE {_qualified(log, schema)} DROP CONSTRAINT {quote(f'uq_{log}_uuid')}, "
            f"ADD CONSTRAINT {quote(f'uq_{log}_uuid')} UNIQUE USING INDEX {quote(f'uq_{log}_ns_uuid')}"
        )
    _gin_without_pending_list(facts, schema)
    for suffix in FACT_INDEXES_V1:
        op.execute(f"DROP INDEX IF EXISTS {_qualified(f'ix_{facts}_{suffix}', schema)}")
    for suffix in LOG_INDEXES_V1:
        op.execute(f"DROP INDEX IF EXISTS {_qualified(f'ix_{log}_{suffix}', schema)}")


def _gin_without_pending_list(facts: str, schema: str | None) -> None:
    """PostgreSQL: the payload GIN index without a pending list (``fastupdate = off``). With one, the
    planner prices the index by its unmerged list and prefers a scan of a namespace index after a bulk
    load until autovacuum runs; without it, every write updates the index directly (a little dearer)."""
    op.execute(f"ALTER INDEX {_qualified(f'ix_{facts}_payload_gin', schema)} SET (fastupdate = off)")


def _upgrade_postgresql_in_transaction(facts: str, log: str, schema: str | None) -> None:
    """Offline scripts and host transactions: the plain forms, atomic in one transaction."""
    _gin_without_pending_list(facts, schema)
    op.drop_constraint(f"{facts}_pkey", facts, type_="primary", schema=schema)
    op.create_primary_key(f"{facts}_pkey", facts, ["namespace", "id"], schema=schema)
    op.drop_constraint(f"uq_{facts}_singleton", facts, type_="unique", schema=schema)
    op.create_unique_constraint(f"uq_{facts}_singleton", facts, ["namespace", "type", "singleton"], schema=schema)
    op.drop_constraint(f"uq_{log}_uuid", log, type_="unique", schema=schema)
    op.create_unique_constraint(f"uq_{log}_uuid", log, ["namespace", "uuid"], schema=schema)
    for table, old, new in ((facts, FACT_INDEXES_V1, FACT_INDEXES_V2), (log, LOG_INDEXES_V1, LOG_INDEXES_V2)):
        for suffix, cols in new.items():
            op.create_index(f"ix_{table}_{suffix}", table, cols, schema=schema)
        for suffix in old:
            op.drop_index(f"ix_{table}_{suffix}", table_name=table, schema=schema)


def _upgrade_mysql(facts: str, log: str, schema: str | None) -> None:
    """One ALTER TABLE per table: InnoDB rebuilds it once, in place, without blocking writers, and the
    statement is atomic (MariaDB >= 10.6, MySQL 8), so an interrupted upgrade is simply run again."""
    quote = op.get_context().dialect.identifier_preparer.quote
    if op.get_context().as_sql or _primary_key(facts, schema) != ["namespace", "id"]:
        clauses = [
            "DROP PRIMARY KEY",
            f"ADD PRIMARY KEY ({quote('namespace')}, {quote('id')})",
            f"DROP INDEX {quote(f'uq_{facts}_singleton')}",
            f"ADD UNIQUE INDEX {quote(f'uq_{facts}_singleton')} (namespace, type, singleton)",
            *(f"ADD INDEX {quote(f'ix_{facts}_{s}')} ({', '.join(c)})" for s, c in FACT_INDEXES_V2.items()),
            *(f"DROP INDEX {quote(f'ix_{facts}_{s}')}" for s in FACT_INDEXES_V1),
        ]
        op.execute(f"ALTER TABLE {_qualified(facts, schema)} {', '.join(clauses)}, ALGORITHM=INPLACE, LOCK=NONE")
    if op.get_context().as_sql or f"ix_{log}_ns_fact_id" not in _indexes(log, schema):
        clauses = [
            *(f"ADD INDEX {quote(f'ix_{log}_{s}')} ({', '.join(c)})" for s, c in LOG_INDEXES_V2.items()),
            *(f"DROP INDEX {quote(f'ix_{log}_{s}')}" for s in LOG_INDEXES_V1),
            f"DROP INDEX {quote(f'uq_{log}_uuid')}",
            f"ADD UNIQUE INDEX {quote(f'uq_{log}_uuid')} (namespace, uuid)",
        ]
        op.execute(f"ALTER TABLE {_qualified(log, schema)} {', '.join(clauses)}, ALGORITHM=INPLACE, LOCK=NONE")


def _upgrade_sqlite(facts: str, log: str, schema: str | None) -> None:
    """SQLite cannot change a primary key in place: build the new table, copy the rows, swap the names
    (one transaction: SQLite's DDL is transactional)."""
    columns = "id, type, session_id, source, ts, payload, version, immutable, singleton"
    _rebuild_sqlite(facts, schema, _v2_facts, f"INSERT INTO {{new}} ({columns}, namespace) SELECT {columns}, ''")
    for suffix, cols in FACT_INDEXES_V2.items():
        op.create_index(f"ix_{facts}_{suffix}", facts, cols, schema=schema)
    _rebuild_sqlite(log, schema, _v2_log, f"INSERT INTO {{new}} ({LOG_COLUMNS}, namespace) SELECT {LOG_COLUMNS}, ''")
    for suffix, cols in LOG_INDEXES_V2.items():
        op.create_index(f"ix_{log}_{suffix}", log, cols, schema=schema)


LOG_COLUMNS = "seq, uuid, op, session_id, fact_id, actor, reason, ts, fact_before, fact_after, discarded, reverted_by"


def _log_columns() -> list[sa.Column[Any]]:
    return [
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
    ]


def _v2_log(log: str) -> list[Any]:
    return [
        *_log_columns(),
        sa.Column("namespace", KeyString(), nullable=False, server_default=""),
        sa.UniqueConstraint("namespace", "uuid", name=f"uq_{log}_uuid"),
    ]


def _v1_log(log: str) -> list[Any]:
    return [*_log_columns(), sa.UniqueConstraint("uuid", name=f"uq_{log}_uuid")]


def _unique_columns(table: str, name: str, schema: str | None) -> list[str]:
    insp = _inspector()
    if insp is None:
        return []
    for unique in insp.get_unique_constraints(table, schema=schema):
        if unique["name"] == name:
            return list(unique["column_names"])
    return []


def _rebuild_sqlite(facts: str, schema: str | None, build: Any, copy: str) -> None:
    new = f"_ms_rebuild_{facts}"
    op.create_table(new, *build(facts), schema=schema)
    op.execute(copy.format(new=_qualified(new, schema)) + f" FROM {_qualified(facts, schema)}")
    op.drop_table(facts, schema=schema)
    op.rename_table(new, facts, schema=schema)


def _common_columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("type", KeyString(), nullable=False),
        sa.Column("session_id", KeyString(), nullable=True),
        sa.Column("source", KeyString(), nullable=True),
        sa.Column("ts", UTCDateTime(), nullable=False),
        sa.Column("payload", JSONDocument(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("immutable", sa.Boolean(create_constraint=False), nullable=False),
        sa.Column("singleton", KeyString(), nullable=True),
    ]


def _v2_facts(facts: str) -> list[Any]:
    """The facts table of this revision (SQLite rebuild)."""
    return [
        sa.Column("namespace", KeyString(), nullable=False, server_default=""),
        sa.Column("id", KeyString(), nullable=False),
        *_common_columns(),
        sa.Column("expires_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("namespace", "id", name=f"{facts}_pkey"),
        sa.UniqueConstraint("namespace", "type", "singleton", name=f"uq_{facts}_singleton"),
        sa.CheckConstraint("version >= 1", name=f"ck_{facts}_version"),
    ]


def _v1_facts_columns(facts: str) -> list[Any]:
    """The facts table of ms_0001 (SQLite rebuild on downgrade)."""
    return [
        sa.Column("id", KeyString(), primary_key=True),
        *_common_columns(),
        sa.UniqueConstraint("type", "singleton", name=f"uq_{facts}_singleton"),
        sa.CheckConstraint("version >= 1", name=f"ck_{facts}_version"),
    ]


def downgrade_refusal(bind: sa.Connection, facts_table: str, log_table: str, schema: str | None) -> str | None:
    """Why this revision's downgrade would refuse on `bind` (None: it would not): facts or log entries
    outside the default namespace, or facts with an expiry, which ms_0001 cannot hold. Asked by
    `memstate_sql.migrations.downgrade` for every revision on the path down before anything changes,
    and by `downgrade()` itself (the Alembic CLI path)."""
    quote = bind.dialect.identifier_preparer.quote

    def qualified(name: str) -> str:
        return f"{quote(schema)}.{quote(name)}" if schema else quote(name)

    facts, log = qualified(facts_table), qualified(log_table)
    others = bind.execute(sa.text(f"SELECT COUNT(*) FROM {facts} WHERE namespace <> ''")).scalar_one()  # noqa: S608
    others += bind.execute(sa.text(f"SELECT COUNT(*) FROM {log} WHERE namespace <> ''")).scalar_one()  # noqa: S608
    expiring = bind.execute(
        sa.text(f"SELECT COUNT(*) FROM {facts} WHERE expires_at IS NOT NULL")  # noqa: S608
    ).scalar_one()
    if not (others or expiring):
        return None
    return (
        f"cannot downgrade {facts_table} to ms_0001: "
        + (f"{others} facts or log entries live outside the default namespace" if others else "")
        + (" and " if others and expiring else "")
        + (f"{expiring} facts carry an expiry (run `memstate-sql sweep` or clear it)" if expiring else "")
        + "; ms_0001 has neither namespaces nor expiry"
    )


def _refuse_unless_default_only(facts: str, log: str, schema: str | None) -> None:
    if op.get_context().as_sql:
        return
    refusal = downgrade_refusal(op.get_bind(), facts, log, schema)
    if refusal:
        raise SchemaVersionError(refusal)


def downgrade() -> None:
    t = target()
    facts, log, schema = f"{t.prefix}_facts", f"{t.prefix}_tx", t.schema
    _refuse_unless_default_only(facts, log, schema)
    if _dialect() == "sqlite":
        columns = "id, type, session_id, source, ts, payload, version, immutable, singleton"
        _rebuild_sqlite(facts, schema, _v1_facts_columns, f"INSERT INTO {{new}} ({columns}) SELECT {columns}")
        for suffix, cols in FACT_INDEXES_V1.items():
            op.create_index(f"ix_{facts}_{suffix}", facts, cols, schema=schema)
    elif _dialect() == "postgresql":
        op.execute(f"ALTER INDEX {_qualified(f'ix_{facts}_payload_gin', schema)} RESET (fastupdate)")
        op.drop_constraint(f"{facts}_pkey", facts, type_="primary", schema=schema)
        op.create_primary_key(f"{facts}_pkey", facts, ["id"], schema=schema)
        op.drop_constraint(f"uq_{facts}_singleton", facts, type_="unique", schema=schema)
        op.create_unique_constraint(f"uq_{facts}_singleton", facts, ["type", "singleton"], schema=schema)
        for suffix, cols in FACT_INDEXES_V1.items():
            op.create_index(f"ix_{facts}_{suffix}", facts, cols, schema=schema)
        for suffix in FACT_INDEXES_V2:
            op.drop_index(f"ix_{facts}_{suffix}", table_name=facts, schema=schema)
        op.drop_column(facts, "expires_at", schema=schema)
        op.drop_column(facts, "namespace", schema=schema)
    else:
        quote = op.get_context().dialect.identifier_preparer.quote
        clauses = [
            "DROP PRIMARY KEY",
            f"ADD PRIMARY KEY ({quote('id')})",
            f"DROP INDEX {quote(f'uq_{facts}_singleton')}",
            f"ADD UNIQUE INDEX {quote(f'uq_{facts}_singleton')} (type, singleton)",
            *(f"ADD INDEX {quote(f'ix_{facts}_{s}')} ({', '.join(c)})" for s, c in FACT_INDEXES_V1.items()),
            *(f"DROP INDEX {quote(f'ix_{facts}_{s}')}" for s in FACT_INDEXES_V2),
            "DROP COLUMN expires_at",
            "DROP COLUMN namespace",
        ]
        op.execute(f"ALTER TABLE {_qualified(facts, schema)} {', '.join(clauses)}")
    if _dialect() == "sqlite":
        _rebuild_sqlite(log, schema, _v1_log, f"INSERT INTO {{new}} ({LOG_COLUMNS}) SELECT {LOG_COLUMNS}")
        for suffix, cols in LOG_INDEXES_V1.items():
            op.create_index(f"ix_{log}_{suffix}", log, cols, schema=schema)
        return
    op.drop_constraint(f"uq_{log}_uuid", log, type_="unique", schema=schema)
    op.create_unique_constraint(f"uq_{log}_uuid", log, ["uuid"], schema=schema)
    for suffix, cols in LOG_INDEXES_V1.items():
        op.create_index(f"ix_{log}_{suffix}", log, cols, schema=schema)
    for suffix in LOG_INDEXES_V2:
        op.drop_index(f"ix_{log}_{suffix}", table_name=log, schema=schema)
    op.drop_column(log, "namespace", schema=schema)
