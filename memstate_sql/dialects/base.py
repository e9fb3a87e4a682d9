"""The interface each database module implements."""

from __future__ import annotations

import enum
import hashlib
import json
import select
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import JSON, ColumnElement, Connection, DateTime, Dialect, Engine, FromClause, Table
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.visitors import InternalTraversal
from sqlalchemy.types import String, TypeEngine

from memstate_sql.errors import MigrationLockTimeout, ValidationFailed

T = TypeVar("T")

if TYPE_CHECKING:
    from memstate_sql.indexes import IndexedPath


class ErrorKind(enum.Enum):
    """How the unit of work treats a database error."""

    RETRY = "retry"  # deadlock, serialization failure, lock wait timeout, busy database
    UNIQUE = "unique"  # unique/primary key violation: a concurrent writer won a race
    DISCONNECT = "disconnect"  # connection lost (e.g. the server restarted)
    OTHER = "other"


#: Key of a held connection's ``info``: the BEGIN statement of its transactions (`DialectSupport.prepare_held`).
HELD_BEGIN = "memstate_held_begin"


def json_label(key: str) -> str:
    """A JSON-path member label: the key as a JSON string literal (escapes quotes, dots...)."""
    return json.dumps(key, ensure_ascii=False)


def sql_literal(compiler: SQLCompiler, text: str) -> str:
    """`text` as a SQL string literal, escaped by the dialect's own literal renderer.

    A positional statement whose dialect does not double a literal's ``%`` (SQLite's qmark) gets its
    ``?`` placeholders from SQLAlchemy's internal ``%(name)s`` marks, found by pattern: a literal
    holding ``%(q0)s`` would be taken for one. There each ``%`` is spelled ``char(37)`` instead."""
    dialect = compiler.dialect
    if "%" in text and dialect.positional and not dialect.identifier_preparer._double_percents:
        parts = (str(compiler.render_literal_value(part, String())) for part in text.split("%"))
        return "(" + " || char(37) || ".join(parts) + ")"
    return str(compiler.render_literal_value(text, String()))


def ddl_literal(conn: Connection, text: str) -> str:
    """`text` as the same SQL literal the filter compiler renders (index expressions must match it)."""
    return sql_literal(conn.dialect.statement_compiler(conn.dialect, None), text)


def ddl_names(conn: Connection, table: Table, index: str) -> tuple[str, str]:
    """(quoted table, quoted index name) for DDL."""
    preparer = conn.dialect.identifier_preparer
    return preparer.format_table(table), preparer.quote(index)


@dataclass(frozen=True)
class NearestRequest:
    """A top-k vector search a database may answer itself (`DialectSupport.nearest`).

    `vectors`: the vectors table; `source`: it joined to the live facts it belongs to (same namespace,
    id and version); `where`: the namespace, dimension and the store's filters over `source`; `query`:
    the query vector (`dim` floats); `limit`: k; `score_threshold`: the lowest cosine similarity kept;
    `approximate`: whether an approximate index may answer (``VectorIndex(ann=True)``)."""

    vectors: Table
    source: FromClause
    where: ColumnElement[bool]
    query: Sequence[float]
    dim: int
    limit: int
    score_threshold: float | None
    approximate: bool = False


class Unindexed(ColumnElement[Any]):
    """A column, which the query planner is not to search through an index (where it has a spelling
    for that: SQLite's unary ``+``; elsewhere the column as is), so that another term of the WHERE
    clause (a range on the primary key, say) picks the access path."""

    __visit_name__ = "memstate_unindexed"
    inherit_cache = True
    _traverse_internals = [("column", InternalTraversal.dp_clauseelement)]

    def __init__(self, column: ColumnElement[Any]):
        self.column = column
        self.type = column.type


@compiles(Unindexed)
def _compile_unindexed(element: Unindexed, compiler: SQLCompiler, **kw: Any) -> str:
    return str(compiler.process(element.column, **kw))


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: its statements overload ==
class Script:
    """Statements sent as one text in one round trip, run by the server in order until one fails (MySQL's
    multi-statement protocol; `DialectSupport.scripted_writes`). `parts`: SQLAlchemy statements, or SQL
    text with no parameters (``START TRANSACTION``, ``COMMIT``); `answer`: the index of the part whose row
    count the script answers with. A script that writes opens and commits its own transaction: a failing
    part leaves that transaction open, and `on_script` rolls it back."""

    parts: tuple[Any, ...]
    answer: int


