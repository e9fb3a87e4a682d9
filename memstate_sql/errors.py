"""Exception hierarchy.

The four classes memstate users already catch keep their names and their
inheritance (`ValidationFailed`, `ConflictError` and `HookError` are
`MemoryStoreError`s); memstate_sql adds subclasses for the failures a real
database can produce, so that no raw driver exception reaches the caller of a
store operation.
"""

from __future__ import annotations


class MemoryStoreError(Exception):
    """Base class of every error raised by memstate_sql."""


class ValidationFailed(MemoryStoreError):
    """Input (a fact, a payload, a filter, an argument) is not acceptable."""


class ConflictError(MemoryStoreError):
    """The operation would violate a constraint or conflicts with other work."""


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
