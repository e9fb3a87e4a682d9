"""SQLite: JSON1 functions, BEGIN IMMEDIATE writers, WAL, busy timeout."""

from __future__ import annotations

import collections
import functools
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, Table, event, exc
from sqlalchemy.dialects.sqlite import insert as dialect_insert
from sqlalchemy.dialects.sqlite.aiosqlite import AsyncAdapt_aiosqlite_connection, AsyncAdapt_aiosqlite_cursor
from sqlalchemy.engine import URL
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.pool import StaticPool
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.util import EMPTY_DICT

from memstate_sql._compat import await_only
from memstate_sql.dialects._paths import dollar_path
from memstate_sql.dialects.base import (
    DialectSupport,
    ErrorKind,
    NearestRequest,
    Unindexed,
    ddl_literal,
    ddl_names,
    insert_ignoring_key,
    json_label,
    render_bind,
    send_driver_sql,
    sql_literal,
    upsert_positions,
)
from memstate_sql.errors import MigrationLockTimeout, ValidationFailed
from memstate_sql.filters import JsonPredicate, JsonSortKey
from memstate_sql.indexes import IndexedPath

BUSY_TIMEOUT_S = 30.0
#: SQLite durability levels (``PRAGMA synchronous``) a storage can be opened with; both run in WAL mode.
#: ``full`` (the default): a commit is on disk when it returns (an fsync per commit) and survives a power
#: failure. ``normal`` (memstate's and Rails 8's setting): commits are atomic and survive an application
#: crash (SIGKILL) alike, but the last ones may be lost on a power failure or an OS crash; several times
#: the commit rate on a disk with slow fsync.
SYNCHRONOUS = ("full", "normal")
DEFAULT_SYNCHRONOUS = "full"
#: SQLite before the 3.45 JSON rewrite cannot address object keys that contain '"' in a path
#: (filters then find such keys with json_each; index expressions cannot).
QUOTED_LABELS_FROM = (3, 45, 0)


