"""MySQL 8 and MariaDB: JSON stored as text, compared with explicit type gates.

MariaDB 10.11 is what CI runs. The MySQL 8 forms (JSON comparator, CAST AS JSON)
follow MySQL's documented JSON comparison rules but have not been run here.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Dialect, Engine, Table, column, event, exc, text
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.dialects import mysql as mysql_types
from sqlalchemy.engine import URL
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.types import TypeEngine

from memstate_sql.dialects._paths import dollar_path
from memstate_sql.dialects.base import (
    LOCK_TABLE,
    DialectSupport,
    ErrorKind,
    Script,
    ddl_literal,
    ddl_names,
    lock_name,
    render_bind,
    socket_idle,
    sql_literal,
    versioned_update,
)
from memstate_sql.errors import MigrationLockTimeout
from memstate_sql.filters import CodePointText, JsonPredicate, JsonSortKey
from memstate_sql.indexes import IndexedPath

_log = logging.getLogger("memstate_sql.migrations")

_RETRY_CODES = {1213, 1205}  # deadlock (and Galera certification conflicts), lock wait timeout
#: DDL errors another migrator's concurrent DDL causes (table / column / key exists, Galera TOI
#: "Can't execute the given command because you have active locked tables", deadlock).
_CONCURRENT_DDL_CODES = {1050, 1060, 1061, 1684, 1213}
#: ``wsrep_sync_wait`` of a ``read_your_writes`` storage's sessions: 1 (reads) + 2 (UPDATE, DELETE).
READ_YOUR_WRITES_SYNC_WAIT = 3
#: The cluster-wide lock table (Galera): one row per held lock, with a lease.
#: Seconds a lease lasts without renewal (a killed migrator's lock is taken over after it).
LEASE_SECONDS = 20.0
_UNIQUE_CODES = {1062}
_DISCONNECT_CODES = {2006, 2013, 2055, 1927, 1053}

#: The protocol's capability and status flags (pymysql.constants: CLIENT, SERVER_STATUS).
_FOUND_ROWS = 1 << 1
_MULTI_STATEMENTS = 1 << 16
_IN_TRANSACTION = 1
#: Drivers that take ``client_flag`` (mysql-connector spells it otherwise).
_FLAGGED_DRIVERS = frozenset({"pymysql", "mysqldb", "aiomysql", "asyncmy"})

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
    failed_insert_keeps_transaction = True  # InnoDB rolls back the statement alone on a duplicate key
    #: DDL commits implicitly (and would commit a caller's open transaction).
    transactional_ddl = False
    sync_driver = "pymysql"
    async_driver = "aiomysql"
    async_drivers = frozenset({"aiomysql", "asyncmy"})

    #: No RETURNING on an upsert here: LAST_INSERT_ID(expr) makes the new value the statement's insert id,
    #: which the driver reports with the result (no second round trip).
    positions_in_insert_id = True
    #: A lone write is one multi-statement text, ``START TRANSACTION; ...; COMMIT``: one round trip where a
    #: transaction of the same statements takes five. On connections with CLIENT.MULTI_STATEMENTS only
    #: (`engine_options` asks for it on memstate_sql's own engines; aiomysql always has it).
    one_statement_writes = True
    scripted_writes = True

    def positions_statement(self, sessions: Table) -> Any:
        return _positions(sessions)

    def can_write_alone(self, conn: Connection) -> bool:
        driver: Any = conn.connection.dbapi_connection
        driver = getattr(driver, "_connection", driver)  # SQLAlchemy's asyncio adapter: aiomysql's connection
        flags = getattr(driver, "client_flag", None)  # pymysql's
        if flags is None:
            flags = getattr(driver, "_client_flag", 0)  # aiomysql's
        status = getattr(driver, "server_status", None)
        if not isinstance(flags, int) or not flags & _MULTI_STATEMENTS or not isinstance(status, int):
            return False  # not a multi-statement connection of a driver known here
        if status & _IN_TRANSACTION:
            return False  # a transaction is open: a script's START TRANSACTION would commit it
        fd = _socket(driver)
        return fd is not None and socket_idle(fd)  # anything unread (an error, the end of file): not idle

    def insert_logged_script(self, facts: Table, log: Table, sessions: Table, in_session: bool) -> Script | None:
        return _insert_script(facts, log, sessions, in_session)

    def update_logged_script(
        self, facts: Table, log: Table, sessions: Table, in_session: bool, allow_immutable: bool
    ) -> Script | None:
        return _update_script(facts, log, sessions, in_session, allow_immutable)

    def writers_excluded(self, conn: Connection, *, rows_locked: bool) -> bool:
        # A Galera node's row locks are its own: a writer on another node changes the row, certifies
        # and commits regardless (this transaction is aborted only when its own writes conflict).
        return rows_locked and not is_galera(conn)

    def timestamp_type(self, dialect: Dialect) -> TypeEngine[Any]:
        return mysql_types.DATETIME(fsp=6)  # the default DATETIME drops microseconds

    def key_type(self, dialect: Dialect, length: int) -> TypeEngine[Any]:
        # Tables default to case-insensitive PAD SPACE collations ('Abc' = 'abc '): a binary NO PAD one.
        return mysql_types.VARCHAR(length, charset="utf8mb4", collation=_binary_collation(dialect))

    def engine_options(self, url: URL) -> dict[str, Any]:
        # READ COMMITTED: a locking read of an absent key takes no gap lock, so racing
        # singleton inserts end in a duplicate-key error (retried) rather than a deadlock.
        options: dict[str, Any] = {"pool_recycle": 3600, "isolation_level": "READ COMMITTED"}
        if url.get_driver_name() in _FLAGGED_DRIVERS:
            # Multi-statement texts for the lone writes (`scripted_writes`); the flags SQLAlchemy sets from
            # the URL (its ``client_flag`` and FOUND_ROWS) are kept, since this argument replaces them.
            given = url.query.get("client_flag")
            if isinstance(given, tuple):
                given = given[-1]
            flags = int(given) if given else 0
            options["connect_args"] = {"client_flag": flags | _FOUND_ROWS | _MULTI_STATEMENTS}
        return options

    def configure_engine(
        self, engine: Engine, *, sqlite_synchronous: str | None = None, read_your_writes: bool = False
    ) -> None:
        super().configure_engine(engine, sqlite_synchronous=sqlite_synchronous)
        if not read_your_writes:
            return

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            # On a Galera node, every read (SELECT, also FOR UPDATE) and every UPDATE/DELETE first
            # waits until the node has applied what the cluster had committed when it was sent.
            cursor = dbapi_conn.cursor()
            try:
                cursor.execute("SHOW GLOBAL VARIABLES LIKE 'wsrep_on'")
                row = cursor.fetchone()
                if row is not None and str(row[1]).upper() == "ON":
                    cursor.execute(f"SET SESSION wsrep_sync_wait = {READ_YOUR_WRITES_SYNC_WAIT}")
            finally:
                cursor.close()

    def classify(self, error: BaseException) -> ErrorKind:
        if isinstance(error, exc.DBAPIError) and error.connection_invalidated:
            return ErrorKind.DISCONNECT
        code = _code(error)
        if code in _RETRY_CODES:
            return ErrorKind.RETRY
        if code in _UNIQUE_CODES:
            return ErrorKind.UNIQUE
        if code in _DISCONNECT_CODES:
            return ErrorKind.DISCONNECT
        return ErrorKind.OTHER

    @contextmanager
    def try_exclusive(self, conn: Connection, name: str) -> Iterator[bool]:
        # GET_LOCK belongs to the session, not the transaction: released explicitly at the end of the block.
        lock = lock_name(name)
        got = conn.execute(text("SELECT GET_LOCK(:n, 0)"), {"n": lock}).scalar() == 1
        try:
            yield got
        finally:
            if got:
                conn.execute(text("SELECT RELEASE_LOCK(:n)"), {"n": lock})

    def concurrent_ddl(self, error: BaseException) -> bool:
        return _code(error) in _CONCURRENT_DDL_CODES

    @contextmanager
    def migration_lock(
        self, conn: Connection, name: str, timeout: float, sleep: Callable[[float], Any]
    ) -> Iterator[None]:
        """``GET_LOCK`` (node-local under Galera), and on a Galera node also a leased row of
        `LOCK_TABLE`, which certification makes cluster-wide (`galera.LeaseLock`)."""
        deadline = time.monotonic() + timeout
        external = conn.in_transaction()
        with self._session_lock(conn, name, timeout, sleep):
            galera = is_galera(conn)
            if not external and conn.in_transaction():
                conn.commit()
            if not galera:
                yield
                return
            lease = LeaseLock(conn.engine.url, name)
            lease.acquire(max(0.0, deadline - time.monotonic()), sleep)
            try:
                previous = conn.execute(text("SELECT @@SESSION.wsrep_sync_wait")).scalar()
                # Reads under the lock see every commit acknowledged anywhere before it was taken.
                conn.execute(text("SET SESSION wsrep_sync_wait = 15"))
                if not external:
                    conn.commit()
                try:
                    yield
                finally:
                    if not external and conn.in_transaction():
                        conn.rollback()
                    conn.execute(text(f"SET SESSION wsrep_sync_wait = {int(previous or 0)}"))
                    if not external:
                        conn.commit()
            finally:
                lease.release()

    @contextmanager
    def _session_lock(
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

    def create_path_index(self, conn: Connection, facts: Table, spec: IndexedPath) -> None:
        table, name = ddl_names(conn, facts, spec.index_name(facts.name))
        gcol = conn.dialect.identifier_preparer.quote(spec.column_name)
        lit = ddl_literal(conn, dollar_path(spec.keys))
        jtype = f"JSON_TYPE(JSON_EXTRACT(payload, {lit}))"
        if spec.kind == "number":
            numeric = "('INTEGER', 'DOUBLE', 'UNSIGNED INTEGER', 'DECIMAL')"
            definition = (
                f"DOUBLE AS (CASE WHEN {jtype} IN {numeric} THEN CAST(JSON_VALUE(payload, {lit}) AS DOUBLE) END)"
            )
        else:
            collation = _binary_collation(conn.dialect)
            definition = (
                f"VARCHAR({spec.string_prefix}) CHARACTER SET utf8mb4 COLLATE {collation} AS "
                f"(CASE WHEN {jtype} = 'STRING' THEN LEFT(JSON_VALUE(payload, {lit}), {spec.string_prefix}) END)"
            )
        columns = {c["name"] for c in sa_inspect(conn).get_columns(facts.name, schema=facts.schema)}
        if spec.column_name not in columns:
            conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {gcol} {definition} VIRTUAL")
        indexes = {i["name"] for i in sa_inspect(conn).get_indexes(facts.name, schema=facts.schema)}
        if spec.index_name(facts.name) not in indexes:
            conn.exec_driver_sql(f"CREATE INDEX {name} ON {table} (namespace, {gcol})")


def _code(error: BaseException) -> int | None:
    args = getattr(getattr(error, "orig", error), "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def is_galera(conn: Connection) -> bool:
    """Whether `conn` is on a Galera cluster node (``wsrep_on``); cached per connection."""
    info = conn.connection.info if conn.connection is not None else {}
    if "memstate_galera" not in info:
        row = conn.exec_driver_sql("SHOW GLOBAL VARIABLES LIKE 'wsrep_on'").first()
        info["memstate_galera"] = row is not None and str(row[1]).upper() == "ON"
    return bool(info["memstate_galera"])


class LeaseLock:
    """A cluster-wide lock on a Galera cluster: a row of `LOCK_TABLE` with a lease.

    Taken by inserting the row (or taking over an expired one) in a transaction of its own: when two
    nodes try at once, certification lets exactly one COMMIT through (the others get 1213 and wait).
    While held, a thread renews the lease every third of `LEASE_SECONDS`; a holder killed with its
    process stops renewing, and the lock is taken over once the lease has run out. Runs on its own
    short-lived connection (a sync driver engine without pool), never on the migration's connection.
    """

    def __init__(self, url: URL, name: str, lease: float = LEASE_SECONDS) -> None:
        from sqlalchemy import create_engine
        from sqlalchemy.pool import NullPool

        if url.get_driver_name() != "pymysql":
            url = url.set(drivername=f"{url.get_backend_name()}+pymysql")
        self.engine = create_engine(url, poolclass=NullPool, isolation_level="READ COMMITTED")
        self.name = lock_name(name, 191)
        self.lease = lease
        self.holder = f"{socket.gethostname()[:30]}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self.lost = False

    def _connect(self) -> Connection:
        conn = self.engine.connect()
        conn.exec_driver_sql("SET SESSION wsrep_sync_wait = 15")
        return conn

    def _ensure_table(self, conn: Connection) -> None:
        conn.exec_driver_sql(
            f"CREATE TABLE IF NOT EXISTS {LOCK_TABLE} ("
            "name VARCHAR(191) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL PRIMARY KEY, "
            "holder VARCHAR(96) NOT NULL, expires_at DATETIME(6) NOT NULL) ENGINE=InnoDB"
        )
        conn.commit()

    def _try(self, conn: Connection) -> bool:
        row = conn.execute(
            text(f"SELECT holder, expires_at < NOW(6) FROM {LOCK_TABLE} WHERE name = :n FOR UPDATE"),  # noqa: S608
            {"n": self.name},
        ).first()
        params = {"n": self.name, "h": self.holder, "s": self.lease}
        if row is None:
            conn.execute(
                text(
                    f"INSERT INTO {LOCK_TABLE} (name, holder, expires_at) "  # noqa: S608
                    "VALUES (:n, :h, NOW(6) + INTERVAL :s SECOND)"
                ),
                params,
            )
        elif row[1]:  # expired: a dead holder's
            conn.execute(
                text(
                    f"UPDATE {LOCK_TABLE} SET holder = :h, expires_at = NOW(6) + INTERVAL :s SECOND "  # noqa: S608
                    "WHERE name = :n"
                ),
                params,
            )
        else:
            conn.rollback()
            return False
        conn.commit()  # certification: only one node's COMMIT of this row goes through
        return True

    def acquire(self, timeout: float, sleep: Callable[[float], Any]) -> None:
        deadline = time.monotonic() + timeout
        delay = 0.05
        with self._connect() as conn:
            while True:
                try:
                    if conn.invalidated:  # reconnected after an error: the session setting is gone
                        conn.exec_driver_sql("SET SESSION wsrep_sync_wait = 15")
                    self._ensure_table(conn)
                    if self._try(conn):
                        break
                except exc.DBAPIError as err:
                    # Always: a failed COMMIT leaves an inactive transaction, and an error SQLAlchemy
                    # takes for a disconnect an invalidated one; either refuses the next statement
                    # until it is rolled back (the rollback also lets an invalidated connection reconnect).
                    conn.rollback()
                    if _code(err) not in _RETRY_CODES | _CONCURRENT_DDL_CODES | _UNIQUE_CODES | {1047}:
                        raise
                if time.monotonic() >= deadline:
                    self.engine.dispose()
                    raise MigrationLockTimeout(
                        f"could not take the cluster-wide migration lock {self.name!r} within {timeout:g}s: "
                        f"another node is migrating this database (see table {LOCK_TABLE})"
                    )
                sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 1.0)
        self._renewer = threading.Thread(target=self._renew, name=f"memstate-lease:{self.name}", daemon=True)
        self._renewer.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.lease / 3):
            try:
                with self._connect() as conn:
                    done = conn.execute(
                        text(
                            f"UPDATE {LOCK_TABLE} SET expires_at = NOW(6) + INTERVAL :s SECOND "  # noqa: S608
                            "WHERE name = :n AND holder = :h"
                        ),
                        {"n": self.name, "h": self.holder, "s": self.lease},
                    ).rowcount
                    conn.commit()
                if not done:
                    self.lost = True
                    _log.warning("lost the lease of lock %s (held for longer than its lease unrenewed)", self.name)
                    return
            except exc.DBAPIError as err:  # renewed at the next beat
                _log.info("renewing the lease of lock %s failed: %s", self.name, err)

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        try:
            for attempt in range(5):
                try:
                    with self._connect() as conn:
                        conn.execute(
                            text(f"DELETE FROM {LOCK_TABLE} WHERE name = :n AND holder = :h"),  # noqa: S608
                            {"n": self.name, "h": self.holder},
                        )
                        conn.commit()
                    return
                except exc.DBAPIError as err:
                    if _code(err) not in _RETRY_CODES or attempt == 4:
                        # The lease runs out on its own.
                        _log.warning("releasing lock %s failed (its lease expires by itself): %s", self.name, err)
                        return
                    time.sleep(0.05 * (attempt + 1))
        finally:
            self.engine.dispose()


def _is_mariadb(dialect: Dialect) -> bool:
    return bool(getattr(dialect, "is_mariadb", False))


def _generated(compiler: SQLCompiler, element: JsonPredicate | JsonSortKey, name: str, kw: dict[str, Any]) -> str:
    """The declared path's generated column, referenced by name (MariaDB uses its index only then)."""
    table = getattr(element.column, "table", None)
    return str(compiler.process(column(name, _selectable=table), **kw))


