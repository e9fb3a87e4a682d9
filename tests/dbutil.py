"""Looking at a test database from outside the store: a temporary engine, raw SQL, disposed after."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import sqlalchemy as sa


def sync_url(url: str) -> str:
    """The sync-driver form of a test URL (async drivers are mapped back)."""
    return url.replace("+aiosqlite", "").replace("+aiomysql", "+pymysql")


@contextmanager
def temporary_engine(url: str, **options: Any) -> Iterator[sa.Engine]:
    """An engine of its own (what another process sees), disposed on exit."""
    engine = sa.create_engine(sync_url(url), **options)
    try:
        yield engine
    finally:
        engine.dispose()


def fetch(url: str, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
    """The rows of one raw SELECT, read on a temporary engine."""
    with temporary_engine(url) as engine, engine.connect() as conn:
        return [tuple(row) for row in conn.execute(sa.text(sql), params or {})]


def table_rows(url: str, table: str) -> int:
    """Rows of `table` as another process sees them (0 when the table does not exist)."""
    with temporary_engine(url) as engine:
        if not sa.inspect(engine).has_table(table):
            return 0
        with engine.connect() as conn:
            return int(conn.execute(sa.text(f"SELECT COUNT(*) FROM {table}")).scalar_one())


def table_names(url: str, schema: str | None = None) -> set[str]:
    with temporary_engine(url) as engine:
        return set(sa.inspect(engine).get_table_names(schema=schema))


def fetch_columns(url: str, table: str, schema: str | None = None) -> list[str]:
    with temporary_engine(url) as engine:
        return [c["name"] for c in sa.inspect(engine).get_columns(table, schema=schema)]


T = TypeVar("T")

_LISTENERS: dict[int, tuple[sa.Engine, Any]] = {}


def listen(
    engine: sa.Engine, record: Callable[[Any, str], T], hook: Callable[[Any, str], None] | None = None
) -> list[T]:
    """``record(connection, statement)`` of every statement `engine` sends from now on (until `stop`), then
    ``hook(connection, statement)``: what a test sees of a store's round trips."""
    sent: list[T] = []

    def listener(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        sent.append(record(conn, statement))
        if hook is not None:
            hook(conn, statement)

    sa.event.listen(engine, "before_cursor_execute", listener)
    _LISTENERS[id(sent)] = (engine, listener)
    return sent


def stop(sent: list[Any]) -> None:
    """No more statements into `sent` (`listen`)."""
    engine, listener = _LISTENERS.pop(id(sent))
    sa.event.remove(engine, "before_cursor_execute", listener)


def driver_of(storage: Any) -> Any:
    """The driver connection a sync store operation on `storage` runs on now (this thread's held one)."""
    import memstate_sql as ms

    seen = listen(storage.engine, lambda conn, _: conn.connection.dbapi_connection)
    try:
        ms.MemoryStore(storage).count()
    finally:
        stop(seen)
    return seen[-1]