class SQLiteSupport(DialectSupport):
    name = "sqlite"
    row_locks = False
    batch_alter = True
    sync_driver = "pysqlite"
    async_driver = "aiosqlite"
    async_drivers = frozenset({"aiosqlite"})

    def positions_statement(self, sessions: Table) -> Any:
        return _positions(sessions)

    def insert_absent_statement(self, facts: Table) -> Any:
        return _insert_absent(facts)

    def nearest(self, conn: Connection, request: NearestRequest) -> list[tuple[str, float]] | None:
        from memstate_sql.dialects import sqlitevec  # vector search: on first use

        return sqlitevec.nearest(conn, request)

    def nearest_status(self, conn: Connection, approximate: bool = False) -> tuple[bool, str]:
        from memstate_sql.dialects import sqlitevec

        return sqlitevec.status(conn)

    def writers_excluded(self, conn: Connection, *, rows_locked: bool) -> bool:
        # One writer at a time for the whole database file, and a transaction that has read never
        # writes over a newer commit (WAL: SQLITE_BUSY_SNAPSHOT): nothing can have changed since.
        return True

    def engine_options(self, url: URL) -> dict[str, Any]:
        options: dict[str, Any] = {"connect_args": {"timeout": BUSY_TIMEOUT_S}}
        if url.database in (None, "", ":memory:"):
            # One shared in-memory database for every thread of the process.
            options["poolclass"] = StaticPool
            options["connect_args"]["check_same_thread"] = False
        return options

    def configure_engine(
        self, engine: Engine, *, sqlite_synchronous: str | None = None, read_your_writes: bool = False
    ) -> None:
        in_memory = engine.url.database in (None, "", ":memory:")
        synchronous = check_synchronous(sqlite_synchronous).upper()
        one_call = engine.dialect.driver == "aiosqlite"

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            if one_call:
                install_one_call(dbapi_conn)  # aiosqlite: one worker-thread call per statement
            cursor = dbapi_conn.cursor()
            try:
                cursor.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
                if not in_memory:
                    cursor.execute("PRAGMA journal_mode = WAL")
                    cursor.execute(f"PRAGMA synchronous = {synchronous}")
                cursor.execute("PRAGMA foreign_keys = ON")
            finally:
                cursor.close()

    def begin_write(self, conn: Connection) -> None:
        # Take the write lock up front: a deferred transaction that reads and then writes
        # fails with SQLITE_BUSY at once (no busy handler) when another writer got there first.
        _begin(conn, "BEGIN IMMEDIATE")

    def begin_held(self, conn: Connection, write: bool) -> None:
        # As outside autocommit: a writer opens with BEGIN IMMEDIATE (sqlite3's commit() ends it in any
        # mode); a reader's SELECTs open no transaction (sqlite3 begins none for them either).
        if write:
            self.begin_write(conn)

    def begin_snapshot(self, conn: Connection) -> None:
        # pysqlite starts no transaction for SELECTs: begin one so that every read sees one snapshot.
        _begin(conn, "BEGIN")

    def classify(self, error: BaseException) -> ErrorKind:
        if isinstance(error, exc.DBAPIError) and error.connection_invalidated:
            return ErrorKind.DISCONNECT
        message = str(getattr(error, "orig", error)).lower()
        if isinstance(error, exc.IntegrityError) and ("unique constraint" in message or "primary key" in message):
            return ErrorKind.UNIQUE
        if isinstance(error, exc.OperationalError) and ("locked" in message or "busy" in message):
            return ErrorKind.RETRY
        return ErrorKind.OTHER

    @contextmanager
    def migration_lock(
        self, conn: Connection, name: str, timeout: float, sleep: Callable[[float], Any]
    ) -> Iterator[None]:
        # The database's write lock is the migration lock: the whole migration runs in one
        # BEGIN IMMEDIATE transaction (SQLite DDL is transactional), so it is all-or-nothing.
        if conn.in_transaction():
            self.begin_write(conn)
            yield
            return
        previous = conn.exec_driver_sql("PRAGMA busy_timeout").scalar()
        conn.exec_driver_sql(f"PRAGMA busy_timeout = {max(1, int(timeout * 1000))}")
        conn.commit()
        try:
            trans = conn.begin()
            try:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            except exc.OperationalError as err:
                trans.rollback()
                if self.classify(err) is not ErrorKind.RETRY:  # not "database is locked/busy"
                    raise
                raise MigrationLockTimeout(
                    f"could not take the migration lock (the database's write lock) within {timeout:g}s: "
                    f"another connection is writing or migrating: {err.orig}"
                ) from err
            try:
                yield
            except BaseException:
                trans.rollback()
                raise
            trans.commit()
        finally:
            conn.exec_driver_sql(f"PRAGMA busy_timeout = {int(previous or 0)}")
            conn.commit()

    def create_path_index(self, conn: Connection, facts: Table, spec: IndexedPath) -> None:
        for key in spec.keys:
            check_key(key)
        table, name = ddl_names(conn, facts, spec.index_name(facts.name))
        lit = ddl_literal(conn, dollar_path(spec.keys))
        # The very expressions the compiler emits for a typed comparison (json_type gate, json_extract value).
        conn.exec_driver_sql(
            f"CREATE INDEX IF NOT EXISTS {name} ON {table} "
            f"(namespace, json_type(payload, {lit}), json_extract(payload, {lit}))"
        )


def check_synchronous(value: str | None) -> str:
    """A valid SQLite durability level (`SYNCHRONOUS`); None is the default."""
    if value is None:
        return DEFAULT_SYNCHRONOUS
    if not isinstance(value, str) or value.lower() not in SYNCHRONOUS:
        raise ValidationFailed(f"sqlite_synchronous must be one of {', '.join(SYNCHRONOUS)}, not {value!r}")
    return value.lower()