def socket_idle(fd: int) -> bool:
    """Whether nothing is waiting to be read on the socket `fd`, without a round trip: a connection idle
    between operations has nothing unread, unless the server has closed it, restarted or ended the
    session (an error packet, the end of file). A zero-timeout ``poll()``."""
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLPRI)
    return not poller.poll(0)


class DialectSupport:
    """Default behaviour; subclasses override what their database does differently."""

    name = "generic"
    #: Whether `SELECT ... FOR UPDATE` is meaningful (SQLite serialises writers instead).
    row_locks = True
    #: Whether DDL takes part in transactions (so a migration can run inside a caller's transaction).
    transactional_ddl = True
    #: Whether Alembic must rebuild tables to alter them ("batch mode", SQLite).
    batch_alter = False
    #: Whether a one-statement read runs on an autocommit connection (no BEGIN/COMMIT round trips):
    #: only where switching is free on the client (psycopg); pymysql's switch costs round trips itself,
    #: SQLite's driver opens no transaction for a SELECT anyway.
    autocommit_reads = False
    #: Whether a failed INSERT (a duplicate key) undoes that statement alone and leaves the transaction
    #: usable (InnoDB; PostgreSQL aborts the whole transaction, and SQLite has ON CONFLICT anyway): a new
    #: fact's row is then inserted without reading first (`Repository.insert_if_absent`).
    failed_insert_keeps_transaction = False
    #: Whether a write of one fact with its log entry (and session position) is one self-contained
    #: statement (`insert_logged_statement`, `update_logged_statement`): an operation that needs no other
    #: statement then runs it alone in autocommit, with no BEGIN/COMMIT round trips (`memstate_sql.uow`).
    one_statement_writes = False
    #: Whether such a write is a script instead (`Script`: several statements in one round trip, which opens
    #: and commits its own transaction; `insert_logged_script`, `update_logged_script`): it then runs alone
    #: on any connection `can_write_alone` admits, in autocommit or not (MySQL's multi-statement text).
    scripted_writes = False
    #: The sync driver an asyncio storage swaps for `async_driver` (``mysql+pymysql://`` → ``aiomysql``).
    sync_driver = ""
    #: The asyncio driver `AsyncSQLStorage` uses for a sync URL (installed by ``memstate-sql[async]``).
    async_driver = ""
    #: Asyncio drivers SQLAlchemy has for this database: a URL that names one is used as is.
    async_drivers: frozenset[str] = frozenset()

    def async_url(self, url: URL) -> URL:
        """`url` with this database's asyncio driver (``sqlite://`` → ``sqlite+aiosqlite://``).

        A URL naming an asyncio driver is kept; one naming another sync driver than
        `sync_driver` is refused (`ValidationFailed`), with the URL to write instead.
        """
        backend = url.get_backend_name()
        explicit = "+" in url.drivername
        if explicit and url.get_driver_name() in self.async_drivers:
            return url
        if explicit and url.get_driver_name() != self.sync_driver:
            raise ValidationFailed(
                f"{url.drivername!r} is not an asyncio driver; write "
                f"'{backend}+{self.async_driver}://...' (install memstate-sql[async])"
            )
        return url.set(drivername=f"{backend}+{self.async_driver}")

    #: Whether `prepare_vector_search` may create something (else a storage skips it, and its lock).
    prepares_vector_search = False

    #: Whether the column type of timestamps takes and returns aware datetimes (else naive UTC wall time).
    aware_timestamps = False

    def json_type(self, dialect: Dialect) -> TypeEngine[Any]:
        """The column type of JSON documents."""
        return JSON(none_as_null=True)

    def timestamp_type(self, dialect: Dialect) -> TypeEngine[Any]:
        """The column type of UTC timestamps with microseconds."""
        return DateTime()

    def key_type(self, dialect: Dialect, length: int) -> TypeEngine[Any]:
        """The column type of key strings (ids, types, sessions): compared exactly, code point by code point."""
        return String(length)

    @contextmanager
    def try_exclusive(self, conn: Connection, name: str) -> Iterator[bool]:
        """Inside the current transaction, try to become the only holder of the lock `name` across every
        process; yields whether it did, and releases it when the block ends. The default (SQLite, whose
        writers are serialised by the database file) always succeeds."""
        yield True

    def engine_options(self, url: URL) -> dict[str, Any]:
        """Keyword arguments for `create_engine` when memstate_sql creates the engine."""
        # No pre-ping (a round trip per checkout): a connection found dead at the first statement of an
        # operation is replaced and the operation re-run by the unit of work (`memstate_sql.uow`).
        return {}

    def pooler_options(self, url: URL, pooler: str | None) -> dict[str, Any]:
        """`create_engine` keyword arguments for a database reached through a connection pooler
        (`POOLERS`; None: a direct connection, or a session-pooling proxy). Refused where not supported."""
        pooler = check_pooler(pooler)
        if pooler is not None:
            raise ValidationFailed(
                f"pooler={pooler!r} applies to PostgreSQL (PgBouncer and other transaction-pooling proxies), "
                f"not to {self.name}"
            )
        return {}

    def migration_pooler(self, url: URL) -> str | None:
        """The ``pooler=`` setting of the short-lived engines `memstate_sql.migrations` opens from a URL:
        one that works both directly and through a pooler, where there is such a setting."""
        return None

    def pooler_hint(self, error: BaseException) -> str:
        """A sentence to add to a database error that a transaction-pooling proxy causes ('' if none)."""
        return ""

    def configure_engine(
        self, engine: Engine, *, sqlite_synchronous: str | None = None, read_your_writes: bool = False
    ) -> None:
        """Install per-connection settings on an engine that memstate_sql created (`sqlite_synchronous`:
        SQLite's durability, see `memstate_sql.dialects.sqlite.SYNCHRONOUS`; refused elsewhere;
        `read_your_writes`: a read sees every commit acknowledged before it on any node of a
        multi-primary cluster — Galera's ``wsrep_sync_wait``; a single server always does)."""
        if sqlite_synchronous is not None:
            raise ValidationFailed(f"sqlite_synchronous applies to SQLite only, not to {self.name}")

    def prepare_held(self, conn: Connection) -> None:
        """Before a connection becomes a held autocommit one (`memstate_sql.readers`): note what the
        driver would begin its transactions with. Here nothing: the transaction isolation level the
        engine was given is a session setting, which autocommit leaves as it is (MySQL)."""

    def begin_held(self, conn: Connection, write: bool) -> None:
        """Open a unit of work's transaction on a held autocommit connection (`memstate_sql.readers`),
        where the driver opens none by itself: the BEGIN the driver would send outside autocommit (pymysql
        sends none, the server opens the transaction at the first statement), which the driver's commit()
        and rollback() end."""
        send_driver_sql(conn, conn.connection.info.get(HELD_BEGIN, "BEGIN"))
        if write:
            self.begin_write(conn)

    def begin_write(self, conn: Connection) -> None:
        """Called as the first statement of a write transaction memstate_sql owns."""

    def can_write_alone(self, conn: Connection) -> bool:
        """Whether a one-statement write (`one_statement_writes`) may run alone in autocommit on this held
        connection: it runs at the isolation level the engine's transactions have, and the connection,
        idle since its last operation, is still open as far as the client can tell without a round trip
        (nothing unread on its socket: a server that closed it, restarted or terminated the session, has
        sent an error or an end of file). If the connection breaks under a lone statement, that statement
        may or may not have committed, whereas a transaction's first statement breaking leaves nothing
        applied (retried on a new connection): a connection already dead is found this way instead,
        and the operation runs as a transaction. Here False: never."""
        return False

    def begin_snapshot(self, conn: Connection) -> None:
        """Called as the first statement of a read transaction that must see one consistent
        snapshot across many statements (export)."""
        conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")

    def classify(self, exc: BaseException) -> ErrorKind:
        return ErrorKind.OTHER

    def ensure_schema(self, conn: Connection, schema: str) -> None:
        """Create a schema (namespace) for the tables if the database has such a thing and it is missing."""

    @contextmanager
    def migration_lock(
        self, conn: Connection, name: str, timeout: float, sleep: Callable[[float], Any]
    ) -> Iterator[None]:
        """Hold the database-wide migration lock `name` on `conn` for the block.

        Waits at most `timeout` seconds (`MigrationLockTimeout`). When `conn` is not
        in a transaction on entry, the block is left with no transaction open (work
        done in it committed, or rolled back if it raised); inside a caller's
        transaction the caller's transaction is never ended.
        """
        yield

    def concurrent_ddl(self, error: BaseException) -> bool:
        """Whether a DDL error means another process is migrating at the same time (MySQL family:
        the object exists already, or a Galera TOI conflict): wait for it and look again."""
        return False

    def waiting_out_concurrent_ddl(
        self, run: Callable[[], T], timeout: float, what: str, sleep: Callable[[float], Any]
    ) -> T:
        """Run `run`; a DDL error that means another process is changing the schema at the same time
        (`concurrent_ddl`) is waited out: `sleep` with a doubling delay, then run again (which looks at
        the schema again under its lock), until `timeout` seconds have passed (`MigrationLockTimeout`,
        saying `what` was being done)."""
        deadline = time.monotonic() + timeout
        delay = 0.1
        while True:
            try:
                return run()
            except DBAPIError as err:
                if not self.concurrent_ddl(err):
                    raise
                if time.monotonic() >= deadline:
                    raise MigrationLockTimeout(
                        f"{what}: another process kept changing the schema at the same time for {timeout:g}s "
                        f"({err.orig})"
                    ) from err
                sleep(delay)
                delay = min(delay * 2, 2.0)

    def create_path_index(self, conn: Connection, facts: Table, spec: IndexedPath) -> None:
        """Create the index of a declared payload path if it does not exist (`memstate_sql.indexes`)."""
        raise NotImplementedError

    def writers_excluded(self, conn: Connection, *, rows_locked: bool) -> bool:
        """Whether, inside the write transaction on `conn`, no other transaction can have changed the fact
        rows it read earlier (and logged that change) since it read them. `rows_locked`: each of those
        rows was present and read with ``FOR UPDATE`` (a row that was absent has no lock to wait for). A
        rollback reads the log once more before it commits unless this holds. Default: row locks keep
        every other writer off the locked rows until this transaction ends."""
        return rows_locked and self.row_locks

    def append_at_next_position(self, log: Table, sessions: Table) -> Any:
        """A statement that takes the session's next position (as `positions_statement` with count 1) and
        inserts one log entry at it, in one round trip; None where the database cannot (two statements
        then). Parameters: ``p_ns``, ``p_sid``, ``p_none``, ``p_n`` (1) and the log columns by name.
        Only for entries of a session: an entry without a session is a plain INSERT with no position
        (no sessions row, no lock), so writers without a session are not serialised."""
        return None

    def append_after_statement(self, log: Table, sessions: Table, first: Any, in_session: bool) -> Any:
        """A statement that runs the data-modifying statement `first` (an UPDATE that returns nothing, its
        parameters its own) and then appends one log entry, in one round trip: with `in_session`, at the
        session's next position (as `append_at_next_position`, parameters ``p_ns``, ``p_sid``, ``p_none``,
        ``p_n``), else without one; the entry's columns are parameters named ``e_<column>``. None where the
        database cannot (two statements then)."""
        return None

    def insert_absent_statement(self, facts: Table) -> Any:
        """An INSERT of one fact row (parameters: its columns by name) that inserts nothing, with row count
        0, when the row's primary key (namespace, id) is taken, and fails like a plain INSERT on any
        other conflict; None where the database has no such statement (MySQL's ``INSERT IGNORE`` also
        ignores errors that are not conflicts): the commit then reads the row under lock first."""
        return None

    def rows_cursor(self, dbapi_connection: Any) -> tuple[Any, str | None]:
        """A DB-API cursor for a multi-row statement with thousands of parameters (`Repository._send_many`),
        and the paramstyle to write its placeholders in (None: the driver's own). Default: the
        connection's ordinary cursor."""
        return dbapi_connection.cursor(), None

    def insert_logged_statement(self, facts: Table, log: Table, sessions: Table, in_session: bool) -> Any:
        """One statement that inserts a new fact's row as `insert_absent_statement` does and, only when it
        was inserted, its log entry (at its session's next position when `in_session`, as
        `append_at_next_position`): row count 1 when both were written, 0 when the id was taken and
        nothing was. Parameters: the fact's columns prefixed ``f_``, the log columns by name and, in a
        session, ``p_ns``, ``p_sid``, ``p_none``, ``p_n``. None where the database cannot (two
        statements then)."""
        return None

    def update_logged_statement(
        self, facts: Table, log: Table, sessions: Table, in_session: bool, allow_immutable: bool
    ) -> Any:
        """One statement that writes a fact over its row as the versioned UPDATE does (``w_ns``, ``w_id``,
        ``w_version``; unless `allow_immutable`, never over an immutable row) and, only when it matched,
        its log entry (as `insert_logged_statement`): row count 1 when both were written, 0 when nothing
        was. Parameters: the written columns prefixed ``f_``, the log columns by name and, in a session,
        ``p_ns``, ``p_sid``, ``p_none``, ``p_n``. None where the database cannot (two statements then)."""
        return None

    def insert_logged_script(self, facts: Table, log: Table, sessions: Table, in_session: bool) -> Script | None:
        """Where `scripted_writes`: what `insert_logged_statement` does, as a `Script` that opens and commits
        its own transaction; the parameters are the same. A taken id fails it with a duplicate key (nothing
        written, the transaction rolled back). None: no script here."""
        return None

    def update_logged_script(
        self, facts: Table, log: Table, sessions: Table, in_session: bool, allow_immutable: bool
    ) -> Script | None:
        """Where `scripted_writes`: what `update_logged_statement` does, as a `Script` that opens and
        commits its own transaction, the entry written only when the UPDATE matched; its answer is the
        UPDATE's row count. Same parameters. None: no script here."""
        return None

    def nearest(self, conn: Connection, request: NearestRequest) -> list[tuple[str, float]] | None:
        """The `request.limit` best ``(fact id, cosine similarity)`` of a vector search computed by the
        database (best first, ties by fact id), with the same answer as the exact scan of
        `memstate_sql.vectors.scan`; None where this database cannot compute it here (no vector
        extension), and the exact scan runs instead."""
        return None

    def nearest_status(self, conn: Connection, approximate: bool = False) -> tuple[bool, str]:
        """Whether `nearest` computes searches in the database on this connection (`approximate`: as
        `NearestRequest.approximate`): ``(True, what computes them)``, or ``(False, why not)`` (the exact
        scan runs). For `SQLStorage.explain_search` and ``VectorIndex(in_database="required")``."""
        return False, f"{self.name} has no in-database vector search here"

    def prepare_vector_search(self, conn: Connection, vectors: Table, dim: int) -> None:
        """Create what `nearest` needs for the vectors of dimension `dim` of this table, if this database
        can serve them (pgvector's HNSW index on PostgreSQL); idempotent, run once per storage whose
        `VectorIndex` allows it (``ann=True``), under the prefix's migration lock. Default: nothing."""

    #: Whether the new last position `positions_statement` takes is the statement's insert id (the
    #: cursor's ``lastrowid``) rather than its one row's one column.
    positions_in_insert_id = False

    def positions_statement(self, sessions: Table) -> Any:
        """The statement that adds ``:p_n`` to the last log position of a session (parameters ``p_ns``,
        ``p_sid``, ``p_none``: namespace, session id, and false, the column that once told the log of
        entries without a session apart), creating its row at 0 first, and gives the new last position
        (its one row, or its insert id: `positions_in_insert_id`); `Repository.reserve_positions` runs it
        on the fast path. Never run for entries without a session (they take none). The row stays
        write-locked until the transaction ends: a session's writers take their positions one
        transaction after the other, on every engine, and on Galera the row is part of the write set,
        so two nodes cannot hand out the same position (certification fails one)."""
        raise NotImplementedError


