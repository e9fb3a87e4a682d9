"""Bringing a database's schema to what this version of memstate_sql expects.

Storages call `prepare_schema` once, before their first operation.
"""

from __future__ import annotations

from sqlalchemy import Engine

from memstate_sql.models import Models


def prepare_schema(engine: Engine, models: Models, *, auto_migrate: bool) -> None:
    """Create the tables when they are missing (idempotent)."""
    with engine.begin() as conn:
        models.metadata.create_all(conn, checkfirst=True)
