"""Database fixtures: every SQL-touching test runs on SQLite, PostgreSQL and MySQL/MariaDB.

Where the server databases come from, first match wins:

1. an explicit URL in the environment:

   * ``MEMSTATE_SQL_TEST_POSTGRES_URL`` (e.g. ``postgresql+psycopg://postgres@127.0.0.1:5432/test``)
   * ``MEMSTATE_SQL_TEST_MYSQL_URL`` (e.g. ``mysql+pymysql://root@127.0.0.1:3306/test``)

2. a private server of this test run (tests/servers.py): PostgreSQL from the local binaries or the
   ``pgserver`` wheel, MariaDB from the local binaries, in a temporary directory on a free loopback
   port, started when the first test needs it, shared with pytest-xdist workers, and stopped by PID
   at the end of the run;
3. a container (testcontainers), when Docker is available.

A database that none of these provides is skipped with the reason, unless
``MEMSTATE_SQL_REQUIRE_DATABASES=1`` (CI): then its tests fail. The terminal summary says which
databases the run covered, and how.

Isolation: every test gets its own table prefix, and its tables are dropped
afterwards, so test runs (and parallel workers) never see each other's rows.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa

import memstate_sql as ms
from tests.servers import MARIADB_HINT, PgBouncer, SessionServers, find_mariadb, find_pg_bin, find_pgbouncer

DATABASES = ("sqlite", "postgresql", "mysql")
ENV = {"postgresql": "MEMSTATE_SQL_TEST_POSTGRES_URL", "mysql": "MEMSTATE_SQL_TEST_MYSQL_URL"}
REQUIRE = os.environ.get("MEMSTATE_SQL_REQUIRE_DATABASES") == "1"
NO_PRIVATE = "MEMSTATE_SQL_TEST_NO_PRIVATE_SERVERS"  # =1: never start private servers (URLs or containers only)

_SERVERS: SessionServers | None = None


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="run the long variants of stress tests")
    parser.addoption("--db", action="append", choices=DATABASES, help="only these databases (repeatable; default: all)")


def pytest_configure(config: pytest.Config) -> None:
    global _SERVERS
    # an xdist worker uses the servers of its controller, which alone starts the run directory
    _SERVERS = SessionServers.join() if hasattr(config, "workerinput") else SessionServers.create()


def pytest_unconfigure(config: pytest.Config) -> None:
    if _SERVERS is not None:
        _SERVERS.teardown()  # only the controlling process stops the servers (by PID)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow variant: pass --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def _plan(name: str) -> str:
    """Where `name`'s database will come from (said before any server is started)."""
    if os.environ.get(ENV[name]):
        return f"{ENV[name]}"
    if os.environ.get(NO_PRIVATE) != "1":
        if name == "postgresql" and (pg := find_pg_bin()) is not None:
            return f"private server on first use ({pg[1]} in {pg[0]})"
        if name == "mysql" and (mariadb := find_mariadb()) is not None:
            return f"private server on first use ({mariadb[0]})"
        if name == "mysql":
            return f"no MariaDB server binaries ({MARIADB_HINT}): " + ("FAIL (required)" if REQUIRE else "skipped")
    return "testcontainers if Docker is available, else " + ("FAIL (required)" if REQUIRE else "skipped")


def pytest_report_header(config: pytest.Config) -> list[str]:
    lines = [f"{name}: " + ("embedded" if name == "sqlite" else _plan(name)) for name in _selected(config)]
    required = " (all required: MEMSTATE_SQL_REQUIRE_DATABASES=1)" if REQUIRE else ""
    return [f"memstate_sql databases{required}: " + "; ".join(lines)]


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if hasattr(config, "workerinput") or _SERVERS is None:
        return
    covered, missing, unused = [], [], []
    for name in _selected(config):
        if name == "sqlite":
            covered.append("sqlite (embedded)")
            continue
        record = _SERVERS.record(name)
        if record is None:
            unused.append(name)
        elif "error" in record:
            missing.append(f"{name} ({record['error']})")
        else:
            covered.append(f"{name} ({record['describe']})")
    line = "memstate_sql databases: " + ", ".join(covered)
    if unused:
        line += "; not needed by the selected tests: " + ", ".join(unused)
    terminalreporter.write_sep("-", "memstate_sql databases")
    terminalreporter.write_line(line)
    for entry in missing:
        verdict = "FAILED" if REQUIRE else "skipped"
        terminalreporter.write_line(f"memstate_sql databases NOT covered ({verdict}): {entry}", red=True)