def upsert_positions(insert: Callable[[Table], Any], sessions: Table) -> Any:
    """``INSERT ... ON CONFLICT DO UPDATE SET last_seq = last_seq + :n RETURNING last_seq`` (PostgreSQL,
    SQLite >= 3.35): one statement that creates or bumps a session's row and returns its new value."""
    from sqlalchemy import bindparam

    stmt = insert(sessions).values(
        namespace=bindparam("p_ns"),
        session_id=bindparam("p_sid"),
        without_session=bindparam("p_none"),
        last_seq=bindparam("p_n"),
    )
    c = sessions.c
    return stmt.on_conflict_do_update(
        index_elements=[c.namespace, c.session_id, c.without_session],
        set_={"last_seq": c.last_seq + stmt.excluded.last_seq},
    ).returning(c.last_seq)


#: The columns a versioned UPDATE writes (`Repository._update_params`): all but the key.
UPDATED_COLUMNS = (
    "type", "payload", "session_id", "source", "ts", "version", "singleton", "singleton_slot", "immutable",
    "expires_at", "document",
)  # fmt: skip


def versioned_update(facts: Table, allow_immutable: bool) -> Any:
    """``UPDATE facts SET ... WHERE namespace = :w_ns AND id = :w_id AND version = :w_version [AND NOT
    immutable]``, the written columns' parameters prefixed ``f_``: the write of a fact over its row at the
    version read (`DialectSupport.update_logged_statement`, `update_logged_script`)."""
    from sqlalchemy import bindparam, update

    c = facts.c
    where = (c.namespace == bindparam("w_ns")) & (c.id == bindparam("w_id")) & (c.version == bindparam("w_version"))
    if not allow_immutable:
        where = where & c.immutable.is_(False)
    values = {name: bindparam("f_" + name, type_=c[name].type) for name in UPDATED_COLUMNS}
    # A statement is compiled for its parameter names (`Repository._send`), among them a log entry's
    # ``namespace``, which SQLAlchemy would otherwise add to this SET: set it, to the row's own namespace.
    values["namespace"] = bindparam("w_ns", type_=c.namespace.type)
    return update(facts).where(where).values(values)


