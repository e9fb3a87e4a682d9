"""pgvector: vector search computed by PostgreSQL where the ``vector`` extension is available.

Revision ID: ms_0008_pgvector
Revises: ms_0005_log_order
Create Date: 2026-12-03 00:00:00

On PostgreSQL whose server has the ``vector`` extension (``pg_available_extensions``): creates
the extension if it is not installed yet (``CREATE EXTENSION IF NOT EXISTS vector``, in a
savepoint: without the privilege to create it, nothing changes) and the function
``<prefix>_vector_of(bytea) -> vector``, which decodes the packed float32 embeddings of
``<prefix>_vectors`` (IMMUTABLE, so PostgreSQL can index it). The HNSW index itself depends on the
embedding's dimension, which only the storage's `VectorIndex` knows: a storage with
``VectorIndex(ann=True)`` (the default) creates ``ix_<prefix>_vectors_ann_<dim>`` on first use
(`memstate_sql.dialects.pgvector`, docs/search.md).

Everywhere else (SQLite, MySQL/MariaDB, a PostgreSQL server without pgvector, offline ``--sql``
mode): nothing. The revision is recorded all the same, so the schema is at head on every
database. A storage whose server gets pgvector later creates the function and index on its
next start (the extension must then be installed: ``CREATE EXTENSION vector``).

Nothing is rewritten: the packed vectors stay the source of truth. Downgrade drops the function
and, with it, every HNSW index of the prefix (``CASCADE``); it leaves the extension installed
(other tables may use it).
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from memstate_sql.dialects import pgvector
from memstate_sql.migrations import target

revision: str = "ms_0008_pgvector"
down_revision: str | Sequence[str] | None = "ms_0005_log_order"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _applies() -> bool:
    ctx = op.get_context()
    return ctx.dialect.name == "postgresql" and not ctx.as_sql


def upgrade() -> None:
    if not _applies():
        return
    t = target()
    pgvector.install(op.get_bind(), f"{t.prefix}_vectors", t.schema)


def downgrade() -> None:
    if not _applies():
        return
    t = target()
    pgvector.uninstall(op.get_bind(), f"{t.prefix}_vectors", t.schema)