def _reachable(url: str) -> str | None:
    engine = sa.create_engine(url, pool_pre_ping=True)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        return None
    except Exception as exc:  # the reason is reported
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    finally:
        engine.dispose()


def _hidden(url: str) -> str:
    return sa.make_url(url).render_as_string(hide_password=True)


@functools.cache
def _server_url(name: str) -> tuple[str | None, str]:
    """(url, reason-if-unavailable) for a server database."""
    url = os.environ.get(ENV[name])
    if url:
        problem = _reachable(url)
        if problem is not None:
            reason = f"{ENV[name]}={_hidden(url)} is unreachable: {problem}"
            if _SERVERS is not None:
                _SERVERS.note(name, {"error": reason})
            return None, reason
        if _SERVERS is not None:
            _SERVERS.note(name, {"url": url, "describe": f"{ENV[name]}={_hidden(url)}"})
        return url, ""
    reasons = []
    if os.environ.get(NO_PRIVATE) == "1":
        reasons.append(f"{NO_PRIVATE}=1")
    elif _SERVERS is None:
        reasons.append(f"this worker has no run directory ({SessionServers.__name__})")
    else:
        record = _SERVERS.provide(name)
        if "url" in record:
            return record["url"], ""
        reasons.append(record["error"])
    url, reason = _container_url(name)
    if url is not None:
        if _SERVERS is not None:
            _SERVERS.note(name, {"url": url, "describe": "testcontainers"})
        return url, ""
    reasons.append(reason)
    reason = f"{ENV[name]} is not set, and " + "; ".join(reasons)
    if _SERVERS is not None:
        _SERVERS.note(name, {"error": reason})
    return None, reason


def _container_url(name: str) -> tuple[str | None, str]:
    try:  # pragma: no cover - needs Docker
        import docker  # type: ignore[import-untyped]

        docker.from_env().ping()
    except Exception:
        return None, "no Docker engine is available for testcontainers"
    try:  # pragma: no cover - needs Docker
        if name == "postgresql":
            from testcontainers.postgres import PostgresContainer

            container = PostgresContainer("postgres:15", driver="psycopg")
        else:
            from testcontainers.mysql import MySqlContainer

            container = MySqlContainer("mariadb:10.11")
        container.start()
        _CONTAINERS.append(container)
        return container.get_connection_url(), ""
    except Exception as exc:  # pragma: no cover
        return None, f"testcontainers could not start {name}: {exc}"


_CONTAINERS: list[Any] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    for container in _CONTAINERS:  # pragma: no cover - needs Docker
        container.stop()


def database_url(name: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    if name == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'memstate.db'}"
    url, reason = _server_url(name)
    if url is None:
        if REQUIRE:
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return url


def _selected(config: pytest.Config) -> list[str]:
    return list(config.getoption("--db") or DATABASES)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "db" in metafunc.fixturenames:
        metafunc.parametrize("db", _selected(metafunc.config), scope="session")
    if "mode" in metafunc.fixturenames:
        metafunc.parametrize("mode", ["sync", "async"])


@pytest.fixture(scope="module")
def pgbouncer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgBouncer]:
    """PgBouncer in ``pool_mode = transaction`` (3 server connections) in front of the suite's PostgreSQL,
    started by the suite and stopped by its PID. Without a ``pgbouncer`` binary the tests skip, except
    under ``MEMSTATE_SQL_REQUIRE_DATABASES=1`` or in CI (``CI`` set), where they fail."""
    binary = find_pgbouncer()
    if binary is None:
        reason = "no pgbouncer binary (Debian: apt-get install pgbouncer; or set MEMSTATE_SQL_PGBOUNCER)"
        if REQUIRE or os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    backend = database_url("postgresql", tmp_path_factory)
    bouncer = PgBouncer(binary, backend, pool_size=3, ports=os.environ.get("MEMSTATE_SQL_TEST_PORTS"))
    try:
        bouncer.start()
        yield bouncer
    finally:
        bouncer.destroy()


