"""Alembic environment of memstate_sql's schema.

Everything lives in `memstate_sql.migrations.run_env`: the target (table prefix
and schema, from ``-x table_prefix=... -x schema=...``, the ini file or the
caller's `Config`), the prefix's own version table, the migration lock,
per-revision transactions, SQLite batch mode and autogenerate filters that
only ever look at this prefix's tables.
"""

from logging.config import fileConfig

from alembic import context

from memstate_sql.migrations import run_env

if context.config.config_file_name is not None:
    fileConfig(context.config.config_file_name, disable_existing_loggers=False)

run_env()
