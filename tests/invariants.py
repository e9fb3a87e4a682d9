"""The store invariants as test assertions (memstate_sql.verify does the checking)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import URL, make_url

from memstate_sql.verify import VerifyReport, verify

_SYNC_DRIVERS = {"aiosqlite": "pysqlite", "aiomysql": "pymysql", "asyncmy": "pymysql", "asyncpg": "psycopg"}


def sync_url(url: str | URL) -> URL:
    parsed = make_url(url) if isinstance(url, str) else url
    driver = parsed.get_driver_name()
    if driver in _SYNC_DRIVERS:
        return parsed.set(drivername=f"{parsed.get_backend_name()}+{_SYNC_DRIVERS[driver]}")
    return parsed


def check_tables(url: str | URL, prefix: str) -> VerifyReport:
    report = verify(sync_url(url), table_prefix=prefix)
    assert report.ok, "store invariants violated:\n" + "\n".join(report.problems[:50])
    return report


def check_store(storage: Any) -> VerifyReport:
    """Check the tables of a SQLStorage / AsyncSQLStorage (or the tests' blocking wrapper of one)."""
    target = getattr(storage, "_target", storage)
    prefix = getattr(target, "table_prefix", None) or target._options["table_prefix"]
    return check_tables(target.engine.url, prefix)
