"""PostgreSQL: JSONB containment (served by a GIN jsonb_path_ops index) plus exact rechecks."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Dialect, Table, exc, text
from sqlalchemy.dialects import postgresql as pg_types
from sqlalchemy.dialects.postgresql import insert as dialect_insert
from sqlalchemy.engine import URL
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.types import TypeEngine

from memstate_sql.dialects import pgvector
from memstate_sql.dialects.base import (
    HELD_BEGIN,
    DialectSupport,
    ErrorKind,
    NearestRequest,
    check_pooler,
    ddl_literal,
    ddl_names,
    insert_ignoring_key,
    lock_key,
    render_bind,
    socket_idle,
    sql_literal,
    upsert_positions,
    versioned_update,
)
from memstate_sql.errors import MigrationLockTimeout, ValidationFailed
from memstate_sql.filters import CodePointText, JsonPredicate, JsonSortKey, LiteralText
from memstate_sql.indexes import IndexedPath

_RETRY_STATES = {"40001", "40P01", "55P03"}  # serialization failure, deadlock, lock not available
_DISCONNECT_CLASSES = ("08", "57P")  # connection exceptions, admin shutdown / crash shutdown
#: What a transaction-pooling proxy does to server-side prepared statements: a statement prepared on
#: one server connection is missing (26000), already there (42P05) or bound with another client's
#: parameters (08P01) on the next one.
_POOLER_STATES = {"26000", "42P05", "08P01"}
POOLER_HINT = (
    "a connection pooler in transaction mode (PgBouncer pool_mode=transaction, before 1.21) does not "
    'keep server-side prepared statements: open the storage with pooler="transaction" '
    '(SQLStorage(url, pooler="transaction"), memstate-sql --pooler transaction), which disables them'
)


def _begin_for(driver: Any) -> str:
    """The BEGIN psycopg would send on `driver` (its isolation level, a connection attribute)."""
    name = getattr(getattr(driver, "isolation_level", None), "name", None)
    return "BEGIN" if name is None else "BEGIN ISOLATION LEVEL " + name.replace("_", " ")


#: BEGINs whose isolation level is the one a statement in autocommit gets (the server's default, READ
#: COMMITTED unless configured otherwise: then an engine that wants another says so, and its BEGIN too).
_AUTOCOMMIT_LEVEL = frozenset({"BEGIN", "BEGIN ISOLATION LEVEL READ COMMITTED"})


class PostgreSQLSupport(DialectSupport):
    name = "postgresql"
    sync_driver = "psycopg"
    async_driver = "psycopg"
    async_drivers = frozenset({"psycopg", "asyncpg"})
    aware_timestamps = True
    autocommit_reads = True
    one_statement_writes = True  # fact row, session position and log entry in one CTE
    prepares_vector_search = True  # pgvector's HNSW index, where the extension is installed

    def prepare_held(self, conn: Connection) -> None:
        # psycopg sends the engine's isolation level with its own BEGIN (a connection attribute, not a
        # session setting): a held autocommit connection's BEGIN must carry it too.
        conn.connection.info[HELD_BEGIN] = _begin_for(conn.connection.dbapi_connection)

    def can_write_alone(self, conn: Connection) -> bool:
        driver: Any = conn.connection.dbapi_connection
        driver = getattr(driver, "_connection", driver)  # SQLAlchemy's asyncio adapter: psycopg's connection
        pgconn = getattr(driver, "pgconn", None)  # psycopg 3's libpq connection
        if pgconn is None or getattr(driver.info.transaction_status, "name", None) != "IDLE":
            return False  # not psycopg, or inside a transaction
        # A held connection is in autocommit already: its transactions' level is the one noted before.
        begin = conn.connection.info.get(HELD_BEGIN) or _begin_for(driver)
        if begin not in _AUTOCOMMIT_LEVEL:
            return False  # the engine asks for a stricter isolation level than a lone statement gets
        try:
            fd = pgconn.socket
        except Exception:  # closed: psycopg raises its OperationalError
            return False
        return socket_idle(fd)  # anything readable (an error, a notice, the end of file): not idle

    def append_at_next_position(self, log: Table, sessions: Table) -> Any:
        return _append(log, sessions)

    def positions_statement(self, sessions: Table) -> Any:
        return _positions(sessions)

    def insert_absent_statement(self, facts: Table) -> Any:
        return _insert_absent(facts)

    def append_after_statement(self, log: Table, sessions: Table, first: Any, in_session: bool) -> Any:
        return _append_after(log, sessions, first, in_session)

    def insert_logged_statement(self, facts: Table, log: Table, sessions: Table, in_session: bool) -> Any:
        return _insert_logged(facts, log, sessions, in_session)

    def update_logged_statement(
        self, facts: Table, log: Table, sessions: Table, in_session: bool, allow_immutable: bool
    ) -> Any:
        return _update_logged(facts, log, sessions, in_session, allow_immutable)

    def rows_cursor(self, dbapi_connection: Any) -> tuple[Any, str | None]:
        # psycopg 3 rewrites a query's %s placeholders into $1, $2... in Python, and caches the result for
        # short queries only: a multi-row INSERT of 1,000 rows would be parsed again on every call (more
        # than its execution costs). Its raw cursors take PostgreSQL's own $n placeholders as written.
        driver = getattr(dbapi_connection, "dbapi_connection", dbapi_connection)  # the pool's wrapper
        target = getattr(driver, "_connection", driver)  # SQLAlchemy's asyncio adapter: psycopg's connection
        factory = _raw_cursor_factory(target)
        if factory is None:
            return dbapi_connection.cursor(), None
        previous = target.cursor_factory
        target.cursor_factory = factory
        try:
            return dbapi_connection.cursor(), "numeric_dollar"
        finally:
            target.cursor_factory = previous

    def nearest(self, conn: Connection, request: NearestRequest) -> list[tuple[str, float]] | None:
        return pgvector.nearest(conn, request)

    def nearest_status(self, conn: Connection, approximate: bool = False) -> tuple[bool, str]:
        return pgvector.status(conn, approximate)

    def prepare_vector_search(self, conn: Connection, vectors: Table, dim: int) -> None:
        pgvector.ensure_index(conn, vectors, dim)

    def json_type(self, dialect: Dialect) -> TypeEngine[Any]:
        return pg_types.JSONB(none_as_null=True)

    def timestamp_type(self, dialect: Dialect) -> TypeEngine[Any]:
        return pg_types.TIMESTAMP(timezone=True)

    def pooler_options(self, url: URL, pooler: str | None) -> dict[str, Any]:
        if check_pooler(pooler) is None:
            return {}
        driver = url.get_driver_name()
        if driver == "psycopg":
            # psycopg 3 prepares a statement server-side after 5 executions; None: never (each
            # statement is sent as one unnamed Parse/Bind/Execute, which a pooler forwards intact).
            return {"connect_args": {"prepare_threshold": None}}
        raise ValidationFailed(
            f"pooler={pooler!r} is supported with the psycopg 3 driver (postgresql+psycopg://, the default for "
            f"sync and asyncio storages), not with {driver!r}: asyncpg prepares every statement it runs"
        )

    def migration_pooler(self, url: URL) -> str | None:
        return "transaction" if url.get_driver_name() == "psycopg" else None

    def pooler_hint(self, error: BaseException) -> str:
        state = getattr(getattr(error, "orig", None), "sqlstate", None) or ""
        return POOLER_HINT if state in _POOLER_STATES else ""

    def classify(self, error: BaseException) -> ErrorKind:
        state = getattr(getattr(error, "orig", None), "sqlstate", None) or ""
        if state in _POOLER_STATES:
            return ErrorKind.OTHER  # the connection works; the statement was prepared elsewhere (pooler_hint)
        if isinstance(error, exc.DBAPIError) and error.connection_invalidated:
            return ErrorKind.DISCONNECT
        if state in _RETRY_STATES:
            return ErrorKind.RETRY
        if state == "23505":
            return ErrorKind.UNIQUE
        if state.startswith(_DISCONNECT_CLASSES):
            return ErrorKind.DISCONNECT
        return ErrorKind.OTHER

    def ensure_schema(self, conn: Connection, schema: str) -> None:
        conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {conn.dialect.identifier_preparer.quote_schema(schema)}"))

    @contextmanager
    def migration_lock(
        self, conn: Connection, name: str, timeout: float, sleep: Callable[[float], Any]
    ) -> Iterator[None]:
        # Transaction-level only, always: the whole migration is one transaction holding
        # pg_advisory_xact_lock, with SET LOCAL lock_timeout. Nothing session-scoped is ever left on the
        # server connection, so a transaction-pooling proxy (PgBouncer pool_mode=transaction) cannot hand
        # a held lock or a changed setting to another client, and a killed migrator's lock ends with its
        # transaction. Inside a caller's transaction, the lock ends with the caller's transaction.
        external = conn.in_transaction()
        key = lock_key(name)
        take = text("SELECT pg_try_advisory_xact_lock(:k)")
        deadline = time.monotonic() + timeout
        delay = 0.01
        while not conn.execute(take, {"k": key}).scalar():
            if not external:
                conn.rollback()
            if time.monotonic() >= deadline:
                raise MigrationLockTimeout(
                    f"could not take the migration lock {name!r} within {timeout:g}s: another process is migrating "
                    "this database (see pg_locks)"
                )
            sleep(delay)
            delay = min(delay * 2, 0.25)
        if external:
            yield
            return
        # Bound the wait for table locks held by running applications, too (for this transaction only).
        conn.execute(text(f"SET LOCAL lock_timeout = '{max(1, int(timeout * 1000))}ms'"))
        try:
            yield
        except BaseException:
            if conn.in_transaction():
                conn.rollback()
            raise
        if conn.in_transaction():
            conn.commit()

    @contextmanager
    def try_exclusive(self, conn: Connection, name: str) -> Iterator[bool]:
        # Transaction-level: released by COMMIT or ROLLBACK, never left on a pooled connection.
        yield bool(conn.execute(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": lock_key(name)}).scalar())

    def create_path_index(self, conn: Connection, facts: Table, spec: IndexedPath) -> None:
        table, name = ddl_names(conn, facts, spec.index_name(facts.name))
        arrows = [" -> "] * len(spec.keys)
        if spec.kind == "string":
            arrows[-1] = " ->> "
        chain = "payload" + "".join(f"{a}{ddl_literal(conn, k)}" for a, k in zip(arrows, spec.keys, strict=True))
        # Numbers: jsonb btree (numeric order within the 'number' kind); strings: text in code-point order.
        expr = f"({chain})" if spec.kind == "number" else f'(({chain}) COLLATE "C")'
        # Namespace first: a tenant's filtered query reads its own rows only, whatever the table's size.
        conn.exec_driver_sql(f"CREATE INDEX IF NOT EXISTS {name} ON {table} (namespace, {expr})")


def _extract(compiler: SQLCompiler, doc: str, keys: tuple[str, ...], text: bool = False) -> str:
    """``doc -> 'k1' -> 'k2'`` (``->>`` for the last key when `text`): keys only, never array indexes.

    The spelling is exactly the one of the declared-path indexes (`memstate_sql.indexes`).
    """
    arrows = [" -> "] * len(keys)
    if text and keys:
        arrows[-1] = " ->> "
    return doc + "".join(f"{arrow}{sql_literal(compiler, key)}" for arrow, key in zip(arrows, keys, strict=True))


def _jsonb(compiler: SQLCompiler, bind: Any, kw: dict[str, Any]) -> str:
    """A bound canonical-JSON text as jsonb (a stable expression: GIN and btree indexes can use it)."""
    return f"CAST({render_bind(compiler, bind, kw)} AS JSONB)"


def _eq(element: JsonPredicate, compiler: SQLCompiler, doc: str, kw: dict[str, Any]) -> str:
    keys = element.keys
    extract = _extract(compiler, doc, keys)
    if not keys:
        return f"({doc} = {_jsonb(compiler, element.json, kw)})"
    # @> is served by the GIN jsonb_path_ops index for any path, and is exact for scalars.
    parts = [f"{doc} @> {_jsonb(compiler, element.nested_json, kw)}"]
    if element.kind in ("object", "array"):
        # @> is a superset test for containers ([1,2,3] @> [3,1]); recheck exact equality.
        parts.append(f"({extract}) = {_jsonb(compiler, element.json, kw)}")
    elif element.index is not None and element.index.kind == "number":
        parts.append(f"({extract}) = {_jsonb(compiler, element.json, kw)}")  # the declared btree on (doc -> ...)
    elif element.index is not None:
        text = _extract(compiler, doc, keys, text=True)
        bound = render_bind(compiler, element.raw, kw)
        parts.append(f'({text}) COLLATE "C" = {bound}')  # the declared btree on ((doc ->> ...) COLLATE "C")
    return "(" + " AND ".join(parts) + ")"


@compiles(JsonPredicate, "postgresql")
def _compile_json_predicate(element: JsonPredicate, compiler: SQLCompiler, **kw: Any) -> str:
    doc = compiler.process(element.column, **kw)
    extract = _extract(compiler, doc, element.keys)
    if element.predicate == "exists":
        # Not "?": it also matches string elements of arrays.
        return f"(({extract}) IS NOT NULL)"
    if element.predicate == "eq":
        return _eq(element, compiler, doc, kw)
    if element.predicate == "range":
        if element.kind == "number":
            # jsonb orders numbers numerically (and kinds by a fixed order: hence the kind gate).
            bound = _jsonb(compiler, element.json, kw)
            return f"(jsonb_typeof({extract}) = 'number' AND ({extract}) {element.sql_op} {bound})"
        text = _extract(compiler, doc, element.keys, text=True)
        bound = render_bind(compiler, element.raw, kw)
        # jsonb and text compare strings with the database collation; "C" is code-point order.
        return f"(jsonb_typeof({extract}) = 'string' AND ({text}) COLLATE \"C\" {element.sql_op} {bound})"
    # contains: @> [v] is served by the GIN index; it is exact for scalar elements and a superset
    # test for containers, which get an exact recheck over the array's elements.
    probe = f"{doc} @> {_jsonb(compiler, element.nested_list_json, kw)}"
    if element.kind not in ("object", "array"):
        return f"({probe})"
    exact = _jsonb(compiler, element.json, kw)
    return (
        f"({probe} AND EXISTS (SELECT 1 FROM jsonb_array_elements(CASE WHEN jsonb_typeof({extract}) = 'array' "  # noqa: S608
        f"THEN {extract} END) AS je(v) WHERE je.v = {exact}))"
    )


@compiles(JsonSortKey, "postgresql")
def _compile_sort_key(element: JsonSortKey, compiler: SQLCompiler, **kw: Any) -> str:
    doc = compiler.process(element.column, **kw)
    e = _extract(compiler, doc, element.keys)
    if element.part == "rank":
        return (
            f"(CASE jsonb_typeof({e}) WHEN 'null' THEN 1 WHEN 'boolean' THEN "
            f"(CASE WHEN ({e}) = 'true'::jsonb THEN 3 ELSE 2 END) WHEN 'number' THEN 4 WHEN 'string' THEN 5 "
            "WHEN 'array' THEN 6 WHEN 'object' THEN 7 ELSE 0 END)"
        )
    if element.part == "num":
        return f"(CASE WHEN jsonb_typeof({e}) = 'number' THEN ({e})::numeric ELSE 0 END)"
    return f"((CASE WHEN jsonb_typeof({e}) = 'string' THEN ({e}) #>> '{{}}' ELSE '' END) COLLATE \"C\")"


@compiles(LiteralText, "postgresql")
def _compile_literal_text(element: LiteralText, compiler: SQLCompiler, **kw: Any) -> str:
    # A literal: a prepared statement's generic plan then estimates the type by its own statistics
    # (SQLAlchemy doubles a literal's '%' for psycopg's pyformat: no literal is taken for a parameter).
    return sql_literal(compiler, element.value)


@compiles(CodePointText, "postgresql")
def _compile_code_point_text(element: CodePointText, compiler: SQLCompiler, **kw: Any) -> str:
    return f'({compiler.process(element.expr, **kw)}) COLLATE "C"'


@functools.cache
def _raw_cursor_factory(connection: Any) -> Any:
    """psycopg 3's raw cursor class for `connection` (sync or asyncio); None for another driver's."""
    try:
        import psycopg
    except ImportError:  # pragma: no cover - another driver
        return None
    if isinstance(connection, psycopg.Connection):
        return psycopg.RawCursor
    if isinstance(connection, psycopg.AsyncConnection):
        return psycopg.AsyncRawCursor
    return None


def _insert_absent(facts: Table) -> Any:
    return insert_ignoring_key(dialect_insert, facts)


@functools.cache
def _positions(sessions: Table) -> Any:
    return upsert_positions(dialect_insert, sessions)


def _typed(table: Table, name: str, key: str | None = None) -> Any:
    """A parameter cast to its column's type (an INSERT ... SELECT gives the server no column to infer it from)."""
    from sqlalchemy import bindparam, cast

    column = table.c[name]
    return cast(bindparam(key or name, type_=column.type), column.type)