def insert_ignoring_key(insert: Callable[[Table], Any], facts: Table) -> Any:
    """``INSERT ... ON CONFLICT (namespace, id) DO NOTHING`` (PostgreSQL, SQLite): the fact row's INSERT
    that writes nothing when the id is taken (`DialectSupport.insert_absent_statement`). Its row
    count is kept for SQLAlchemy's own execution too (``preserve_rowcount``)."""
    c = facts.c
    stmt = insert(facts).on_conflict_do_nothing(index_elements=[c.namespace, c.id])
    return stmt.execution_options(preserve_rowcount=True)


#: The table of the cluster-wide migration lock on a Galera cluster (a leased row, `dialects.mysql`),
#: shared by every prefix of a database; host migration filters leave it alone.
LOCK_TABLE = "memstate_sql_lock"

#: Values of the storages' ``pooler=`` option: ``"transaction"`` is a proxy that hands the server
#: connection to another client after every transaction (PgBouncer ``pool_mode = transaction``).
POOLERS = ("transaction",)


def traced(conn: Connection) -> bool:
    """Whether a statement on `conn` must go through SQLAlchemy's execution layer: ``echo`` is on, or an
    execution listener is attached (instrumentation, tests). Otherwise the hot statements are sent on the
    DB-API cursor (`memstate_sql.repository`), which costs less than the statement on SQLite."""
    if conn._echo:
        return True
    if not (conn._has_events or conn.engine._has_events):  # no listener was ever added
        return False
    d = conn.dispatch
    return bool(d.before_execute or d.after_execute or d.before_cursor_execute or d.after_cursor_execute)


