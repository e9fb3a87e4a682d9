"""Everything that differs between databases, one module per database.

The rest of the package asks `support_for(dialect)` for a `DialectSupport`
and never branches on a dialect name itself. Each module also registers the
SQL compilation of `memstate_sql.filters.JsonPredicate` for its database.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sqlalchemy import Dialect, Engine, create_engine
from sqlalchemy.engine import URL, make_url

from memstate_sql.dialects.base import (
    POOLERS,
    DialectSupport,
    ErrorKind,
    NearestRequest,
    Unindexed,
    check_pooler,
    merge_options,
)
from memstate_sql.errors import StorageError, ValidationFailed

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

#: Backend name -> (module, class). A database's module (its SQL for the filter language, its
#: SQLAlchemy dialect package) is imported the first time a storage asks for that database.
_MODULES: dict[str, tuple[str, str]] = {
    "sqlite": ("memstate_sql.dialects.sqlite", "SQLiteSupport"),
    "postgresql": ("memstate_sql.dialects.postgresql", "PostgreSQLSupport"),
    "mysql": ("memstate_sql.dialects.mysql", "MySQLSupport"),
    "mariadb": ("memstate_sql.dialects.mysql", "MySQLSupport"),
}
_SUPPORT: dict[str, DialectSupport] = {}
_LOADING = threading.Lock()


def support_for(dialect: Dialect | str) -> DialectSupport:
    """The support object for a dialect (or a backend name such as ``"postgresql"``)."""
    name = dialect if isinstance(dialect, str) else dialect.name
    found = _SUPPORT.get(name)
    if found is not None:
        return found
    if name not in _MODULES:
        raise StorageError(f"memstate_sql supports SQLite, PostgreSQL and MySQL/MariaDB, not {name!r}")
    with _LOADING:
        if name not in _SUPPORT:
            module, cls = _MODULES[name]
            _SUPPORT[name] = getattr(importlib.import_module(module), cls)()
    return _SUPPORT[name]


def _options(support: DialectSupport, url: URL, engine_options: Mapping[str, Any] | None, pooler: str | None) -> Any:
    defaults = merge_options(support.engine_options(url), support.pooler_options(url, pooler))
    return merge_options(defaults, dict(engine_options or {}))


def engine_for(
    url: str | URL,
    engine_options: Mapping[str, Any] | None = None,
    *,
    sqlite_synchronous: str | None = None,
    read_your_writes: bool = False,
    pooler: str | None = None,
) -> Engine:
    """The one way memstate_sql creates a sync engine: the database's defaults
    (`DialectSupport.engine_options`, and `DialectSupport.pooler_options` for a connection pooler
    in between), the caller's options over them, and the database's per-connection settings
    (`DialectSupport.configure_engine`; `sqlite_synchronous`: SQLite's durability)."""
    parsed = make_url(url) if isinstance(url, str) else url
    support = support_for(parsed.get_backend_name())
    engine = create_engine(parsed, **_options(support, parsed, engine_options, pooler))
    try:
        support.configure_engine(engine, sqlite_synchronous=sqlite_synchronous, read_your_writes=read_your_writes)
    except BaseException:
        engine.dispose()
        raise
    return engine


def async_engine_for(
    url: str | URL,
    engine_options: Mapping[str, Any] | None = None,
    *,
    sqlite_synchronous: str | None = None,
    read_your_writes: bool = False,
    pooler: str | None = None,
) -> AsyncEngine:
    """`engine_for` for asyncio: the URL mapped to the database's asyncio driver (`async_url`)."""
    from sqlalchemy.ext.asyncio import create_async_engine  # the asyncio extension: on first use

    parsed = async_url(url)
    support = support_for(parsed.get_backend_name())
    engine = create_async_engine(parsed, **_options(support, parsed, engine_options, pooler))
    try:
        support.configure_engine(
            engine.sync_engine, sqlite_synchronous=sqlite_synchronous, read_your_writes=read_your_writes
        )
    except BaseException:
        engine.sync_engine.dispose()
        raise
    return engine


def async_url(url: str | URL) -> URL:
    """Map a sync SQLAlchemy URL to its asyncio driver (``sqlite://`` → ``sqlite+aiosqlite://``...).

    The drivers are each database's `DialectSupport.async_driver`; see `DialectSupport.async_url`.
    """
    parsed = make_url(url) if isinstance(url, str) else url
    backend = parsed.get_backend_name()
    if backend not in _MODULES:
        raise ValidationFailed(f"memstate_sql supports SQLite, PostgreSQL and MySQL/MariaDB, not {backend!r}")
    return support_for(backend).async_url(parsed)


__all__ = [
    "POOLERS",
    "DialectSupport",
    "ErrorKind",
    "NearestRequest",
    "Unindexed",
    "async_engine_for",
    "async_url",
    "check_pooler",
    "engine_for",
    "support_for",
]