@pytest.fixture
def db_url(db: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A URL of database `db` (a fresh SQLite file per test)."""
    return database_url(db, tmp_path_factory)


def drop_prefix(url: str, prefix: str) -> None:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            inspector = sa.inspect(conn)
            for table in inspector.get_table_names():
                if table.startswith(prefix + "_"):
                    conn.execute(sa.text(f"DROP TABLE {conn.dialect.identifier_preparer.quote(table)}"))
    finally:
        engine.dispose()


@pytest.fixture
def prefix(db_url: str) -> Iterator[str]:
    """A table prefix of this test's own; its tables are dropped afterwards."""
    name = "t" + uuid.uuid4().hex[:10]
    yield name
    drop_prefix(db_url, name)


@pytest.fixture
def storage(db_url: str, prefix: str) -> Iterator[ms.SQLStorage]:
    st = ms.SQLStorage(db_url, table_prefix=prefix)
    yield st
    st.close()


# ---------------------------------------------------------------------------- sync/async


class Blocking:
    """Runs an async object's coroutine methods to completion on a private loop,
    so that one behaviour suite drives both the sync and the asyncio store."""

    def __init__(self, target: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._target = target
        self._loop = loop

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if name == "storage":
            return Blocking(value, self._loop)
        if inspect.iscoroutinefunction(value):
            return lambda *a, **k: self._loop.run_until_complete(value(*a, **k))
        return value

    def add_hook(self, hook: Callable[..., Any]) -> None:
        self._target.add_hook(as_async_hook(hook))


@pytest.fixture
def opened(db_url: str, prefix: str) -> Iterator[Callable[..., ms.SQLStorage]]:
    """``opened(**options)``: a new `SQLStorage` on the test's database and prefix, closed at the end."""
    made: list[ms.SQLStorage] = []

    def make(**options: Any) -> ms.SQLStorage:
        storage = ms.SQLStorage(db_url, table_prefix=prefix, **options)
        made.append(storage)
        return storage

    yield make
    for storage in made:
        storage.close()


def as_async_hook(hook: Any) -> Any:
    """Wrap a sync test hook as a genuine coroutine hook (with an async search if it has one)."""

    class AsyncHook:
        def __init__(self) -> None:
            self.inner = hook

        async def __call__(self, op: ms.Operation, fact_id: str, fact: ms.Fact | None) -> None:
            await asyncio.sleep(0)
            hook(op, fact_id, fact)

        def __repr__(self) -> str:
            return f"async({hook!r})"

    if hasattr(hook, "search"):

        async def search(*args: Any) -> Any:
            await asyncio.sleep(0)
            return hook.search(*args)

        AsyncHook.search = staticmethod(search)  # type: ignore[attr-defined]
    return AsyncHook()


@pytest.fixture
def make_store(mode: str, db_url: str, prefix: str) -> Iterator[Callable[..., Any]]:
    """Factory of stores on this test's database and prefix, in the parametrized mode.

    Both modes expose the same blocking interface to the test body; in async
    mode every call runs through `AsyncMemoryStore` / `AsyncSQLStorage`.
    """
    cleanups: list[Callable[[], None]] = []
    loop = asyncio.new_event_loop() if mode == "async" else None

    def factory(hooks: list[Any] | None = None, **storage_options: Any) -> Any:
        if loop is None:
            st = ms.SQLStorage(db_url, table_prefix=prefix, **storage_options)
            cleanups.append(st.close)
            return ms.MemoryStore(st, hooks)
        ast = ms.AsyncSQLStorage(db_url, table_prefix=prefix, **storage_options)
        cleanups.append(lambda: loop.run_until_complete(ast.close()))
        return Blocking(ms.AsyncMemoryStore(ast, [as_async_hook(h) for h in hooks or []]), loop)

    yield factory
    for cleanup in reversed(cleanups):
        cleanup()
    if loop is not None:
        loop.close()


@pytest.fixture
def store(make_store: Callable[..., Any]) -> Any:
    return make_store()


def count_rows(url: str, prefix: str, table: str) -> int:
    """Rows in one of the test's tables, read on a separate engine (what another process sees)."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text(f"SELECT COUNT(*) FROM {prefix}_{table}")).scalar_one())
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def galera_cluster() -> Iterator[Any]:
    """A private 3-node MariaDB Galera cluster for the session (tests/servers.py `GaleraCluster`), stopped by
    PID at the end. Skipped where the binaries are missing, unless MEMSTATE_SQL_REQUIRE_DATABASES=1."""
    from tests.servers import GaleraCluster, find_galera

    if find_galera() is None:
        reason = "no Galera cluster binaries (mariadbd, mariadb-install-db, libgalera_smm.so, rsync)"
        if REQUIRE:
            pytest.fail(f"{reason}, and MEMSTATE_SQL_REQUIRE_DATABASES=1")
        pytest.skip(reason)
    base = int(os.environ.get("MEMSTATE_SQL_TEST_GALERA_BASE_PORT", "16500"))
    cluster = GaleraCluster(base_port=base)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.destroy()
