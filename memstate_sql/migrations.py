"""The schema's Alembic migrations: run them, check them, embed them in a host application.

The revisions are the only source of memstate_sql's tables. They live in the
repository's top-level ``alembic/`` directory and are shipped inside the
installed package (as ``memstate_sql/_alembic``), so `migrate` works after a
plain ``pip install`` from any working directory.

Every store has its own table prefix (and, on PostgreSQL, optionally its own
schema); the same revisions create any prefix's tables. Each prefix keeps its
revision in its own version table, ``<prefix>_alembic_version``: a host
application's ``alembic_version`` is never created, read or written.

`migrate` is idempotent and safe when several processes start at once: it
holds a database lock while it runs (PostgreSQL transaction-level advisory lock,
MySQL/MariaDB ``GET_LOCK`` — on a Galera node also a leased row of ``memstate_sql_lock``,
since ``GET_LOCK`` is node-local there —, SQLite's write lock through ``BEGIN
IMMEDIATE``), waiting at most ``lock_timeout`` seconds for it
(`MigrationLockTimeout`). DDL errors caused by another process migrating at the
same time are waited out, not raised. On PostgreSQL and SQLite the whole upgrade
is one transaction, which holds the lock (nothing session-scoped: it works through
PgBouncer in transaction mode); work that cannot run in a transaction goes into
a revision's ``online_prepare``, run before it. MySQL/MariaDB cannot roll DDL
back: every revision's steps check what exists first, and a state left by a
process killed during its migration is completed under the lock by the next run
(`resumable`).

For a host's own Alembic environment: `VERSION_TABLE`, `include_name` and
`include_object` (or `host_filters` for other prefixes) keep its autogenerate
away from memstate_sql's tables; ``memstate_sql.metadata`` is the MetaData.
"""

from __future__ import annotations

import enum
import functools
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Connection, Engine, exc, inspect, make_url
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool
from sqlalchemy.sql.schema import SchemaItem

from memstate_sql.dialects import engine_for, pgvector, support_for
from memstate_sql.dialects.base import LOCK_TABLE
from memstate_sql.errors import SchemaVersionError, StorageError, ValidationFailed
from memstate_sql.models import DEFAULT_PREFIX, Models, check_prefix, exists_on, models_for
from memstate_sql.uow import default_sleep, holding

Bind = str | URL | Engine | Connection
T = TypeVar("T")

#: The version table of the default table prefix (``<prefix>_alembic_version`` in general).
VERSION_TABLE = models_for(DEFAULT_PREFIX).version_table
#: Seconds `migrate` waits for another process's migration (and for table locks) by default.
DEFAULT_LOCK_TIMEOUT = 60.0
#: What to tell people whose database needs migrating.
UPGRADE_HINT = "run `memstate-sql upgrade` (or call memstate_sql.migrate(<url or engine>))"

log = logging.getLogger("memstate_sql")

#: Alembic's `context` is module-global state: one command at a time per process (and per
#: event loop: coroutines of one thread wait for it cooperatively, see `holding`).
_ALEMBIC = threading.Lock()


def version_table(table_prefix: str = DEFAULT_PREFIX) -> str:
    """The version table of a table prefix."""
    return models_for(check_prefix(table_prefix)).version_table


# ---------------------------------------------------------------------------- scripts


