"""The storages' start-up contract: the database's schema must be at this version's head.

Storages call `prepare_schema` once, before their first operation:

* a database without the prefix's tables, or at an older revision, is migrated
  (`memstate_sql.migrations.migrate`) when ``auto_migrate`` is true, and
  otherwise refused with a `SchemaVersionError` that names the command to run;
* a database at a revision this version does not know (migrated by a newer
  memstate_sql) is always refused.

The migrations are the only way tables get created.

Bound to a host's connection, the check reads through that connection only
(a second connection could wait forever on the host's own open transaction,
e.g. on SQLite's write lock). A needed migration runs inside the host's
transaction (in a SAVEPOINT) where DDL is transactional; on MySQL/MariaDB,
where DDL would commit the host's transaction, it runs on a connection of its own.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Sequence

from sqlalchemy import Column, Connection, Engine, MetaData, String, Table, inspect, select

from memstate_sql.dialects import support_for
from memstate_sql.indexes import IndexedPath
from memstate_sql.models import Models
from memstate_sql.uow import default_sleep, holding

#: The head of memstate_sql's migration history (`migrations.head_revision()`, checked by
#: tests/test_migrations.py): a database found at it needs no Alembic at all, so a process whose
#: schema is up to date never imports Alembic nor parses the migration scripts; its storages confirm
#: it with one statement each (`at_head`).
HEAD_REVISION = "ms_0008_pgvector"
#: Seconds the creation of declared path indexes waits for another process's (lock and DDL).
PATH_INDEX_TIMEOUT = 60.0


@functools.cache
def _version_table(models: Models) -> Table:
    return Table(models.version_table, MetaData(schema=models.schema), Column("version_num", String(32)))


def at_head(conn: Connection, models: Models, *, own: bool = False) -> bool:
    """Whether the prefix's version table says `HEAD_REVISION`; a transaction the reads autobegin is
    ended again (a caller's is left alone). False also when the check cannot tell: the caller then asks
    Alembic (`_migrate_engine`, `_prepare_bound`), which decides.

    On a connection of its `own` (no caller's transaction to protect), one statement: the version row
    read directly, a missing table being its error. On a host's connection, the table's existence is
    looked up first, so that no failing statement aborts the host's transaction (PostgreSQL)."""
    was_open = conn.in_transaction()
    table = _version_table(models)
    try:
        if own:
            try:
                return list(conn.execute(select(table.c.version_num)).scalars()) == [HEAD_REVISION]
            except Exception:
                # No version table, or another failure (not always a DBAPIError: pysqlite3 under aiosqlite
                # raises its own): Alembic's check decides, and reports.
                return False
        if not inspect(conn).has_table(table.name, schema=models.schema):
            return False
        return list(conn.execute(select(table.c.version_num)).scalars()) == [HEAD_REVISION]
    finally:
        if not was_open and conn.in_transaction():
            conn.rollback()


def prepare_schema(
    engine: Engine,
    models: Models,
    *,
    auto_migrate: bool,
    connection: Connection | None = None,
    indexed_paths: Sequence[IndexedPath] = (),
    vector_dims: Sequence[int] = (),
) -> bool:
    """Check the schema of `models`' prefix and migrate it (or refuse) as described above.

    Returns whether the schema is now durably in place: False when it was created inside the
    host's still-open transaction (a rollback of which removes it again). Declared payload-path
    indexes (`memstate_sql.indexes`) are created afterwards, idempotently, under the same
    database-wide lock as migrations.
    """
    if connection is not None:
        durable = at_head(connection, models) or _prepare_bound(engine, connection, models, auto_migrate=auto_migrate)
    else:
        with engine.connect() as conn:
            current = at_head(conn, models, own=True)
        if not current:
            _migrate_engine(engine, models, auto_migrate=auto_migrate)
        durable = True
    if indexed_paths:
        _ensure_path_indexes(engine, models, indexed_paths)
    if vector_dims:
        _prepare_vector_search(engine, models, vector_dims)
    return durable


def _migrate_engine(engine: Engine, models: Models, *, auto_migrate: bool) -> None:
    """The database is not at `HEAD_REVISION`: what Alembic says it is decides (migrate or refuse)."""
    from memstate_sql import migrations  # Alembic: only when the schema is not current

    with migrations.connection_for(engine) as conn:
        found = migrations.schema_state(conn, models.prefix, models.schema)
    if found.state is not migrations.State.CURRENT:
        if not auto_migrate or found.state is migrations.State.AHEAD:
            raise found.error()
        # MISSING, BEHIND, or UNMANAGED (which may be another process's migration half-way through
        # on MySQL/MariaDB): migrate() decides under the migration lock.
        migrations.migrate(engine, table_prefix=models.prefix, schema=models.schema)


def _ensure_path_indexes(engine: Engine, models: Models, paths: Sequence[IndexedPath]) -> None:
    support = support_for(engine.dialect)
    facts = models.facts
    lock = f"{models.prefix}_path_indexes"

    def create() -> None:
        with engine.connect() as conn, support.migration_lock(conn, lock, PATH_INDEX_TIMEOUT, default_sleep):
            open_before = conn.in_transaction()  # SQLite: its write lock is the transaction
            for spec in paths:  # each creates its index (and generated column) only if it does not exist yet
                support.create_path_index(conn, facts, spec)
            if not open_before and conn.in_transaction():
                conn.commit()

    # Another process creating the same column or index meanwhile (MySQL family, e.g. a Galera node that
    # raced this one) is waited out, then looked at again under the lock.
    support.waiting_out_concurrent_ddl(
        create, PATH_INDEX_TIMEOUT, f"creating the declared path indexes of {models.prefix!r}", default_sleep
    )


def _prepare_vector_search(engine: Engine, models: Models, dims: Sequence[int]) -> None:
    """What the database needs to answer vector searches itself (`DialectSupport.prepare_vector_search`:
    pgvector's HNSW index), under the same lock as migrations and declared path indexes."""
    support = support_for(engine.dialect)
    if not support.prepares_vector_search:
        return
    vectors = models.vectors
    lock = f"{models.prefix}_path_indexes"
    with engine.connect() as conn, support.migration_lock(conn, lock, PATH_INDEX_TIMEOUT, default_sleep):
        open_before = conn.in_transaction()
        for dim in dims:
            support.prepare_vector_search(conn, vectors, dim)
        if not open_before and conn.in_transaction():
            conn.commit()


def _prepare_bound(engine: Engine, conn: Connection, models: Models, *, auto_migrate: bool) -> bool:
    from memstate_sql import migrations  # Alembic: only when the schema is not current

    found = migrations.schema_state(conn, models.prefix, models.schema)
    if found.state is migrations.State.CURRENT:
        return True
    if not auto_migrate or found.state is migrations.State.AHEAD:
        raise found.error()
    support = support_for(conn.dialect)
    if not support.transactional_ddl:
        migrations.migrate(engine, table_prefix=models.prefix, schema=models.schema)
        return True
    if not conn.in_transaction():
        migrations.migrate(conn, table_prefix=models.prefix, schema=models.schema)
        return True
    support.begin_write(conn)  # SQLite: open the host's transaction for real before the SAVEPOINT
    with conn.begin_nested():
        migrations.migrate(conn, table_prefix=models.prefix, schema=models.schema)
    return False


class SchemaGate:
    """Runs `prepare_schema` once per storage, before its first operation (the unit of work calls
    `ensure` before every operation; after the first success it costs one attribute read)."""

    def __init__(
        self,
        engine: Engine,
        models: Models,
        *,
        auto_migrate: bool,
        indexed_paths: Sequence[IndexedPath] = (),
        vector_dims: Sequence[int] = (),
        host: Callable[[], Connection | None] = lambda: None,
    ) -> None:
        self.engine = engine
        self.models = models
        self.auto_migrate = auto_migrate
        self.indexed_paths = indexed_paths
        self.vector_dims = vector_dims
        self.host = host
        self.ready = False
        self._pending: object | None = None
        self._lock = threading.Lock()

    def ensure(self) -> None:
        if self.ready:
            return
        with holding(self._lock):
            if self.ready:
                return
            host = self.host()
            current = None if host is None else host.get_transaction()
            if current is not None and current is self._pending:
                return  # created earlier in this same host transaction
            durable = prepare_schema(
                self.engine,
                self.models,
                auto_migrate=self.auto_migrate,
                connection=host,
                indexed_paths=self.indexed_paths,
                vector_dims=self.vector_dims,
            )
            # Created inside the host's open transaction: valid for that transaction only (its
            # rollback removes the tables); check again in the next one.
            self.ready = durable
            self._pending = None if durable else current
