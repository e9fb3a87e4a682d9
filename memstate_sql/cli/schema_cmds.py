"""`upgrade`, `downgrade`, `current`, `check`: the store's schema migrations (`memstate_sql.migrations`)."""

from __future__ import annotations

import click

from memstate_sql.cli.base import command
from memstate_sql.cli.context import Target, settings
from memstate_sql.cli.output import emit_json
from memstate_sql.cli.rollback import confirm


def _report(target: Target, revision: str | None, head: str, verb: str) -> None:
    status = "up to date" if revision == head else ("empty" if revision is None else "not at head")
    if settings().json:
        emit_json(
            {
                "database": target.shown,
                "table_prefix": target.prefix,
                "schema": target.schema,
                "revision": revision,
                "head": head,
                "status": status,
            }
        )
    else:
        print(f"{verb} {target.describe()}: revision {revision or 'none'} (head {head}, {status})")


@command("upgrade", "create or upgrade the store's tables")
@click.argument("revision", default="head")
def upgrade_cmd(revision: str) -> int:
    """Create or upgrade the store's tables to REVISION (default: head)."""
    from memstate_sql import migrations

    target = Target.current()
    with target.open(create=True, ensure="none") as storage:
        before = migrations.current_revision(storage.engine, table_prefix=target.prefix, schema=target.schema)
        after = migrations.migrate(storage.engine, revision, table_prefix=target.prefix, schema=target.schema)
    head = migrations.head_revision()
    verb = "upgraded"
    if before == after:
        verb = "already at head:" if after == head else "already at that revision:"
    _report(target, after, head, verb)
    return 0


@command("downgrade", "downgrade the store's schema (base removes the tables)")
@click.argument("revision")
@click.option("-y", "--yes", is_flag=True, help="do not ask for confirmation")
def downgrade_cmd(revision: str, yes: bool) -> int:
    """Downgrade the store's schema to REVISION (e.g. -1, or base: drops the tables)."""
    from memstate_sql import migrations

    target = Target.current()
    with target.open(create=False, ensure="none") as storage:
        current = migrations.current_revision(storage.engine, table_prefix=target.prefix, schema=target.schema)
        warning = " (base drops the tables and every fact in them)" if revision == "base" else ""
        if not settings().json:
            print(f"{target.describe()} is at revision {current or 'none'}")
        confirm(f"Downgrade to {revision}{warning}?", yes)
        reached = migrations.downgrade(storage.engine, revision, table_prefix=target.prefix, schema=target.schema)
    _report(target, reached, migrations.head_revision(), "downgraded")
    return 0


@command("current", "show the schema revision of the database")
def current_cmd() -> int:
    """The schema revision the store's tables are at."""
    from memstate_sql import migrations

    target = Target.current()
    with target.open(create=False, ensure="none") as storage:
        revision = migrations.current_revision(storage.engine, table_prefix=target.prefix, schema=target.schema)
    _report(target, revision, migrations.head_revision(), "database")
    return 0


@command("check", "exit 0 when the schema is current, 4 when it is behind or ahead")
def check_cmd() -> int:
    """Exit 0 when the schema is at head; 4 when it is missing, behind or ahead (for deploy scripts)."""
    from memstate_sql import migrations

    target = Target.current()
    with target.open(create=False, ensure="none") as storage:
        migrations.check(storage.engine, table_prefix=target.prefix, schema=target.schema)
        revision = migrations.current_revision(storage.engine, table_prefix=target.prefix, schema=target.schema)
    _report(target, revision, migrations.head_revision(), "ok:")
    return 0