def send_driver_sql(conn: Connection, sql: str) -> None:
    """Run a parameterless statement that returns no rows (SQLite's ``BEGIN IMMEDIATE``) on the DB-API
    cursor of `conn` unless `traced`; its errors go through SQLAlchemy's handling as `exec_driver_sql`'s do."""
    if traced(conn):
        conn.exec_driver_sql(sql)
    else:
        on_cursor(conn, sql)


def on_cursor(
    conn: Connection,
    sql: str | Callable[[str | None], str],
    args: Any = None,
    open_cursor: Callable[[Any], tuple[Any, str | None]] | None = None,
    *,
    inserted_id: bool = False,
) -> tuple[list[Any], int]:
    """Run `sql` (with `args`, if any) on a DB-API cursor of `conn`'s connection: its rows (none for a
    statement that returns none) and its row count (with `inserted_id`: its insert id instead, the
    cursor's ``lastrowid``). `open_cursor(dbapi_connection)` gives the cursor and
    the paramstyle it takes, and `sql` is then a function of that paramstyle (None: the driver's own).
    The cursor is opened inside (a closed connection fails there too), and every error goes through
    SQLAlchemy's own handling, as `Connection.execute`'s do: wrapped, a lost connection invalidating the
    pool."""
    text = sql if isinstance(sql, str) else ""
    cursor: Any = None
    try:
        if open_cursor is None:
            cursor = conn.connection.cursor()
        else:
            cursor, style = open_cursor(conn.connection)
        if not isinstance(sql, str):
            text = sql(style)
        if args is None:
            cursor.execute(text)
        else:
            cursor.execute(text, args)
        rows: list[Any] = list(cursor.fetchall()) if cursor.description is not None else []
        return rows, cursor.lastrowid if inserted_id else cursor.rowcount
    except Exception as err:
        conn._handle_dbapi_exception(err, text, args, cursor, None)
    finally:
        if cursor is not None:
            cursor.close()


