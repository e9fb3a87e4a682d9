"""`upgrade`, `downgrade`, `current`, `check`: the store's schema migrations."""

from __future__ import annotations

from typing import Any

from memstate_sql import migrations
from memstate_sql.cli.context import Target
from memstate_sql.cli.render import to_json
from memstate_sql.cli.rollback import confirm


def _report(args: Any, target: Target, revision: str | None, head: str, verb: str) -> None:
    status = "up to date" if revision == head else ("empty" if revision is None else "not at head")
    if args.json:
        print(
            to_json(
                {
                    "database": target.shown,
                    "table_prefix": target.prefix,
                    "revision": revision,
                    "head": head,
                    "status": status,
                }
            )
        )
    else:
        print(f"{verb} {target.shown} (prefix {target.prefix}): revision {revision or 'none'} (head {head}, {status})")


def cmd_upgrade(args: Any) -> int:
    target = Target.from_args(args)
    with target.open(create=True, ensure="none") as storage:
        revision = migrations.migrate(storage.engine, args.revision, table_prefix=target.prefix, schema=target.schema)
    _report(args, target, revision, migrations.head_revision(), "upgraded")
    return 0


def cmd_downgrade(args: Any) -> int:
    target = Target.from_args(args)
    with target.open(create=False, ensure="none") as storage:
        current = migrations.current_revision(storage.engine, table_prefix=target.prefix, schema=target.schema)
        warning = " (base drops the tables and every fact in them)" if args.revision == "base" else ""
        if not args.json:
            print(f"{target.shown} (prefix {target.prefix}) is at revision {current or 'none'}")
        confirm(f"Downgrade to {args.revision}{warning}?", args.yes)
        revision = migrations.downgrade(storage.engine, args.revision, table_prefix=target.prefix, schema=target.schema)
    _report(args, target, revision, migrations.head_revision(), "downgraded")
    return 0


def cmd_current(args: Any) -> int:
    target = Target.from_args(args)
    with target.open(create=False, ensure="none") as storage:
        revision = migrations.current_revision(storage.engine, table_prefix=target.prefix, schema=target.schema)
    _report(args, target, revision, migrations.head_revision(), "database")
    return 0


def cmd_check(args: Any) -> int:
    """Exit 0 when the schema is at head; `SchemaVersionError` (exit 4) when behind or ahead."""
    target = Target.from_args(args)
    with target.open(create=False, ensure="none") as storage:
        migrations.check(storage.engine, table_prefix=target.prefix, schema=target.schema)
        revision = migrations.current_revision(storage.engine, table_prefix=target.prefix, schema=target.schema)
    _report(args, target, revision, migrations.head_revision(), "ok:")
    return 0