def script_location() -> str:
    """The directory of the migration scripts: inside the installed package, or the repository's ``alembic/``."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "_alembic", package.parent / "alembic"):
        if (candidate / "env.py").is_file() and (candidate / "versions").is_dir():
            return str(candidate)
    raise StorageError(f"memstate_sql's migration scripts are missing next to {package} (a broken installation?)")


@functools.cache
def _scripts() -> ScriptDirectory:
    return ScriptDirectory(script_location())


def head_revision() -> str:
    """The revision this version of memstate_sql expects (the single head of its history)."""
    heads = _scripts().get_heads()
    if len(heads) != 1:
        raise StorageError(f"memstate_sql's migration history has {len(heads)} heads: {heads}")
    return heads[0]


def _known(revision: str) -> bool:
    try:
        return _scripts().get_revision(revision) is not None
    except CommandError:
        return False


# ---------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class Target:
    """The tables one migration run is about: a table prefix and an optional (PostgreSQL) schema."""

    prefix: str = DEFAULT_PREFIX
    schema: str | None = None

    @property
    def models(self) -> Models:
        return models_for(self.prefix, self.schema)

    @property
    def version_table(self) -> str:
        return self.models.version_table

    @property
    def lock_name(self) -> str:
        return f"memstate_sql.migrate:{self.schema or ''}:{self.prefix}"

    def describe(self) -> str:
        where = f" in schema {self.schema!r}" if self.schema else ""
        return f"table prefix {self.prefix!r}{where}"


def make_config(
    table_prefix: str = DEFAULT_PREFIX,
    schema: str | None = None,
    *,
    connection: Connection | None = None,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
) -> Config:
    """An Alembic `Config` for memstate_sql's scripts and one target (no ini file needed)."""
    cfg = Config()
    cfg.set_main_option("script_location", script_location())
    cfg.attributes["memstate_target"] = Target(check_prefix(table_prefix), schema)
    cfg.attributes["memstate_lock_timeout"] = float(lock_timeout)
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def _x_arguments(config: Config) -> dict[str, str]:
    x: dict[str, str] = {}
    for item in getattr(config.cmd_opts, "x", None) or []:
        key, _, value = item.partition("=")
        x[key.strip()] = value.strip()
    return x


def target(config: Config | None = None) -> Target:
    """The target of the running migration (for ``env.py`` and the revision scripts).

    Set by `make_config`; from the ``alembic`` command line it comes from
    ``-x table_prefix=... -x schema=...`` (and ``-x url=...`` overrides
    ``sqlalchemy.url``) or the ini options
    ``memstate.table_prefix`` / ``memstate.schema``.
    """
    if config is None:
        from alembic import context

        config = context.config
    found = config.attributes.get("memstate_target")
    if isinstance(found, Target):
        return found
    x = _x_arguments(config)
    prefix = x.get("table_prefix") or config.get_main_option("memstate.table_prefix") or DEFAULT_PREFIX
    schema = x.get("schema") or config.get_main_option("memstate.schema") or None
    result = Target(check_prefix(prefix), schema)
    config.attributes["memstate_target"] = result
    return result


# ---------------------------------------------------------------------------- filters


def _table_of(obj: Any, type_: str) -> Any:
    return obj if type_ == "table" else getattr(obj, "table", None)


