"""`sweep` and `prune-log`: retention of one namespace's facts and log (`SQLStorage.sweep`, `compact_log`)."""

from __future__ import annotations

import click

from memstate_sql.cli.base import command
from memstate_sql.cli.context import Target, settings
from memstate_sql.cli.errors import USAGE, CliError
from memstate_sql.cli.output import emit_json
from memstate_sql.cli.rollback import confirm


def _check_batch(batch_size: int) -> None:
    if batch_size < 1:
        raise CliError("--batch-size must be >= 1", USAGE)


@command("sweep", "delete expired facts, in bounded batches (each one transaction)")
@click.option("--limit", type=int, default=None, help="delete at most this many facts (default: all expired now)")
@click.option("--batch-size", type=int, default=1000, show_default=True, help="facts per transaction")
def sweep_cmd(limit: int | None, batch_size: int) -> int:
    """Delete the namespace's expired facts with their EXPIRE log entries. Expired facts are already
    invisible to every reader; sweeping reclaims their rows. Safe to run from several processes at once."""
    _check_batch(batch_size)
    if limit is not None and limit < 0:
        raise CliError("--limit must be >= 0", USAGE)
    target = Target.current()
    with target.open(create=False) as storage:
        swept = storage.sweep(limit, batch_size=batch_size)
    if settings().json:
        emit_json({"database": target.shown, "namespace": storage.namespace, "swept": swept})
    else:
        print(f"swept {swept} expired fact(s) from {target.describe()}")
    return 0


@command("prune-log", "remove log entries older than a horizon, keeping what the facts and verify need")
@click.option("--before", required=True, metavar="TIMESTAMP", help="ISO 8601 horizon: entries logged before it go")
@click.option("--batch-size", type=int, default=1000, show_default=True, help="entries per transaction")
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
def prune_log_cmd(before: str, batch_size: int, yes: bool) -> int:
    """Remove the namespace's log entries logged before --before, except each existing fact's newest
    active entry. Rollbacks that would need a removed entry are refused afterwards."""
    from memstate_sql.timeutil import format_iso, parse_iso

    _check_batch(batch_size)
    try:
        horizon = parse_iso(before)
    except ValueError:
        raise CliError(f"--before {before!r} is not an ISO 8601 timestamp", USAGE) from None
    target = Target.current()
    with target.open(create=False) as storage:
        confirm(f"Remove log entries logged before {format_iso(horizon)} from {target.describe()}?", yes)
        removed = storage.compact_log(horizon, batch_size=batch_size)
    if settings().json:
        emit_json(
            {
                "database": target.shown,
                "namespace": storage.namespace,
                "horizon": format_iso(horizon),
                "removed": removed,
            }
        )
    else:
        print(f"removed {removed} log entries logged before {format_iso(horizon)} from {target.describe()}")
    return 0