def _begin(conn: Connection, begin: str) -> None:
    """Open SQLite's transaction with `begin` unless one is open (or about to be, `OneCallConnection`).
    On a one-call aiosqlite connection inside a SQLAlchemy transaction (which ends with a COMMIT or
    ROLLBACK that drops a BEGIN never sent) the BEGIN travels with the transaction's first statement, in
    the same call to the worker thread; elsewhere it is sent now."""
    dbapi_conn = conn.connection.dbapi_connection
    if _driver_in_transaction(dbapi_conn):
        return
    if isinstance(dbapi_conn, OneCallConnection) and conn.in_transaction():
        dbapi_conn.begin_with_next_statement(begin)
    elif isinstance(dbapi_conn, sqlite3.Connection):
        send_driver_sql(conn, begin)  # sqlite3: on its cursor, without SQLAlchemy's execution layer
    else:
        conn.exec_driver_sql(begin)


def _driver_in_transaction(dbapi_conn: Any) -> bool:
    """Whether SQLite itself has a transaction open (sqlite3, or aiosqlite under SQLAlchemy's adapter),
    or one is to be opened by the next statement (`OneCallConnection.begin_with_next_statement`)."""
    if isinstance(dbapi_conn, OneCallConnection) and dbapi_conn.pending_begin is not None:
        return True
    found = getattr(dbapi_conn, "in_transaction", None)
    if found is None:
        found = getattr(getattr(dbapi_conn, "_connection", None), "in_transaction", False)
    return bool(found)


# ---------------------------------------------------------------------------- aiosqlite: one call per statement
#
# aiosqlite runs each sqlite3 connection on a worker thread and every call on it (create a cursor, execute,
# fetch, close the cursor, commit, rollback) is one hop: a queue put, a thread wake-up and a wake-up of the
# event loop, which cost far more CPU than a SQLite statement. Through SQLAlchemy's adapter a statement takes
# 3-4 hops and an operation 6-19 (measured: tests/test_aiosqlite_calls.py). On engines memstate_sql creates
# for aiosqlite, the adapted connection's class is swapped (`install_one_call`) for `OneCallConnection`, whose
# cursors (`OneCallCursor`) make ONE call per statement: the worker opens a pending transaction (below),
# executes, fetches every row and closes its sqlite3 cursor in that call. COMMIT and ROLLBACK are not sent
# when SQLite has no transaction open (sqlite3 itself would do nothing then: pure hops saved, e.g. the pool's
# reset-on-return and a read's COMMIT), and a write transaction's BEGIN IMMEDIATE (a snapshot's BEGIN) goes
# with its first statement instead of as a hop of its own. Same statements, same order, same transaction.
#
# This relies on private parts of aiosqlite (`Connection._execute`, `_conn`, `_connection`) and of
# SQLAlchemy's adapter (`_cursor_cls`, `_execute_mutex`, `_handle_exception`). `install_one_call` checks
# what it needs and leaves a connection unchanged (the adapter's usual path) when anything differs.
# Server-side cursors (`stream_results`) keep the adapter's own class.

#: Attribute of the aiosqlite connection holding the BEGIN its next statement starts with.
_PENDING = "_memstate_sql_pending_begin"
#: Python 3.12's ``sqlite3.Connection.autocommit`` value for the legacy transaction control pysqlite uses.
_LEGACY = getattr(sqlite3, "LEGACY_TRANSACTION_CONTROL", -1)


def _one_call(
    aconn: Any, begin: str | None, sql: str, parameters: Any, many: bool
) -> tuple[list[Any], Any, int, int | None]:
    """Run in aiosqlite's worker thread: the pending BEGIN, the statement, all its rows, in one call."""
    raw = aconn._conn  # raises aiosqlite's "no active connection" when closed
    if begin is not None and not raw.in_transaction:
        raw.execute(begin).close()
    cursor = raw.cursor()
    try:
        if many:
            cursor.executemany(sql, parameters)
        else:
            cursor.execute(sql, () if parameters is None else parameters)
        description = cursor.description
        rows = cursor.fetchall() if description is not None else []
        return rows, description, cursor.rowcount, cursor.lastrowid
    finally:
        cursor.close()


