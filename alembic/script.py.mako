"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}

Revision ids are prefixed ``ms_NNNN_`` so they can never collide with a host
application's (create with ``alembic revision -m "..." --rev-id ms_NNNN_name``).
Every table name comes from `target()`: the same revision serves any table
prefix and schema. Write portable operations (SQLite runs them in batch mode).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from memstate_sql.migrations import target
${imports if imports else ""}

revision: str = ${repr(up_revision)}
down_revision: str | Sequence[str] | None = ${repr(down_revision)}
branch_labels: str | Sequence[str] | None = ${repr(branch_labels)}
depends_on: str | Sequence[str] | None = ${repr(depends_on)}


def upgrade() -> None:
    t = target()
    ${upgrades if upgrades else "pass"}


def downgrade() -> None:
    t = target()
    ${downgrades if downgrades else "pass"}