def _scalar_eq(
    compiler: SQLCompiler, doc: str, lit: str, extract: str, element: JsonPredicate, kw: dict[str, Any]
) -> str:
    kind = element.kind
    assert kind is not None
    gate = f"JSON_TYPE({extract}) {_MARIADB_TYPES[kind]}"
    if kind == "null":
        return f"({gate})"
    if kind == "string":
        # JSON_VALUE decodes escapes; the binary NO PAD collation compares code points exactly
        # (the column's utf8mb4_bin pads trailing spaces, the connection's collation folds case).
        bound = render_bind(compiler, element.raw, kw)
        return f"({gate} AND JSON_VALUE({doc}, {lit}) COLLATE {_binary_collation(compiler.dialect)} = {bound})"
    # JSON_EQUALS is type-faithful (true != 1, 1 = 1.0, objects order-free). In a WHERE clause
    # MariaDB 10.11 treats JSON_EQUALS(NULL, x) as true: always test IS TRUE.
    return f"({gate} AND JSON_EQUALS({extract}, {render_bind(compiler, element.json, kw)}) IS TRUE)"


def _index_prefilter(compiler: SQLCompiler, element: JsonPredicate, kw: dict[str, Any]) -> str | None:
    """The condition on the declared path's generated column that its index serves (a necessary one)."""
    spec = element.index
    if spec is None or element.predicate not in ("eq", "range"):
        return None
    gcol = _generated(compiler, element, spec.column_name, kw)
    if spec.kind == "string":
        # The column holds the first STRING_PREFIX code points: compare prefixes, recheck exactly.
        op = {"=": "=", ">": ">=", ">=": ">=", "<": "<=", "<=": "<="}[element.sql_op]
        return f"{gcol} {op} {render_bind(compiler, element.prefix, kw)}"
    return f"{gcol} {element.sql_op} {render_bind(compiler, element.raw, kw)}"