def _entry(log: Table, position: Any, source: Any = None, prefix: str = "") -> Any:
    """``INSERT INTO tx (...) SELECT :uuid, ..., <position> [FROM source]``: a log entry from parameters
    (named after their columns, with `prefix`)."""
    from sqlalchemy import insert, select

    names = [c.name for c in log.c if c.name not in ("seq", "session_seq")]
    rows = select(*(_typed(log, name, prefix + name) for name in names), position)
    return insert(log).from_select([*names, "session_seq"], rows if source is None else rows.select_from(source))


@functools.cache
def _append(log: Table, sessions: Table) -> Any:
    """``WITH pos AS (INSERT INTO sessions ... ON CONFLICT DO UPDATE ... RETURNING last_seq)
    INSERT INTO tx (...) SELECT :uuid, ..., pos.last_seq FROM pos``: position and entry in one statement."""
    pos = _positions(sessions).cte("pos")
    return _entry(log, pos.c.last_seq)


@functools.cache
def _append_after(log: Table, sessions: Table, first: Any, in_session: bool) -> Any:
    """``WITH done AS (<first>) [, pos AS (INSERT INTO sessions ... RETURNING last_seq)] INSERT INTO tx
    (...) SELECT :e_uuid, ..., pos.last_seq | NULL``: a data-modifying statement and a log entry in one
    statement (PostgreSQL runs a data-modifying CTE to completion whether or not anything reads it). The
    entry's parameters are prefixed (``e_``): SQLAlchemy would add a parameter named after one of the log's
    columns to `first`'s SET (it compiles every DML statement for the statement's parameter names)."""
    from sqlalchemy import Integer, null

    position = _positions(sessions).cte("pos").c.last_seq if in_session else null().cast(Integer)
    return _entry(log, position, prefix="e_").add_cte(first.cte("done"))


