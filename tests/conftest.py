"""Database fixtures: every SQL-touching test runs on SQLite, PostgreSQL and MySQL/MariaDB.

URLs come from the environment:

* ``MEMSTATE_SQL_TEST_POSTGRES_URL`` (e.g. ``postgresql+psycopg://postgres@127.0.0.1:5432/test``)
* ``MEMSTATE_SQL_TEST_MYSQL_URL`` (e.g. ``mysql+pymysql://root@127.0.0.1:3306/test``)

Without a URL, a container is started with testcontainers when Docker is
available; otherwise those cases are skipped with the reason. With
``MEMSTATE_SQL_REQUIRE_DATABASES=1`` (CI) a database that is not reachable
fails the run instead.

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

DATABASES = ("sqlite", "postgresql", "mysql")
ENV = {"postgresql": "MEMSTATE_SQL_TEST_POSTGRES_URL", "mysql": "MEMSTATE_SQL_TEST_MYSQL_URL"}
REQUIRE = os.environ.get("MEMSTATE_SQL_REQUIRE_DATABASES") == "1"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="run the long variants of stress tests")
    parser.addoption("--db", action="append", choices=DATABASES, help="only these databases (repeatable; default: all)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow variant: pass --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


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


@functools.cache
def _server_url(name: str) -> tuple[str | None, str]:
    """(url, reason-if-unavailable) for a server database."""
    url = os.environ.get(ENV[name])
    if url:
        problem = _reachable(url)
        return (url, "") if problem is None else (None, f"{ENV[name]}={url} is unreachable: {problem}")
    if REQUIRE:
        return None, f"{ENV[name]} is not set and MEMSTATE_SQL_REQUIRE_DATABASES=1"
    try:  # pragma: no cover - needs Docker
        import docker  # type: ignore[import-untyped]

        docker.from_env().ping()
    except Exception:
        return None, f"{ENV[name]} is not set and no Docker engine is available for testcontainers"
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