def _mariadb(compiler: SQLCompiler, doc: str, element: JsonPredicate, kw: dict[str, Any]) -> str:
    lit = sql_literal(compiler, dollar_path(element.keys))
    extract = f"JSON_EXTRACT({doc}, {lit})"
    if element.predicate == "exists":
        return f"({extract} IS NOT NULL)"
    if element.predicate == "contains":
        table_path = sql_literal(compiler, dollar_path(element.keys) + "[*]")
        item_path = f"CONCAT({sql_literal(compiler, dollar_path(element.keys) + '[')}, jt.i - 1, ']')"
        inner = _scalar_eq(compiler, doc, item_path, f"JSON_EXTRACT({doc}, {item_path})", element, kw)
        return (
            f"(JSON_TYPE({extract}) = 'ARRAY' AND EXISTS (SELECT 1 FROM JSON_TABLE({doc}, {table_path} "  # noqa: S608
            f"COLUMNS (i FOR ORDINALITY)) AS jt WHERE {inner}))"
        )
    prefilter = _index_prefilter(compiler, element, kw)
    if element.predicate == "eq":
        exact = _scalar_eq(compiler, doc, lit, extract, element, kw)
    elif element.kind == "number":
        exact = (
            f"(JSON_TYPE({extract}) IN ('INTEGER', 'DOUBLE') AND CAST(JSON_VALUE({doc}, {lit}) AS DOUBLE) "
            f"{element.sql_op} {render_bind(compiler, element.raw, kw)})"
        )
    else:
        collation = _binary_collation(compiler.dialect)
        exact = (
            f"(JSON_TYPE({extract}) = 'STRING' AND JSON_VALUE({doc}, {lit}) COLLATE {collation} "
            f"{element.sql_op} {render_bind(compiler, element.raw, kw)})"
        )
    return exact if prefilter is None else f"({prefilter} AND {exact})"


