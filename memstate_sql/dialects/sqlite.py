"""SQLite: JSON1 functions, BEGIN IMMEDIATE writers, WAL, busy timeout."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Connection, Engine, Table, event, exc
from sqlalchemy.engine import URL
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.pool import StaticPool
from sqlalchemy.sql.compiler import SQLCompiler

from memstate_sql.dialects._paths import dollar_path
from memstate_sql.dialects.base import (
    DialectSupport,
    ErrorKind,
    ddl_literal,
    ddl_names,
    json_label,
    render_bind,
    sql_literal,
)
from memstate_sql.errors import ValidationFailed
from memstate_sql.filters import JsonPredicate, JsonSortKey
from memstate_sql.indexes import IndexedPath

BUSY_TIMEOUT_S = 30.0
#: SQLite before the 3.45 JSON rewrite cannot address object keys that contain '"'.
QUOTED_LABELS_FROM = (3, 45, 0)


class SQLiteSupport(DialectSupport):
    name = "sqlite"
    row_locks = False

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
        dbapi_conn = conn.connection.dbapi_connection
        if not getattr(dbapi_conn, "in_transaction", False):
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    def classify(self, error: BaseException) -> ErrorKind:
        if isinstance(error, exc.DBAPIError) and error.connection_invalidated:
            return ErrorKind.DISCONNECT
        message = str(getattr(error, "orig", error)).lower()
        if isinstance(error, exc.IntegrityError) and ("unique constraint" in message or "primary key" in message):
            return ErrorKind.UNIQUE
        if isinstance(error, exc.OperationalError) and ("locked" in message or "busy" in message):
            return ErrorKind.RETRY
        return ErrorKind.OTHER

    def create_path_index(self, conn: Connection, facts: Table, spec: IndexedPath) -> None:
        for key in spec.keys:
            check_key(key)
        table, name = ddl_names(conn, facts, spec.index_name(facts.name))
        lit = ddl_literal(conn, dollar_path(spec.keys))
        # The very expressions the compiler emits for a typed comparison (json_type gate, json_extract value).
        conn.exec_driver_sql(
            f"CREATE INDEX IF NOT EXISTS {name} ON {table} (json_type(payload, {lit}), json_extract(payload, {lit}))"
        )


def _path_literal(compiler: SQLCompiler, path: str) -> str:
    return sql_literal(compiler, path)


def check_key(key: str) -> None:
    if '"' in key and sqlite3.sqlite_version_info < QUOTED_LABELS_FROM:
        raise ValidationFailed(
            f"filter key {key!r}: SQLite {sqlite3.sqlite_version} cannot address object keys containing '\"' "
            "(needs SQLite >= 3.45)"
        )


def _eq(compiler: SQLCompiler, doc: str, path: str, shape: Any, leaves: Iterator[Any], kw: dict[str, Any]) -> str:
    """Typed equality of the value at `path` with a value of `shape` whose leaf binds come from `leaves`."""
    lit = _path_literal(compiler, path)
    jtype = f"json_type({doc}, {lit})"
    if shape == "null":
        return f"{jtype} = 'null'"
    if shape[0] == "bool":
        return f"{jtype} = '{'true' if shape[1] else 'false'}'"
    if shape in ("number", "string"):
        # The same two expressions as a declared index (json_type, json_extract): SEARCH, not SCAN.
        gate = "IN ('integer', 'real')" if shape == "number" else "= 'text'"
        bound = render_bind(compiler, next(leaves), kw)
        return f"({jtype} {gate} AND json_extract({doc}, {lit}) = {bound})"
    kind, items = shape
    if kind == "object":
        # doc and lit are compiler output and an escaped literal, never user text.
        parts = [f"{jtype} = 'object'", f"(SELECT count(*) FROM json_each({doc}, {lit})) = {len(items)}"]  # noqa: S608
        for key, item in items:
            check_key(key)
            parts.append(_eq(compiler, doc, f"{path}.{json_label(key)}", item, leaves, kw))
        return "(" + " AND ".join(parts) + ")"
    parts = [f"{jtype} = 'array'", f"json_array_length({doc}, {lit}) = {len(items)}"]
    parts.extend(_eq(compiler, doc, f"{path}[{i}]", item, leaves, kw) for i, item in enumerate(items))
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
    inner = _eq(compiler, "je.value", "$", shape, iter(element.leaves), kw)
    return f"(CASE WHEN je.type = '{shape[0]}' THEN {inner} ELSE 0 END)"


@compiles(JsonPredicate, "sqlite")
def _compile_json_predicate(element: JsonPredicate, compiler: SQLCompiler, **kw: Any) -> str:
    for key in element.keys:
        check_key(key)
    doc = compiler.process(element.column, **kw)
    path = dollar_path(element.keys)
    lit = _path_literal(compiler, path)
    if element.predicate == "exists":
        return f"(json_type({doc}, {lit}) IS NOT NULL)"
    if element.predicate == "eq":
        return _eq(compiler, doc, path, element.shape, iter(element.leaves), kw)
    if element.predicate == "range":
        gate = "IN ('integer', 'real')" if element.kind == "number" else "= 'text'"
        bound = render_bind(compiler, element.leaves[0], kw)
        # Text compares with the BINARY collation: UTF-8 bytes, i.e. code points.
        return f"(json_type({doc}, {lit}) {gate} AND json_extract({doc}, {lit}) {element.sql_op} {bound})"
    inner = _element_eq(compiler, element, kw)
    return f"(json_type({doc}, {lit}) = 'array' AND EXISTS (SELECT 1 FROM json_each({doc}, {lit}) AS je WHERE {inner}))"  # noqa: S608


_RANK = (
    "CASE json_type({doc}, {lit}) WHEN 'null' THEN 1 WHEN 'false' THEN 2 WHEN 'true' THEN 3 "
    "WHEN 'integer' THEN 4 WHEN 'real' THEN 4 WHEN 'text' THEN 5 WHEN 'array' THEN 6 WHEN 'object' THEN 7 ELSE 0 END"
)


@compiles(JsonSortKey, "sqlite")
def _compile_sort_key(element: JsonSortKey, compiler: SQLCompiler, **kw: Any) -> str:
    for key in element.keys:
        check_key(key)
    doc = compiler.process(element.column, **kw)
    lit = _path_literal(compiler, dollar_path(element.keys))
    if element.part == "rank":
        return "(" + _RANK.format(doc=doc, lit=lit) + ")"
    if element.part == "num":
        return f"(CASE WHEN json_type({doc}, {lit}) IN ('integer', 'real') THEN json_extract({doc}, {lit}) ELSE 0 END)"
    return f"(CASE WHEN json_type({doc}, {lit}) = 'text' THEN json_extract({doc}, {lit}) ELSE '' END)"
