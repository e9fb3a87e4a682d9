"""MySQL 8 and MariaDB: JSON stored as text, compared with explicit type gates.

MariaDB 10.11 is what CI runs. The MySQL 8 forms (JSON comparator, CAST AS JSON)
follow MySQL's documented JSON comparison rules but have not been run here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Dialect, bindparam, exc, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler

from memstate_sql import jsondoc
from memstate_sql.dialects._paths import dollar_path
from memstate_sql.dialects.base import DialectSupport, ErrorKind, lock_name, sql_literal
from memstate_sql.errors import MigrationLockTimeout
from memstate_sql.filters import JsonPredicate

_RETRY_CODES = {1213, 1205}  # deadlock, lock wait timeout
_UNIQUE_CODES = {1062}
_DISCONNECT_CODES = {2006, 2013, 2055, 1927, 1053}
_MARIADB_TYPES = {
    "null": "= 'NULL'",
    "bool": "= 'BOOLEAN'",
    "number": "IN ('INTEGER', 'DOUBLE')",
    "string": "= 'STRING'",
    "object": "= 'OBJECT'",
    "array": "= 'ARRAY'",
}


class MySQLSupport(DialectSupport):
    name = "mysql"
    #: DDL commits implicitly (and would commit a caller's open transaction).
    transactional_ddl = False

    def engine_options(self, url: URL) -> dict[str, Any]:
        # READ COMMITTED: a locking read of an absent key takes no gap lock, so racing
        # singleton inserts end in a duplicate-key error (retried) rather than a deadlock.
        return {"pool_pre_ping": True, "pool_recycle": 3600, "isolation_level": "READ COMMITTED"}

    def classify(self, error: BaseException) -> ErrorKind:
        if isinstance(error, exc.DBAPIError) and error.connection_invalidated:
            return ErrorKind.DISCONNECT
        args = getattr(getattr(error, "orig", None), "args", ())
        code = args[0] if args and isinstance(args[0], int) else None
        if code in _RETRY_CODES:
            return ErrorKind.RETRY
        if code in _UNIQUE_CODES:
            return ErrorKind.UNIQUE
        if code in _DISCONNECT_CODES:
            return ErrorKind.DISCONNECT
        return ErrorKind.OTHER

    @contextmanager
    def migration_lock(
        self, conn: Connection, name: str, timeout: float, sleep: Callable[[float], Any]
    ) -> Iterator[None]:
        external = conn.in_transaction()
        lock = lock_name(name)
        got = conn.execute(text("SELECT GET_LOCK(:n, :t)"), {"n": lock, "t": timeout}).scalar()
        if got != 1:
            if not external:
                conn.rollback()
            raise MigrationLockTimeout(
                f"could not take the migration lock {lock!r} within {timeout:g}s: another process is migrating "
                "this database (see performance_schema.metadata_locks / IS_USED_LOCK)"
            )
        # Bound the wait for metadata locks held by running applications (default: a day).
        previous = conn.execute(text("SELECT @@SESSION.lock_wait_timeout")).scalar()
        conn.execute(text(f"SET SESSION lock_wait_timeout = {max(1, int(timeout))}"))
        if not external:
            conn.commit()
        try:
            yield
        finally:
            if not external and conn.in_transaction():
                conn.rollback()
            conn.execute(text(f"SET SESSION lock_wait_timeout = {int(previous or 31536000)}"))
            conn.execute(text("SELECT RELEASE_LOCK(:n)"), {"n": lock})
            if not external:
                conn.commit()


def _is_mariadb(dialect: Dialect) -> bool:
    return bool(getattr(dialect, "is_mariadb", False))


def _mariadb_eq(compiler: SQLCompiler, doc: str, lit: str, element: JsonPredicate, kw: dict[str, Any]) -> str:
    extract = f"JSON_EXTRACT({doc}, {lit})"
    assert element.kind is not None
    gate = f"JSON_TYPE({extract}) {_MARIADB_TYPES[element.kind]}"
    if element.kind == "null":
        return f"({gate})"
    if element.kind == "string":
        # JSON_VALUE decodes escapes; the binary NO PAD collation compares code points exactly
        # (the column's utf8mb4_bin pads trailing spaces, the connection's collation folds case).
        bound = compiler.process(bindparam(None, element.value), **kw)
        return f"({gate} AND JSON_VALUE({doc}, {lit}) COLLATE utf8mb4_nopad_bin = {bound})"
    # JSON_EQUALS is type-faithful (true != 1, 1 = 1.0, objects order-free). In a WHERE clause
    # MariaDB 10.11 treats JSON_EQUALS(NULL, x) as true: always test IS TRUE.
    bound = compiler.process(bindparam(None, jsondoc.dumps(element.value)), **kw)
    return f"({gate} AND JSON_EQUALS({extract}, {bound}) IS TRUE)"


def _mysql8_eq(compiler: SQLCompiler, doc: str, lit: str, element: JsonPredicate, kw: dict[str, Any]) -> str:
    bound = compiler.process(bindparam(None, jsondoc.dumps(element.value)), **kw)
    return f"(JSON_EXTRACT({doc}, {lit}) = CAST({bound} AS JSON))"


@compiles(JsonPredicate, "mysql")
@compiles(JsonPredicate, "mariadb")
def _compile_json_predicate(element: JsonPredicate, compiler: SQLCompiler, **kw: Any) -> str:
    doc = compiler.process(element.column, **kw)
    lit = sql_literal(compiler, dollar_path(element.keys))
    if element.predicate == "exists":
        return f"(JSON_EXTRACT({doc}, {lit}) IS NOT NULL)"
    if _is_mariadb(compiler.dialect):
        return _mariadb_eq(compiler, doc, lit, element, kw)
    return _mysql8_eq(compiler, doc, lit, element, kw)