def _mysql8(compiler: SQLCompiler, doc: str, element: JsonPredicate, kw: dict[str, Any]) -> str:
    # MySQL 8's JSON comparator is type-faithful (read, not run here: see the module docstring).
    lit = sql_literal(compiler, dollar_path(element.keys))
    extract = f"JSON_EXTRACT({doc}, {lit})"
    if element.predicate == "exists":
        return f"({extract} IS NOT NULL)"
    as_json = f"CAST({render_bind(compiler, element.json, kw)} AS JSON)"
    if element.predicate == "contains":
        return f"(JSON_TYPE({extract}) = 'ARRAY' AND {as_json} MEMBER OF ({extract}))"
    if element.predicate == "eq":
        return f"({extract} = {as_json})"
    gate = "IN ('INTEGER', 'UNSIGNED INTEGER', 'DOUBLE', 'DECIMAL')" if element.kind == "number" else "= 'STRING'"
    return f"(JSON_TYPE({extract}) {gate} AND {extract} {element.sql_op} {as_json})"


@compiles(JsonPredicate, "mysql")
@compiles(JsonPredicate, "mariadb")
def _compile_json_predicate(element: JsonPredicate, compiler: SQLCompiler, **kw: Any) -> str:
    doc = compiler.process(element.column, **kw)
    if _is_mariadb(compiler.dialect):
        return _mariadb(compiler, doc, element, kw)
    return _mysql8(compiler, doc, element, kw)


