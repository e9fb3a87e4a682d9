"""memstate_sql: memstate's memory-store API on SQLite, PostgreSQL and MySQL/MariaDB.

One store operation is one database transaction: the fact, its log entry and
the hooks' outcome commit together or not at all.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from memstate_sql._version import __version__
from memstate_sql.errors import (
    ConflictError,
    ConnectionLost,
    EmbeddingError,
    FactNotFound,
    HookError,
    MemoryStoreError,
    MigrationLockTimeout,
    RollbackConflictError,
    RollbackHorizonError,
    SchemaVersionError,
    StorageError,
    TransientStorageError,
    ValidationFailed,
)
from memstate_sql.facts import Fact, Operation, ScoredFact, SearchResult, TxEntry
from memstate_sql.hooks import AsyncMemoryHook, MemoryHook
from memstate_sql.indexes import IndexedPath
from memstate_sql.models import DEFAULT_PREFIX, models_for
from memstate_sql.records import RollbackAction, RollbackConflict, RollbackPlan
from memstate_sql.registry import Constraint, SchemaRegistry
from memstate_sql.storage import SQLStorage
from memstate_sql.store import MemoryStore
from memstate_sql.vectors import SearchPlan, VectorIndex
from memstate_sql.verify import VerifyReport, verify

if TYPE_CHECKING:
    from memstate_sql.aio import AsyncMemoryStore, AsyncSQLStorage
    from memstate_sql.migrations import VERSION_TABLE, migrate
    from memstate_sql.models import metadata
    from memstate_sql.sweeper import AsyncSweeper, Sweeper

#: Loaded on first use (`import memstate_sql` stays cheap): the asyncio layer (SQLAlchemy's asyncio
#: extension), the migrations (Alembic), the sweepers, the default store's metadata (built on first access).
_LAZY = {
    "AsyncMemoryStore": "memstate_sql.aio",
    "AsyncSQLStorage": "memstate_sql.aio",
    "VERSION_TABLE": "memstate_sql.migrations",
    "migrate": "memstate_sql.migrations",
    "AsyncSweeper": "memstate_sql.sweeper",
    "Sweeper": "memstate_sql.sweeper",
    "metadata": "memstate_sql.models",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'memstate_sql' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once: later lookups are plain module attributes
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "DEFAULT_PREFIX",
    "VERSION_TABLE",
    "AsyncMemoryHook",
    "AsyncMemoryStore",
    "AsyncSQLStorage",
    "AsyncSweeper",
    "ConflictError",
    "ConnectionLost",
    "Constraint",
    "EmbeddingError",
    "Fact",
    "FactNotFound",
    "HookError",
    "IndexedPath",
    "MemoryHook",
    "MemoryStore",
    "MemoryStoreError",
    "MigrationLockTimeout",
    "Operation",
    "RollbackAction",
    "RollbackConflict",
    "RollbackConflictError",
    "RollbackHorizonError",
    "RollbackPlan",
    "SQLStorage",
    "SchemaRegistry",
    "SchemaVersionError",
    "ScoredFact",
    "SearchPlan",
    "SearchResult",
    "StorageError",
    "Sweeper",
    "TransientStorageError",
    "TxEntry",
    "ValidationFailed",
    "VectorIndex",
    "VerifyReport",
    "__version__",
    "metadata",
    "migrate",
    "models_for",
    "verify",
]
