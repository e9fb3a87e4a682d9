"""Bringing a database's schema to what this version of memstate_sql expects.

Storages call `prepare_schema` once, before their first operation.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Engine, inspect

from memstate_sql.indexes import IndexedPath, ensure_indexes
from memstate_sql.models import Models


def prepare_schema(
    engine: Engine, models: Models, *, auto_migrate: bool, indexed_paths: Sequence[IndexedPath] = ()
) -> None:
    """Create the tables when they are missing (idempotent)."""
    with engine.begin() as conn:
        models.metadata.create_all(conn, checkfirst=True)

    # ---- declared payload-path indexes (issue 5, memstate_sql.indexes): idempotent, after the tables exist.
    if indexed_paths:
        with engine.begin() as conn:
            ensure_indexes(conn, inspect(models.Fact).local_table, indexed_paths)