def on_script(conn: Connection, sql: str, args: Any, statements: int) -> list[int]:
    """Run the text of a `Script` of `statements` statements (with `args`) on a DB-API cursor of `conn`'s
    connection: the row count of each, in order, read result by result (``nextset()``). A failing
    statement ends the script there with its transaction open: that transaction is rolled back, then the
    error is raised through SQLAlchemy's handling (as `on_cursor`'s). With listeners or echo on
    (`traced`), the text goes through SQLAlchemy's cursor execution, so that they see it as the one
    statement it is sent as."""
    cursor: Any = None
    try:
        cursor = conn.connection.cursor()
        if traced(conn):
            conn._cursor_execute(cursor, sql, args)
        else:
            cursor.execute(sql, args)
        counts = [cursor.rowcount]
        for _ in range(statements - 1):  # SQLAlchemy's asyncio cursors answer None to every nextset()
            cursor.nextset()
            counts.append(cursor.rowcount)
        return counts
    except DBAPIError:  # already through SQLAlchemy's handling (`Connection._cursor_execute`)
        _undo(conn)
        raise
    except Exception as err:
        _undo(conn)
        conn._handle_dbapi_exception(err, sql, args, cursor, None)
        raise  # pragma: no cover - _handle_dbapi_exception raises
    finally:
        if cursor is not None:
            with suppress(Exception):  # a connection lost under the script: its error is the one raised
                cursor.close()