class OneCallCursor(AsyncAdapt_aiosqlite_cursor):
    """A client-side aiosqlite cursor of SQLAlchemy's adapter that makes one worker-thread call per
    `execute` / `executemany` (none to create or close it); rows are buffered, as the adapter's are."""

    __slots__ = ("_description", "_lastrowid", "_rowcount", "_size")

    def __init__(self, adapt_connection: Any) -> None:  # no super().__init__(): it would open an aiosqlite cursor
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._cursor = None  # type: ignore[assignment]
        self._soft_closed_memoized = EMPTY_DICT
        self._rows = collections.deque()
        self._description: Any = None
        self._rowcount = -1
        self._lastrowid: int | None = None
        self._size = 1

    @property
    def description(self) -> Any:
        return self._description

    @property
    def rowcount(self) -> int:
        return self._rowcount

    @property
    def lastrowid(self) -> Any:
        return self._lastrowid

    @property
    def arraysize(self) -> int:
        return self._size

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._size = value

    def execute(self, operation: Any, parameters: Any = None) -> Any:
        try:
            await_only(self._call(operation, parameters, many=False))
        except Exception as error:
            self._adapt_connection._handle_exception(error)
        return self

    def executemany(self, operation: Any, seq_of_parameters: Any) -> Any:
        try:
            await_only(self._call(operation, seq_of_parameters, many=True))
        except Exception as error:
            self._adapt_connection._handle_exception(error)
        return self

    async def _call(self, operation: Any, parameters: Any, many: bool) -> None:
        aconn = self._connection
        async with self._adapt_connection._execute_mutex:
            begin = getattr(aconn, _PENDING, None)
            if begin is not None:
                setattr(aconn, _PENDING, None)  # taken: a failing BEGIN is not sent again
            rows, self._description, self._rowcount, self._lastrowid = await aconn._execute(
                _one_call, aconn, begin, operation, parameters, many
            )
        self._rows = collections.deque(rows)

    async def _async_soft_close(self) -> None:
        return None  # nothing is open on the worker thread

    def close(self) -> None:
        self._rows.clear()

    def nextset(self) -> None:
        return None

    def setinputsizes(self, *inputsizes: Any) -> None:
        return None


class OneCallConnection(AsyncAdapt_aiosqlite_connection):
    """SQLAlchemy's aiosqlite connection with `OneCallCursor` cursors, a deferred BEGIN, and no COMMIT or
    ROLLBACK hop when SQLite has no transaction open (`install_one_call`)."""

    __slots__ = ()
    _cursor_cls = OneCallCursor

    @property
    def pending_begin(self) -> str | None:
        """The BEGIN the next statement will open SQLite's transaction with, if any."""
        return getattr(self._connection, _PENDING, None)

    def begin_with_next_statement(self, begin: str) -> None:
        """Send `begin` in the same worker call as the next statement (unless a transaction is open then)."""
        setattr(self._connection, _PENDING, begin)

    def _nothing_to_end(self) -> bool:
        setattr(self._connection, _PENDING, None)  # a transaction that sent nothing has nothing to end
        raw = self._connection._connection
        # Reading the flag from this thread is safe: no call of this connection is running (the adapter
        # awaits each one), and sqlite3 reads it without a thread check.
        return raw is not None and getattr(raw, "autocommit", _LEGACY) == _LEGACY and not raw.in_transaction

    def commit(self) -> None:
        if not self._nothing_to_end():
            super().commit()

    def rollback(self) -> None:
        if not self._nothing_to_end():
            super().rollback()


