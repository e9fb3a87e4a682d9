"""PostgreSQL: JSONB containment (served by a GIN jsonb_path_ops index) plus exact rechecks."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, bindparam, exc, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler

from memstate_sql.dialects.base import DialectSupport, ErrorKind, lock_key, sql_literal
from memstate_sql.errors import MigrationLockTimeout
from memstate_sql.filters import JsonPredicate

_RETRY_STATES = {"40001", "40P01", "55P03"}  # serialization failure, deadlock, lock not available
_DISCONNECT_CLASSES = ("08", "57P")  # connection exceptions, admin shutdown / crash shutdown


class PostgreSQLSupport(DialectSupport):
    name = "postgresql"

    def classify(self, error: BaseException) -> ErrorKind:
        if isinstance(error, exc.DBAPIError) and error.connection_invalidated:
            return ErrorKind.DISCONNECT
        state = getattr(getattr(error, "orig", None), "sqlstate", None) or ""
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
        # A session-level advisory lock survives the per-revision commits; inside a caller's
        # transaction, a transaction-level one is released with it.
        external = conn.in_transaction()
        key = lock_key(name)
        take = text("SELECT pg_try_advisory_xact_lock(:k)" if external else "SELECT pg_try_advisory_lock(:k)")
        deadline = time.monotonic() + timeout
        delay = 0.01
        while not conn.execute(take, {"k": key}).scalar():
            if not external:
                conn.rollback()
            if time.monotonic() >= deadline:
                raise MigrationLockTimeout(
                    f"could not take the migration lock {name!r} within {timeout:g}s: another process is migrating "
                    "this database (or died holding the lock: see pg_locks)"
                )
            sleep(delay)
            delay = min(delay * 2, 0.25)
        if external:
            yield
            return
        # Bound the wait for table locks held by running applications, too.
        conn.execute(text(f"SET lock_timeout = '{max(1, int(timeout * 1000))}ms'"))
        conn.commit()
        try:
            yield
        finally:
            if conn.in_transaction():
                conn.rollback()
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            conn.execute(text("RESET lock_timeout"))
            conn.commit()


def _nest(keys: tuple[str, ...], value: Any) -> Any:
    for key in reversed(keys):
        value = {key: value}
    return value


@compiles(JsonPredicate, "postgresql")
def _compile_json_predicate(element: JsonPredicate, compiler: SQLCompiler, **kw: Any) -> str:
    doc = compiler.process(element.column, **kw)
    # "->" chains with text keys: every segment is an object key, never an array index.
    extract = doc + "".join(f" -> {sql_literal(compiler, key)}" for key in element.keys)
    if element.predicate == "exists":
        return f"(({extract}) IS NOT NULL)"
    value = element.value
    if not element.keys:
        return f"({doc} = {compiler.process(bindparam(None, value, type_=JSONB), **kw)})"
    containment = f"{doc} @> {compiler.process(bindparam(None, _nest(element.keys, value), type_=JSONB), **kw)}"
    if element.kind in ("object", "array"):
        # @> is a superset test for containers ([1,2,3] @> [3,1]); recheck exact equality.
        exact = compiler.process(bindparam(None, value, type_=JSONB), **kw)
        return f"({containment} AND ({extract}) = {exact})"
    return f"({containment})"
