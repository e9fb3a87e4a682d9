"""Looking at a test database from outside the store: a temporary engine, raw SQL, disposed after."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

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
