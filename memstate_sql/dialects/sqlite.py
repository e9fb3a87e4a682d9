"""SQLite: JSON1 functions, BEGIN IMMEDIATE writers, WAL, busy timeout."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, event, exc
from sqlalchemy.engine import URL
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.pool import StaticPool
from sqlalchemy.sql.compiler import SQLCompiler

from memstate_sql.dialects._paths import dollar_path
from memstate_sql.dialects.base import DialectSupport, ErrorKind, json_label, sql_literal
from memstate_sql.errors import MigrationLockTimeout, ValidationFailed
from memstate_sql.filters import JsonPredicate, kind_of

BUSY_TIMEOUT_S = 30.0
#: SQLite before the 3.45 JSON rewrite cannot address object keys that contain '"'.
QUOTED_LABELS_FROM = (3, 45, 0)


class SQLiteSupport(DialectSupport):
    name = "sqlite"
    row_locks = False
    batch_alter = True

    def engine_options(self, url: URL) -> dict[str, Any]:
        options: dict[str, Any] = {"connect_args": {"timeout": BUSY_TIMEOUT_S}}
        if url.database in (None, "", ":memory:"):
            # One shared in-memory database for every thread of the process.
            options["poolclass"] = StaticPool
            options["connect_args"]["check_same_thread"] = False
        return options

    def configure_engine(self, engine: Engine) -> None:
        in_memory = engine.url.database in (None, "", ":memory:")

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            try:
                cursor.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
                if not in_memory:
                    cursor.execute("PRAGMA journal_mode = WAL")
                cursor.execute("PRAGMA foreign_keys = ON")
            finally:
                cursor.close()

    def begin_write(self, conn: Connection) -> None:
        # Take the write lock up front: a deferred transaction that reads and then writes
        # fails with SQLITE_BUSY at once (no busy handler) when another writer got there first.
        if not _driver_in_transaction(conn.connection.dbapi_connection):
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    def begin_snapshot(self, conn: Connection) -> None:
        # pysqlite starts no transaction for SELECTs: begin one so that every read sees one snapshot.
        dbapi_conn = conn.connection.dbapi_connection
        if not getattr(dbapi_conn, "in_transaction", False):
            conn.exec_driver_sql("BEGIN")

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


def _driver_in_transaction(dbapi_conn: Any) -> bool:
    """Whether SQLite itself has a transaction open (sqlite3, or aiosqlite under SQLAlchemy's adapter)."""
    found = getattr(dbapi_conn, "in_transaction", None)
    if found is None:
        found = getattr(getattr(dbapi_conn, "_connection", None), "in_transaction", False)
    return bool(found)


def _path_literal(compiler: SQLCompiler, path: str) -> str:
    return sql_literal(compiler, path)


def _check_key(key: str) -> None:
    if '"' in key and sqlite3.sqlite_version_info < QUOTED_LABELS_FROM:
        raise ValidationFailed(
            f"filter key {key!r}: SQLite {sqlite3.sqlite_version} cannot address object keys containing '\"' "
            "(needs SQLite >= 3.45)"
        )


def _eq(compiler: SQLCompiler, doc: str, path: str, value: Any, kw: dict[str, Any]) -> str:
    lit = _path_literal(compiler, path)
    jtype = f"json_type({doc}, {lit})"
    kind = kind_of(value)
    if kind == "null":
        return f"{jtype} = 'null'"
    if kind == "bool":
        return f"{jtype} = '{'true' if value else 'false'}'"
    if kind in ("number", "string"):
        gate = "IN ('integer', 'real')" if kind == "number" else "= 'text'"
        bound = compiler.process(bindparam(None, value), **kw)
        return f"({jtype} {gate} AND json_extract({doc}, {lit}) = {bound})"
    if kind == "object":
        # doc and lit are compiler output and an escaped literal, never user text.
        parts = [f"{jtype} = 'object'", f"(SELECT count(*) FROM json_each({doc}, {lit})) = {len(value)}"]  # noqa: S608
        for key, item in value.items():
            _check_key(key)
            parts.append(_eq(compiler, doc, f"{path}.{json_label(key)}", item, kw))
        return "(" + " AND ".join(parts) + ")"
    parts = [f"{jtype} = 'array'", f"json_array_length({doc}, {lit}) = {len(value)}"]
    parts.extend(_eq(compiler, doc, f"{path}[{i}]", item, kw) for i, item in enumerate(value))
    return "(" + " AND ".join(parts) + ")"


@compiles(JsonPredicate, "sqlite")
def _compile_json_predicate(element: JsonPredicate, compiler: SQLCompiler, **kw: Any) -> str:
    for key in element.keys:
        _check_key(key)
    doc = compiler.process(element.column, **kw)
    path = dollar_path(element.keys)
    if element.predicate == "exists":
        return f"(json_type({doc}, {_path_literal(compiler, path)}) IS NOT NULL)"
    return _eq(compiler, doc, path, element.value, kw)