def install_one_call(dbapi_conn: Any) -> bool:
    """Make SQLAlchemy's adapted aiosqlite connection a `OneCallConnection` (its class swapped in place:
    the same object, slots and state). Returns False, changing nothing, unless the adapter and aiosqlite
    have exactly the parts it relies on."""
    if type(dbapi_conn) is not AsyncAdapt_aiosqlite_connection:
        return False
    aconn = getattr(dbapi_conn, "_connection", None)
    if not (
        callable(getattr(aconn, "_execute", None))
        and hasattr(aconn, "_connection")
        and hasattr(type(aconn), "_conn")
        and hasattr(aconn, "__dict__")  # the pending BEGIN is kept on it
        and hasattr(dbapi_conn, "_execute_mutex")
        and hasattr(dbapi_conn, "_handle_exception")
        and getattr(AsyncAdapt_aiosqlite_connection, "_cursor_cls", None) is AsyncAdapt_aiosqlite_cursor
    ):
        return False
    dbapi_conn.__class__ = OneCallConnection
    return True


def _path_literal(compiler: SQLCompiler, path: str) -> str:
    return sql_literal(compiler, path)


def check_key(key: str) -> None:
    """Keys an index expression can name (a path label with '"' needs SQLite >= 3.45)."""
    if '"' in key and not _QUOTED_LABELS:
        raise ValidationFailed(
            f"indexed path key {key!r}: SQLite {sqlite3.sqlite_version} cannot address object keys containing '\"' "
            "in an index expression (needs SQLite >= 3.45)"
        )


_QUOTED_LABELS = sqlite3.sqlite_version_info >= QUOTED_LABELS_FROM


@dataclass(frozen=True)
class _Loc:
    """Where a value sits in a document: SQL for its json_type and its value, and (`src`, `path`)
    from which its members are addressed."""

    type_sql: str
    value_sql: str
    src: str
    path: str


def _at(compiler: SQLCompiler, src: str, path: str) -> _Loc:
    lit = _path_literal(compiler, path)
    return _Loc(f"json_type({src}, {lit})", f"json_extract({src}, {lit})", src, path)


def _child(compiler: SQLCompiler, loc: _Loc, key: str) -> _Loc:
    if '"' not in key or _QUOTED_LABELS:
        return _at(compiler, loc.src, f"{loc.path}.{json_label(key)}")
    # SQLite < 3.45 cannot spell a key containing '"' in a path: find it among the object's members.
    # (Array members have integer keys, a scalar's only row has a NULL key: neither matches.)
    lit, label = _path_literal(compiler, loc.path), sql_literal(compiler, key)
    member = f"FROM json_each({loc.src}, {lit}) AS jk WHERE jk.key = {label}"
    type_sql, value_sql = f"(SELECT jk.type {member})", f"(SELECT jk.value {member})"
    return _Loc(type_sql, value_sql, f"(CASE WHEN {type_sql} IN ('object', 'array') THEN {value_sql} END)", "$")


def _locate(compiler: SQLCompiler, doc: str, keys: tuple[str, ...]) -> _Loc:
    loc = _at(compiler, doc, "$")
    for key in keys:
        loc = _child(compiler, loc, key)
    return loc


def _eq(compiler: SQLCompiler, loc: _Loc, shape: Any, leaves: Iterator[Any], kw: dict[str, Any]) -> str:
    """Typed equality of the value at `loc` with a value of `shape` whose leaf binds come from `leaves`."""
    jtype = loc.type_sql
    if shape == "null":
        return f"{jtype} = 'null'"
    if shape[0] == "bool":
        return f"{jtype} = '{'true' if shape[1] else 'false'}'"
    if shape in ("number", "string"):
        # The same two expressions as a declared index (json_type, json_extract): SEARCH, not SCAN.
        gate = "IN ('integer', 'real')" if shape == "number" else "= 'text'"
        bound = render_bind(compiler, next(leaves), kw)
        return f"({jtype} {gate} AND {loc.value_sql} = {bound})"
    kind, items = shape
    lit = _path_literal(compiler, loc.path)
    if kind == "object":
        # src and lit are compiler output and escaped literals, never user text.
        parts = [f"{jtype} = 'object'", f"(SELECT count(*) FROM json_each({loc.src}, {lit})) = {len(items)}"]  # noqa: S608
        parts.extend(_eq(compiler, _child(compiler, loc, key), item, leaves, kw) for key, item in items)
        return "(" + " AND ".join(parts) + ")"
    parts = [f"{jtype} = 'array'", f"json_array_length({loc.src}, {lit}) = {len(items)}"]
    parts.extend(
        _eq(compiler, _at(compiler, loc.src, f"{loc.path}[{i}]"), item, leaves, kw) for i, item in enumerate(items)
    )
    return "(" + " AND ".join(parts) + ")"