@compiles(JsonSortKey, "mysql")
@compiles(JsonSortKey, "mariadb")
def _compile_sort_key(element: JsonSortKey, compiler: SQLCompiler, **kw: Any) -> str:
    doc = compiler.process(element.column, **kw)
    lit = sql_literal(compiler, dollar_path(element.keys))
    jtype = f"JSON_TYPE(JSON_EXTRACT({doc}, {lit}))"
    value = f"JSON_VALUE({doc}, {lit})"
    if element.part == "rank":
        return (
            f"(CASE {jtype} WHEN 'NULL' THEN 1 WHEN 'BOOLEAN' THEN (CASE WHEN {value} = '1' THEN 3 ELSE 2 END) "
            "WHEN 'INTEGER' THEN 4 WHEN 'DOUBLE' THEN 4 WHEN 'UNSIGNED INTEGER' THEN 4 WHEN 'DECIMAL' THEN 4 "
            "WHEN 'STRING' THEN 5 WHEN 'ARRAY' THEN 6 WHEN 'OBJECT' THEN 7 ELSE 0 END)"
        )
    if element.part == "num":
        numeric = "('INTEGER', 'DOUBLE', 'UNSIGNED INTEGER', 'DECIMAL')"
        return f"(CASE WHEN {jtype} IN {numeric} THEN CAST({value} AS DOUBLE) ELSE 0 END)"
    return f"(CASE WHEN {jtype} = 'STRING' THEN {value} ELSE '' END COLLATE {_binary_collation(compiler.dialect)})"