class OwnFilters:
    """Our environment's view: only this target's tables (never the host's, never another prefix's)."""

    def __init__(self, tgt: Target, dialect_name: str) -> None:
        self.target = tgt
        self.dialect_name = dialect_name
        self.tables = {table.name for table in tgt.models.metadata.tables.values()}
        #: Indexes a storage creates at run time, per embedding dimension (pgvector's HNSW indexes).
        self.runtime_indexes = pgvector.index_name(tgt.models.vectors.name, 0)[:-1]

    def include_name(self, name: str | None, type_: str, parent_names: Any) -> bool:
        if type_ == "schema":
            return name == self.target.schema
        if type_ == "table":
            return name in self.tables
        return True

    def include_object(self, obj: SchemaItem, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
        if not reflected and not exists_on(obj, self.dialect_name):
            return False  # e.g. the PostgreSQL-only GIN index, on another database
        if reflected and compare_to is None and type_ == "index" and (name or "").startswith(self.runtime_indexes):
            return False
        table = _table_of(obj, type_)
        return table is None or table.name in self.tables


class HostFilters:
    """A host application's view: everything except memstate_sql's tables and version tables.

    Pass ``include_name`` / ``include_object`` to the host's ``context.configure``.
    """

    def __init__(self, *table_prefixes: str) -> None:
        prefixes = table_prefixes or (DEFAULT_PREFIX,)
        names: set[str] = set()
        for prefix in prefixes:
            models = models_for(check_prefix(prefix))
            names.update(table.name for table in models.metadata.tables.values())
            names.add(models.version_table)
        names.add(LOCK_TABLE)  # the cluster-wide migration lock (Galera), shared by every prefix
        self.tables = frozenset(names)

    def include_name(self, name: str | None, type_: str, parent_names: Any) -> bool:
        return not (type_ == "table" and name in self.tables)

    def include_object(self, obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
        table = _table_of(obj, type_)
        return not (table is not None and table.name in self.tables)


def host_filters(*table_prefixes: str) -> HostFilters:
    """Filters for a host's Alembic environment that ignore these prefixes' tables (default: ``memstate``)."""
    return HostFilters(*table_prefixes)


_DEFAULT_HOST_FILTERS = HostFilters()
#: Alembic ``include_name`` hook for a host's env.py: ignore the default prefix's tables.
include_name = _DEFAULT_HOST_FILTERS.include_name
#: Alembic ``include_object`` hook for a host's env.py: ignore the default prefix's tables.
include_object = _DEFAULT_HOST_FILTERS.include_object


# ---------------------------------------------------------------------------- connections


def _engine_for(url: str | URL) -> Engine:
    """A short-lived engine for one migration command (no pool kept behind it). On PostgreSQL with
    psycopg it prepares no statement server-side, so it works through a transaction-pooling proxy
    (PgBouncer) as well as directly: a migration gains nothing from prepared statements."""
    parsed = make_url(url) if isinstance(url, str) else url
    support = support_for(parsed.get_backend_name())
    options = support.engine_options(parsed)
    pool = {} if "poolclass" in options else {"poolclass": NullPool}
    return engine_for(parsed, pool, pooler=support.migration_pooler(parsed))


@contextmanager
def connection_for(bind: Any) -> Iterator[Connection]:
    """A connection for a URL, an Engine or a Connection (used as is, never closed)."""
    if isinstance(bind, Connection):
        yield bind
    elif isinstance(bind, Engine):
        with bind.connect() as conn:
            yield conn
    elif isinstance(bind, str | URL):
        engine = _engine_for(bind)
        try:
            with engine.connect() as conn:
                yield conn
        finally:
            engine.dispose()
    else:
        raise ValidationFailed(f"expected a database URL, an Engine or a Connection, not {type(bind).__name__}")


@contextmanager
def _read_only(conn: Connection) -> Iterator[Connection]:
    """Reads on `conn`; a transaction they autobegin is ended again (the caller's is left alone)."""
    was_open = conn.in_transaction()
    try:
        yield conn
    finally:
        if not was_open and conn.in_transaction():
            conn.rollback()


# ---------------------------------------------------------------------------- state


class State(enum.Enum):
    CURRENT = "current"
    MISSING = "missing"  # no version table, no tables
    BEHIND = "behind"
    AHEAD = "ahead"  # a revision this version does not know: written by a newer memstate_sql
    UNMANAGED = "unmanaged"  # our tables exist, but no version table
    INTERRUPTED = "interrupted"  # our tables exist, the version table too, but it records no revision yet


@dataclass(frozen=True)
class SchemaState:
    state: State
    current: str | None
    head: str
    target: Target

    def error(self) -> SchemaVersionError:
        where = self.target.describe()
        if self.state is State.MISSING:
            return SchemaVersionError(f"the database has no memstate_sql tables for {where}: {UPGRADE_HINT}")
        if self.state is State.BEHIND:
            return SchemaVersionError(
                f"the memstate_sql schema for {where} is at revision {self.current!r}, older than this version's "
                f"{self.head!r}: {UPGRADE_HINT}"
            )
        if self.state is State.AHEAD:
            return SchemaVersionError(
                f"the memstate_sql schema for {where} is at revision {self.current!r}, which this version of "
                f"memstate_sql does not know (its newest is {self.head!r}): the database was migrated by a newer "
                "memstate_sql; upgrade the memstate-sql package instead of running this one against it"
            )
        if self.state is State.UNMANAGED:
            return SchemaVersionError(
                f"memstate_sql tables for {where} exist but there is no version table "
                f"({self.target.version_table}): they were not created by the migrations. Check that they match "
                f"revision {self.head!r} and stamp it (`alembic -x table_prefix={self.target.prefix} stamp "
                f"{self.head}`), or move them away"
            )
        if self.state is State.INTERRUPTED:
            return SchemaVersionError(
                f"memstate_sql tables for {where} exist and the version table {self.target.version_table} exists "
                "but records no revision: a first migration was interrupted before it finished. On MySQL/MariaDB "
                f"(no transactional DDL) {UPGRADE_HINT} completes it; on a database with transactional DDL no "
                "migration leaves this state (was the version row deleted?): check that the tables match "
                f"revision {self.head!r} and stamp it, or move them away"
            )
        return SchemaVersionError(f"the memstate_sql schema for {where} is current")


def _current(conn: Connection, tgt: Target) -> str | None:
    with _read_only(conn):
        context = MigrationContext.configure(
            conn, opts={"version_table": tgt.version_table, "version_table_schema": tgt.schema}
        )
        return context.get_current_revision()


def schema_state(conn: Connection, table_prefix: str = DEFAULT_PREFIX, schema: str | None = None) -> SchemaState:
    """Where the database stands for a target, read on `conn` only (no other connection is opened)."""
    tgt = Target(check_prefix(table_prefix), schema)
    head = head_revision()
    current = _current(conn, tgt)
    if current == head:
        state = State.CURRENT
    elif current is None:
        with _read_only(conn):
            insp = inspect(conn)
            # The tables of revision 1 (facts first, then the log): what a killed first migration leaves.
            first = (tgt.models.facts, tgt.models.log)
            ours = any(insp.has_table(table.name, schema=schema) for table in first)
            versioned = insp.has_table(tgt.version_table, schema=schema)
        state = (State.INTERRUPTED if versioned else State.UNMANAGED) if ours else State.MISSING
    else:
        state = State.BEHIND if _known(current) else State.AHEAD
    return SchemaState(state, current, head, tgt)


def resumable(found: SchemaState, transactional_ddl: bool) -> bool:
    """Whether a migration run under the migration lock completes `found` by itself: every state but a
    newer revision and foreign tables, and, without transactional DDL (MySQL/MariaDB), the state a
    first migration killed half-way leaves (some tables, an empty version table). Each revision's
    steps check what exists before they run there, so running the revisions again completes them."""
    if found.state is State.INTERRUPTED:
        return not transactional_ddl
    return found.state not in (State.AHEAD, State.UNMANAGED)


# ---------------------------------------------------------------------------- commands


def current_revision(
    url_or_engine_or_connection: Bind, *, table_prefix: str = DEFAULT_PREFIX, schema: str | None = None
) -> str | None:
    """The revision the database is at for this prefix (None: never migrated)."""
    with connection_for(url_or_engine_or_connection) as conn:
        return _current(conn, Target(check_prefix(table_prefix), schema))


def check(url_or_engine_or_connection: Bind, *, table_prefix: str = DEFAULT_PREFIX, schema: str | None = None) -> None:
    """Raise `SchemaVersionError` unless the database is exactly at `head_revision()` for this prefix."""
    with connection_for(url_or_engine_or_connection) as conn:
        found = schema_state(conn, table_prefix, schema)
    if found.state is not State.CURRENT:
        raise found.error()


def migrate(
    url_or_engine_or_connection: Bind,
    revision: str = "head",
    *,
    table_prefix: str = DEFAULT_PREFIX,
    schema: str | None = None,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
) -> str | None:
    """Upgrade the database to `revision` (default: this version's head) and return the revision it is at.

    Idempotent; safe when several processes run it at once. Given a Connection
    inside a transaction, the migration runs in that transaction (PostgreSQL,
    SQLite) and the caller commits it.
    """
    tgt = Target(check_prefix(table_prefix), schema)

    def upgrade() -> str | None:
        with holding(_ALEMBIC), connection_for(url_or_engine_or_connection) as conn:
            cfg = make_config(table_prefix, schema, connection=conn, lock_timeout=lock_timeout)
            cfg.attributes["memstate_guard"] = True  # refuse unknown revisions and unmanaged tables, under the lock
            if revision == "head":
                _online_prepare(conn, tgt)
            try:
                command.upgrade(cfg, revision)
            except CommandError as err:
                raise SchemaVersionError(f"cannot upgrade {tgt.describe()} to {revision!r}: {err}") from err
            except DBAPIError:
                if conn.in_transaction():
                    conn.rollback()
                raise
            return _current(conn, tgt)

    return _waiting_out_concurrent_ddl(url_or_engine_or_connection, upgrade, lock_timeout, tgt)


def _waiting_out_concurrent_ddl(bind: Bind, run: Callable[[], T], timeout: float, tgt: Target) -> T:
    """Run `run`; a DDL error that means another process is migrating at the same time (MySQL family:
    1050/1060/1061/1684/1213, e.g. a Galera node whose migrator did not hold the cluster-wide lock, or
    a certification conflict on the version table) is waited out (`DialectSupport.waiting_out_concurrent_ddl`)."""
    support = support_for(bind.dialect if isinstance(bind, Connection | Engine) else make_url(bind).get_backend_name())
    return support.waiting_out_concurrent_ddl(run, timeout, f"migrating {tgt.describe()}", default_sleep)


def _online_prepare(conn: Connection, tgt: Target) -> None:
    """Before the migration's one transaction: the next revision's ``online_prepare(conn, prefix, schema)``
    if it has one (ms_0002: PostgreSQL's ``CREATE INDEX CONCURRENTLY`` of its new indexes), on a store
    that exists already and only on our own connection (never inside a caller's transaction). Best
    effort: what it could not do, the revision does inside the transaction."""
    if conn.in_transaction():
        return
    current = _current(conn, tgt)
    if current is None or not _known(current):
        return
    for script in _scripts().walk_revisions():
        if script.down_revision == current:
            prepare = getattr(script.module, "online_prepare", None)
            if prepare is None:
                return
            try:
                prepare(conn, tgt.prefix, tgt.schema)
            except exc.DBAPIError as err:
                if conn.in_transaction():
                    conn.rollback()
                log.warning("online preparation of %s for %s skipped: %s", script.revision, tgt.describe(), err.orig)
            return


def downgrade(
    url_or_engine_or_connection: Bind,
    revision: str,
    *,
    table_prefix: str = DEFAULT_PREFIX,
    schema: str | None = None,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
) -> str | None:
    """Downgrade the database to `revision` (``"base"`` removes memstate_sql's tables; the data goes too).

    Refuses before it changes anything when a revision on the path down would refuse (see
    `downgrade_refusals`): each revision's downgrade runs in its own transaction on PostgreSQL and
    MySQL/MariaDB, so a refusal found only on the way would leave the database half way down.
    """
    with holding(_ALEMBIC), connection_for(url_or_engine_or_connection) as conn:
        refusal = downgrade_refusals(conn, revision, table_prefix=table_prefix, schema=schema)
        if refusal is not None:
            raise SchemaVersionError(refusal)
        cfg = make_config(table_prefix, schema, connection=conn, lock_timeout=lock_timeout)
        try:
            command.downgrade(cfg, revision)
        except CommandError as err:
            raise SchemaVersionError(
                f"cannot downgrade {Target(table_prefix, schema).describe()} to {revision!r}: {err}"
            ) from err
        return _current(conn, Target(table_prefix, schema))


def downgrade_refusals(
    conn: Connection, revision: str, *, table_prefix: str = DEFAULT_PREFIX, schema: str | None = None
) -> str | None:
    """The message of the first revision on the path from the database's revision down to `revision`
    (newest first) whose downgrade would refuse; None when none would (or the path is not known here:
    the downgrade itself then reports it).

    The convention (docs/migrations.md): a revision module whose downgrade can refuse defines
    ``downgrade_refusal(bind, facts_table, log_table, schema) -> str | None`` and its ``downgrade()``
    calls it too (so the Alembic CLI refuses as well); a module without it is not pre-checked. The
    check reads on `conn` and leaves no transaction open that it began.
    """
    tgt = Target(check_prefix(table_prefix), schema)
    began = not conn.in_transaction()
    try:
        current = _current(conn, tgt)
        if current is None:
            return None
        try:
            path = list(_scripts().iterate_revisions(current, revision))
        except Exception:  # unknown revisions: left to Alembic's own errors
            return None
        facts = tgt.models.facts.name
        log = tgt.models.log.name
        for script in path:
            check = getattr(script.module, "downgrade_refusal", None)
            if check is None:
                continue
            refusal: str | None = check(conn, facts, log, schema)
            if refusal:
                return refusal
        return None
    finally:
        if began and conn.in_transaction():
            conn.rollback()


# ---------------------------------------------------------------------------- env.py


def run_env() -> None:
    """The body of ``alembic/env.py``: offline (``--sql``) or online, under the migration lock."""
    from alembic import context

    config = context.config
    tgt = target(config)
    if context.is_offline_mode():
        url = _x_arguments(config).get("url") or config.get_main_option("sqlalchemy.url")
        if not url:
            raise StorageError("offline migrations need sqlalchemy.url")
        dialect_name = make_url(url).get_backend_name()
        filters = OwnFilters(tgt, dialect_name)
        context.configure(
            url=url,
            literal_binds=True,
            dialect_opts={"paramstyle": "named"},
            target_metadata=tgt.models.metadata,
            version_table=tgt.version_table,
            version_table_schema=tgt.schema,
            transaction_per_migration=True,
            render_as_batch=support_for(dialect_name).batch_alter,
            include_name=filters.include_name,
            include_object=filters.include_object,
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    given = config.attributes.get("connection")
    if given is None:
        given = _x_arguments(config).get("url") or config.get_main_option("sqlalchemy.url")
        if not given:
            raise StorageError("no database: set sqlalchemy.url in alembic.ini or pass a connection")
    timeout = float(config.attributes.get("memstate_lock_timeout", DEFAULT_LOCK_TIMEOUT))
    guard = bool(config.attributes.get("memstate_guard"))
    with connection_for(given) as conn:
        _run_online(conn, tgt, timeout, guard)


def _run_online(conn: Connection, tgt: Target, timeout: float, guard: bool) -> None:
    from alembic import context

    support = support_for(conn.dialect)
    external = conn.in_transaction()
    with support.migration_lock(conn, tgt.lock_name, timeout, default_sleep):
        open_before = conn.in_transaction()  # SQLite: its write lock is the transaction
        if guard:
            # Read under the lock: outside it, another process's half-done migration (MySQL/MariaDB
            # DDL is not transactional) would look interrupted. Under it, an interrupted one (a process
            # killed during its migration) is completed by running the revisions again (`resumable`).
            found = schema_state(conn, tgt.prefix, tgt.schema)
            if not resumable(found, support.transactional_ddl):
                raise found.error()
        if tgt.schema is not None:
            support.ensure_schema(conn, tgt.schema)
        if not open_before and conn.in_transaction():
            conn.commit()
        filters = OwnFilters(tgt, conn.dialect.name)
        context.configure(
            connection=conn,
            target_metadata=tgt.models.metadata,
            version_table=tgt.version_table,
            version_table_schema=tgt.schema,
            include_schemas=tgt.schema is not None,
            include_name=filters.include_name,
            include_object=filters.include_object,
            render_as_batch=support.batch_alter,
            transaction_per_migration=True,
            # PostgreSQL and SQLite: the whole migration is the migration lock's one transaction.
            memstate_external_transaction=external or open_before,
            compare_type=True,
            compare_server_default=False,
        )
        with context.begin_transaction():
            context.run_migrations()
        if not external and not open_before and conn.in_transaction():
            conn.commit()


__all__ = [
    "DEFAULT_LOCK_TIMEOUT",
    "VERSION_TABLE",
    "HostFilters",
    "SchemaState",
    "State",
    "Target",
    "check",
    "connection_for",
    "current_revision",
    "downgrade",
    "downgrade_refusals",
    "head_revision",
    "host_filters",
    "include_name",
    "include_object",
    "make_config",
    "migrate",
    "run_env",
    "schema_state",
    "script_location",
    "target",
    "version_table",
]