def _element_eq(compiler: SQLCompiler, element: JsonPredicate, kw: dict[str, Any]) -> str:
    """Typed equality of a `json_each` row ``je`` with the element's value."""
    shape = element.shape
    if shape == "null":
        return "je.type = 'null'"
    if shape[0] == "bool":
        return f"je.type = '{'true' if shape[1] else 'false'}'"
    if shape in ("number", "string"):
        gate = "IN ('integer', 'real')" if shape == "number" else "= 'text'"
        return f"(je.type {gate} AND je.value = {render_bind(compiler, element.leaves[0], kw)})"
    # A container element's value is its JSON text; CASE keeps json_type away from other rows.
    inner = _eq(compiler, _at(compiler, "je.value", "$"), shape, iter(element.leaves), kw)
    return f"(CASE WHEN je.type = '{shape[0]}' THEN {inner} ELSE 0 END)"


@compiles(Unindexed, "sqlite")
def _compile_unindexed(element: Unindexed, compiler: SQLCompiler, **kw: Any) -> str:
    # A column behind a unary + is still the column (its collation, its value) but no index serves it.
    return f"+{compiler.process(element.column, **kw)}"


@compiles(JsonPredicate, "sqlite")
def _compile_json_predicate(element: JsonPredicate, compiler: SQLCompiler, **kw: Any) -> str:
    loc = _locate(compiler, compiler.process(element.column, **kw), element.keys)
    if element.predicate == "exists":
        return f"({loc.type_sql} IS NOT NULL)"
    if element.predicate == "eq":
        return _eq(compiler, loc, element.shape, iter(element.leaves), kw)
    if element.predicate == "range":
        gate = "IN ('integer', 'real')" if element.kind == "number" else "= 'text'"
        bound = render_bind(compiler, element.leaves[0], kw)
        # Text compares with the BINARY collation: UTF-8 bytes, i.e. code points.
        return f"({loc.type_sql} {gate} AND {loc.value_sql} {element.sql_op} {bound})"
    inner = _element_eq(compiler, element, kw)
    members = f"json_each({loc.src}, {_path_literal(compiler, loc.path)})"
    return f"({loc.type_sql} = 'array' AND EXISTS (SELECT 1 FROM {members} AS je WHERE {inner}))"  # noqa: S608


_RANK = (
    "CASE {t} WHEN 'null' THEN 1 WHEN 'false' THEN 2 WHEN 'true' THEN 3 "
    "WHEN 'integer' THEN 4 WHEN 'real' THEN 4 WHEN 'text' THEN 5 WHEN 'array' THEN 6 WHEN 'object' THEN 7 ELSE 0 END"
)


@compiles(JsonSortKey, "sqlite")
def _compile_sort_key(element: JsonSortKey, compiler: SQLCompiler, **kw: Any) -> str:
    loc = _locate(compiler, compiler.process(element.column, **kw), element.keys)
    if element.part == "rank":
        return "(" + _RANK.format(t=loc.type_sql) + ")"
    if element.part == "num":
        return f"(CASE WHEN {loc.type_sql} IN ('integer', 'real') THEN {loc.value_sql} ELSE 0 END)"
    return f"(CASE WHEN {loc.type_sql} = 'text' THEN {loc.value_sql} ELSE '' END)"


@functools.cache
def _insert_absent(facts: Table) -> Any:
    return insert_ignoring_key(dialect_insert, facts)


@functools.cache
def _positions(sessions: Table) -> Any:
    return upsert_positions(dialect_insert, sessions)
