"""`outbox status | deliver | reconcile`: the external-index outbox (`memstate_sql.dispatcher`).

`deliver` and `reconcile` need the indexes themselves (a Qdrant or Chroma client is configured in
Python): ``--index module:factory`` names a callable that returns an index hook or a list of them (the
hooks your application passes to its store).
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from memstate_sql.cli.base import CONTEXT, EPILOG, command
from memstate_sql.cli.context import Target, settings
from memstate_sql.cli.errors import USAGE, CliError
from memstate_sql.cli.output import emit_json


def load_indexes(spec: str) -> list[Any]:
    """Import ``module:factory`` and call it: an index hook, or a list of them."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise CliError(f"--index {spec!r}: expected module:factory (a callable returning index hooks)", USAGE)
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise CliError(f"--index {spec!r}: {exc}", USAGE) from None
    made = factory() if callable(factory) and not hasattr(factory, "index_name") else factory
    return [made] if hasattr(made, "index_name") else list(made)


@click.group("outbox", short_help="deliver, inspect and reconcile what external indexes must learn",
             epilog=EPILOG, context_settings=CONTEXT)  # fmt: skip
def outbox_group() -> None:
    """The outbox of external indexes (Qdrant, Chroma hooks): changes recorded in each operation's
    transaction, delivered after COMMIT (docs/search.md)."""


_INDEX = click.option(
    "--index",
    "index_spec",
    required=True,
    metavar="MODULE:FACTORY",
    help="a callable returning the index hook(s) to deliver to, e.g. myapp.memory:index_hooks",
)


@command("status", "rows waiting per index: pending, due, leased, failing, oldest, last error")
def status_cmd() -> int:
    """What each external index has not received yet, in this namespace."""
    from memstate_sql.dispatcher import outbox_status

    target = Target.current()
    with target.open(create=False) as storage:
        found = outbox_status(storage)
    if settings().json:
        emit_json({"database": target.shown, "namespace": storage.namespace, "indexes": found})
    elif not found:
        print(f"outbox of {target.describe()} is empty: every index has every change")
    else:
        for row in found:
            print(
                f"{row['target']}: {row['pending']} pending ({row['due']} due, {row['leased']} leased, "
                f"{row['failing']} failing, oldest {row['oldest']})"
                + (f"; last error: {row['last_error']}" if row["last_error"] else "")
            )
    return 0


@command("deliver", "deliver the outbox to the indexes now (safe alongside running dispatchers)")
@_INDEX
@click.option("--batch-size", type=int, default=100, show_default=True, help="rows claimed per transaction")
@click.option("--max-rounds", type=int, default=None, help="stop after this many rounds (default: until done)")
def deliver_cmd(index_spec: str, batch_size: int, max_rounds: int | None) -> int:
    """Deliver every due change to the indexes --index returns; exit 1 when some deliveries failed
    (they are retried later, with backoff)."""
    from memstate_sql.dispatcher import Dispatcher

    if batch_size < 1:
        raise CliError("--batch-size must be >= 1", USAGE)
    indexes = load_indexes(index_spec)
    target = Target.current()
    with target.open(create=False) as storage:
        report = Dispatcher(storage, indexes, batch_size=batch_size).deliver(max_rounds)
    if settings().json:
        emit_json({"database": target.shown, "namespace": storage.namespace, **report.doc()})
    else:
        print(f"delivered {report.delivered} change(s), {report.failed} failed, to {target.describe()}'s indexes")
    return 1 if report.failed else 0


@command("reconcile", "compare indexes with the facts; repair missing, stale and ghost entries")
@_INDEX
@click.option("--dry-run", is_flag=True, help="only report what differs")
def reconcile_cmd(index_spec: str, dry_run: bool) -> int:
    """Compare each index with the namespace's facts and repair both directions (puts what it misses or
    holds at another version, removes entries of facts that do not exist)."""
    from memstate_sql.dispatcher import reconcile_many

    indexes = load_indexes(index_spec)
    target = Target.current()
    with target.open(create=False) as storage:
        reports = reconcile_many(storage, indexes, dry_run=dry_run)
    if settings().json:
        emit_json({"database": target.shown, "namespace": storage.namespace, "indexes": [r.doc() for r in reports]})
    else:
        for r in reports:
            verb = "would repair" if dry_run else "repaired"
            print(
                f"{r.index}: {r.checked} facts checked; {verb} {len(r.missing)} missing, {len(r.stale)} stale, "
                f"{len(r.ghosts)} ghost entries"
            )
    return 0


for _cmd in (status_cmd, deliver_cmd, reconcile_cmd):
    outbox_group.add_command(_cmd)