def _binary_collation(dialect: Dialect) -> str:
    return "utf8mb4_nopad_bin" if _is_mariadb(dialect) else "utf8mb4_0900_bin"


@compiles(CodePointText, "mysql")
@compiles(CodePointText, "mariadb")
def _compile_code_point_text(element: CodePointText, compiler: SQLCompiler, **kw: Any) -> str:
    return f"({compiler.process(element.expr, **kw)} COLLATE {_binary_collation(compiler.dialect)})"


@functools.cache
def _positions(sessions: Table) -> Any:
    """``INSERT ... VALUES (..., LAST_INSERT_ID(:n)) ON DUPLICATE KEY UPDATE last_seq =
    LAST_INSERT_ID(last_seq + VALUES(last_seq))``: creates or bumps the row, new value as the insert id."""
    from sqlalchemy import bindparam, func
    from sqlalchemy.dialects.mysql import insert

    stmt = insert(sessions).values(
        namespace=bindparam("p_ns"),
        session_id=bindparam("p_sid"),
        without_session=bindparam("p_none"),
        last_seq=func.last_insert_id(bindparam("p_n", type_=sessions.c.last_seq.type)),
    )
    return stmt.on_duplicate_key_update(last_seq=func.last_insert_id(sessions.c.last_seq + stmt.inserted.last_seq))


