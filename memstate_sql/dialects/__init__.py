"""Everything that differs between databases, one module per database.

The rest of the package asks `support_for(dialect)` for a `DialectSupport`
and never branches on a dialect name itself. Each module also registers the
SQL compilation of `memstate_sql.filters.JsonPredicate` for its database.
"""

from __future__ import annotations

from sqlalchemy import Dialect
from sqlalchemy.engine import URL, make_url

from memstate_sql.dialects import mysql, postgresql, sqlite
from memstate_sql.dialects.base import DialectSupport, ErrorKind
from memstate_sql.errors import StorageError, ValidationFailed

_SUPPORT: dict[str, DialectSupport] = {
    "sqlite": sqlite.SQLiteSupport(),
    "postgresql": postgresql.PostgreSQLSupport(),
    "mysql": mysql.MySQLSupport(),
    "mariadb": mysql.MySQLSupport(),
}


def support_for(dialect: Dialect | str) -> DialectSupport:
    """The support object for a dialect (or a backend name such as ``"postgresql"``)."""
    name = dialect if isinstance(dialect, str) else dialect.name
    try:
        return _SUPPORT[name]
    except KeyError:
        raise StorageError(f"memstate_sql supports SQLite, PostgreSQL and MySQL/MariaDB, not {name!r}") from None


def async_url(url: str | URL) -> URL:
    """Map a sync SQLAlchemy URL to its asyncio driver (``sqlite://`` → ``sqlite+aiosqlite://``...).

    The drivers are each database's `DialectSupport.async_driver`; see `DialectSupport.async_url`.
    """
    parsed = make_url(url) if isinstance(url, str) else url
    backend = parsed.get_backend_name()
    if backend not in _SUPPORT:
        raise ValidationFailed(f"memstate_sql supports SQLite, PostgreSQL and MySQL/MariaDB, not {backend!r}")
    return _SUPPORT[backend].async_url(parsed)


__all__ = ["DialectSupport", "ErrorKind", "async_url", "support_for"]
