"""Exception hierarchy.

The four classes memstate users already catch keep their names and their
inheritance (`ValidationFailed`, `ConflictError` and `HookError` are
`MemoryStoreError`s); memstate_sql adds subclasses for the failures a real
database can produce, so that no raw driver exception reaches the caller of a
store operation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from memstate_sql.records import RollbackPlan


class MemoryStoreError(Exception):
    """Base class of every error raised by memstate_sql."""


class ValidationFailed(MemoryStoreError):
    """Input (a fact, a payload, a filter, an argument) is not acceptable."""


class ConflictError(MemoryStoreError):
    """The operation would violate a constraint or conflicts with other work."""


class EmbeddingError(ValidationFailed):
    """The embedding function of a `VectorIndex` failed or returned an unusable vector (wrong
    dimension, NaN or infinite numbers, all zeros); the operation's transaction was rolled back."""


class HookError(MemoryStoreError):
    """A hook raised; the operation's database transaction was rolled back."""


class StorageError(MemoryStoreError):
    """The database failed in a way that is not the caller's input (the cause is chained)."""


class TransientStorageError(StorageError):
    """A retryable database failure (deadlock, serialization failure, busy database) persisted
    after the configured number of attempts."""


class SchemaVersionError(StorageError):
    """The database schema is missing, older or newer than this version of memstate_sql."""


class MigrationLockTimeout(TransientStorageError):
    """Another process held the migration lock for longer than the allowed wait."""


class FactNotFound(MemoryStoreError):
    """No fact has the given id (message: "Fact not found", as in memstate)."""


class RollbackConflictError(ConflictError):
    """A rollback was refused because it would override later changes; nothing was changed.

    `plan` is the refused `RollbackPlan` (its `conflicts` say which facts and entries).
    """

    def __init__(self, message: str, plan: RollbackPlan) -> None:
        super().__init__(message)
        self.plan = plan


class RollbackHorizonError(ConflictError):
    """A rollback would need log entries that `compact_log` removed; nothing was changed."""


class ConnectionLost(StorageError):
    """The database could not be reached, or the connection broke during the operation.

    The operation's transaction did not commit, so none of it is visible; if the
    connection broke during COMMIT itself, the outcome is unknown but still all or
    nothing. Not retried automatically (the operation may need the caller's
    judgement); the next operation reconnects (``pool_pre_ping``).
    """


class RetryUnitOfWork(Exception):
    """Internal: raised inside a unit of work to have it re-run (e.g. a row changed under it).

    Never reaches a caller: the unit of work (`memstate_sql.uow`) catches it.
    """


#: Attribute set on a database error raised by a storage call that joined an operation's transaction.
_JOINED_MARK = "memstate_sql_joined"


def mark_joined(error: BaseException) -> None:
    """Mark a database error as raised inside an enclosing operation's transaction (a hook's storage call)."""
    setattr(error, _JOINED_MARK, True)


def is_joined(error: BaseException) -> bool:
    return bool(getattr(error, _JOINED_MARK, False))