def _socket(driver: Any) -> int | None:
    """The file descriptor of a pymysql or aiomysql connection's socket; None when closed, or when the
    driver holds data read from it that nobody asked for (aiomysql's stream reader)."""
    sock = getattr(driver, "_sock", None)  # pymysql's
    if sock is not None:
        return int(sock.fileno())
    reader, writer = getattr(driver, "_reader", None), getattr(driver, "_writer", None)
    if reader is None or writer is None or reader.at_eof() or getattr(reader, "_buffer", b""):
        return None
    transport_socket = writer.get_extra_info("socket")
    return None if transport_socket is None else int(transport_socket.fileno())


_BEGIN = "START TRANSACTION"
_COMMIT = "COMMIT"
#: The UPDATE's row count, kept for the statements after it in a script (`_update_script`).
_KEEP_WRITTEN = "SET @memstate_written = ROW_COUNT()"


def _written() -> Any:
    from sqlalchemy import literal_column

    return literal_column("@memstate_written") == literal_column("1")


def _entry(log: Table, in_session: bool, guarded: bool) -> Any:
    """``INSERT INTO tx (...) VALUES (:uuid, ..., LAST_INSERT_ID() | NULL)``: a log entry from parameters
    named after its columns, at the position the statement before it made the insert id (`_positions`).
    `guarded`: ``INSERT ... SELECT ... FROM DUAL WHERE @memstate_written = 1`` instead."""
    from sqlalchemy import bindparam, func, insert, null, select

    names = [c.name for c in log.c if c.name not in ("seq", "session_seq")]
    position = func.last_insert_id() if in_session else null()
    if not guarded:
        values: dict[str, Any] = {name: bindparam(name, type_=log.c[name].type) for name in names}
        return insert(log).values({**values, "session_seq": position})
    rows = select(*(bindparam(name, type_=log.c[name].type) for name in names), position).where(_written())
    return insert(log).from_select([*names, "session_seq"], rows)


def _guarded_positions(sessions: Table) -> Any:
    """`_positions` as ``INSERT ... SELECT ... FROM DUAL WHERE @memstate_written = 1``."""
    from sqlalchemy import bindparam, func, select
    from sqlalchemy.dialects.mysql import insert

    c = sessions.c
    rows = select(
        bindparam("p_ns", type_=c.namespace.type),
        bindparam("p_sid", type_=c.session_id.type),
        bindparam("p_none", type_=c.without_session.type),
        func.last_insert_id(bindparam("p_n", type_=c.last_seq.type)),
    ).where(_written())
    stmt = insert(sessions).from_select(["namespace", "session_id", "without_session", "last_seq"], rows)
    return stmt.on_duplicate_key_update(last_seq=func.last_insert_id(c.last_seq + stmt.inserted.last_seq))


@functools.cache
def _insert_script(facts: Table, log: Table, sessions: Table, in_session: bool) -> Script:
    """``START TRANSACTION; INSERT INTO facts ...; [INSERT INTO sessions ... (the position);] INSERT INTO tx
    ...; COMMIT``: a new fact, its position and its entry in one round trip. A taken id fails the INSERT
    with a duplicate key, and the server runs nothing after it."""
    from sqlalchemy import bindparam, insert

    row = insert(facts).values({c.name: bindparam("f_" + c.name, type_=c.type) for c in facts.c})
    position = (_positions(sessions),) if in_session else ()
    return Script((_BEGIN, row, *position, _entry(log, in_session, guarded=False), _COMMIT), answer=1)


@functools.cache
def _update_script(facts: Table, log: Table, sessions: Table, in_session: bool, allow_immutable: bool) -> Script:
    """``START TRANSACTION; UPDATE facts ... WHERE version = :w_version; SET @memstate_written = ROW_COUNT();
    [INSERT INTO sessions ... WHERE @memstate_written = 1;] INSERT INTO tx ... WHERE @memstate_written = 1;
    COMMIT``: the versioned write of a fact over its row, its position and its entry in one round trip,
    the entry only when the UPDATE matched (a transaction that wrote nothing commits otherwise)."""
    position = (_guarded_positions(sessions),) if in_session else ()
    written = versioned_update(facts, allow_immutable)
    parts = (_BEGIN, written, _KEEP_WRITTEN, *position, _entry(log, in_session, guarded=True), _COMMIT)
    return Script(parts, answer=1)