def _undo(conn: Connection) -> None:
    """Roll back what a failed script left open on `conn` (nothing to do on a connection SQLAlchemy has
    invalidated, or one that breaks now: the server ends its transaction with it)."""
    if conn.invalidated:
        return
    with suppress(Exception):
        conn.connection.dbapi_connection.rollback()  # type: ignore[union-attr]


def check_pooler(pooler: str | None) -> str | None:
    """A valid ``pooler=`` value (`POOLERS`) or None."""
    if pooler is None:
        return None
    if not isinstance(pooler, str) or pooler.lower() not in POOLERS:
        raise ValidationFailed(f"pooler must be None or one of {', '.join(map(repr, POOLERS))}, not {pooler!r}")
    return pooler.lower()


def merge_options(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`create_engine` options with `extra` over `base`; their ``connect_args`` are merged, not replaced."""
    merged = {**base, **extra}
    if "connect_args" in base and "connect_args" in extra:
        merged["connect_args"] = {**base["connect_args"], **extra["connect_args"]}
    return merged


def lock_key(name: str) -> int:
    """A stable signed 64-bit key for a lock name (PostgreSQL advisory locks)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def lock_name(name: str, limit: int = 64) -> str:
    """`name`, or a digest of it when it is longer than `limit` (MySQL's GET_LOCK names are short)."""
    return name if len(name) <= limit else name[: limit - 17] + "_" + hashlib.sha256(name.encode()).hexdigest()[:16]


def render_bind(compiler: SQLCompiler, bind: Any, kw: dict[str, Any]) -> str:
    """Render one of a `JsonPredicate`'s prepared bound parameters."""
    if bind is None:  # pragma: no cover - a compiler asking for a bind its predicate does not have
        raise AssertionError("missing bound parameter")
    return str(compiler.process(bind, **kw))