@functools.cache
def _insert_logged(facts: Table, log: Table, sessions: Table, in_session: bool) -> Any:
    """``WITH f AS (INSERT INTO facts ... ON CONFLICT (namespace, id) DO NOTHING RETURNING id)
    [, pos AS (INSERT INTO sessions SELECT ... FROM f ON CONFLICT DO UPDATE ... RETURNING last_seq)]
    INSERT INTO tx (...) SELECT ... FROM pos | f``: a new fact, its position and its entry in one
    statement; when the id is taken, `f` is empty and so is everything that selects from it."""
    c = facts.c
    added = (
        dialect_insert(facts)
        .values({col.name: _typed(facts, col.name, "f_" + col.name) for col in c})
        .on_conflict_do_nothing(index_elements=[c.namespace, c.id])
        .returning(c.id)
        .cte("f")
    )
    return _logged(added, log, sessions, in_session)


@functools.cache
def _update_logged(facts: Table, log: Table, sessions: Table, in_session: bool, allow_immutable: bool) -> Any:
    """``WITH f AS (UPDATE facts SET ... WHERE namespace, id, version [AND NOT immutable] RETURNING id)
    [, pos AS (...)] INSERT INTO tx (...) SELECT ... FROM pos | f``: the versioned write of a fact over its
    row, its position and its entry in one statement; when the row is not at the expected version (or is
    immutable), `f` is empty and nothing is written."""
    c = facts.c
    written = versioned_update(facts, allow_immutable).returning(c.id).cte("f")
    return _logged(written, log, sessions, in_session)


def _logged(written: Any, log: Table, sessions: Table, in_session: bool) -> Any:
    """The entry of the fact row `written` (a CTE with a row when it was written) at its session's next
    position: row count 1 when both were written, 0 when nothing was."""
    from sqlalchemy import Integer, null, select

    if not in_session:
        return _entry(log, null().cast(Integer), written).execution_options(preserve_rowcount=True)
    s = sessions.c
    taken = dialect_insert(sessions).from_select(
        ["namespace", "session_id", "without_session", "last_seq"],
        select(
            _typed(sessions, "namespace", "p_ns"),
            _typed(sessions, "session_id", "p_sid"),
            _typed(sessions, "without_session", "p_none"),
            _typed(sessions, "last_seq", "p_n"),
        ).select_from(written),
    )
    pos = (
        taken.on_conflict_do_update(
            index_elements=[s.namespace, s.session_id, s.without_session],
            set_={"last_seq": s.last_seq + taken.excluded.last_seq},
        )
        .returning(s.last_seq)
        .cte("pos")
    )
    return _entry(log, pos.c.last_seq).execution_options(preserve_rowcount=True)
