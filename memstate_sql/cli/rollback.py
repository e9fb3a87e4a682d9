"""`rollback`: undo a session's newest operations through `MemoryStore`, with the plan shown first."""

from __future__ import annotations

import sys

import click

from memstate_sql.cli.base import command
from memstate_sql.cli.context import Target, settings
from memstate_sql.cli.entries import conflict_lines, describe, undo_text
from memstate_sql.cli.errors import FAILED, USAGE, CliError
from memstate_sql.cli.output import emit_json, table
from memstate_sql.cli.reading import session_choice
from memstate_sql.errors import ConflictError
from memstate_sql.records import RollbackPlan
from memstate_sql.registry import Constraint
from memstate_sql.storage import SQLStorage
from memstate_sql.store import MemoryStore


def confirm(question: str, assume_yes: bool) -> None:
    """Ask on the terminal; without one (or on a declined or unanswered question) nothing changes and
    the command fails (exit 1)."""
    if assume_yes:
        return
    if not sys.stdin.isatty():
        raise CliError("refusing to change the database without confirmation: pass --yes", FAILED)
    try:
        agreed = click.confirm(question, default=False, err=True)
    except click.Abort:
        agreed = False
    if not agreed:
        raise CliError("aborted; nothing was changed", FAILED)


def store_for(storage: SQLStorage, constraints: dict[str, Constraint]) -> MemoryStore:
    """A store on `storage` that knows `constraints` (recovered from the rows: the command line has no
    application to register them), so that restored facts keep their singleton key and immutable flag."""
    for typename, constraint in constraints.items():
        storage.register_constraint(typename, constraint)
    return MemoryStore(storage)


def plan_doc(plan: RollbackPlan) -> list[dict[str, object]]:
    return [{**entry, "reverted_by": None, "undo": undo_text(plan, int(entry["seq"]))} for entry in plan.entries]


def show_plan(plan: RollbackPlan, which: str, steps: int) -> None:
    print(f"Rolling back {len(plan.entries)} operation(s) of {which}, newest first:")
    table(
        ["seq", "op", "fact", "was", "undo"],
        [
            [e["seq"], e.get("op") or "", e.get("fact_id") or "", describe(e), undo_text(plan, int(e["seq"]))]
            for e in plan.entries
        ],
    )
    if len(plan.entries) < steps:
        print(f"(only {len(plan.entries)} of the {steps} steps asked for exist)")
    if plan.conflicts:
        print("It would override later changes (refused unless --force):")
        for line in conflict_lines(plan):
            print(f"  {line}")


@command("rollback", "undo a session's newest operations")
@click.option("--session", metavar="ID", help="the session to roll back")
@click.option("--no-session", is_flag=True, help="roll back operations logged without a session")
@click.option("--steps", type=int, default=1, show_default=True, help="how many operations to undo")
@click.option("--dry-run", is_flag=True, help="show what would change and stop")
@click.option("--force", is_flag=True, help="override later changes to the same facts (MemoryStore.rollback force)")
@click.option("-y", "--yes", is_flag=True, help="do not ask for confirmation")
def rollback_cmd(session: str | None, no_session: bool, steps: int, dry_run: bool, force: bool, yes: bool) -> int:
    """Undo a session's newest operations (one of --session or --no-session is required).

    Shows the plan (MemoryStore.plan_rollback), asks, then runs MemoryStore.rollback in one
    transaction that first checks the log still holds the planned entries.
    """
    from memstate_sql import admin

    chosen, session_id = session_choice(session, no_session)
    if not chosen:
        raise CliError("pass --session ID or --no-session", USAGE)
    if steps < 1:
        raise CliError("--steps must be >= 1", USAGE)
    as_json = settings().json
    which = f"session {session_id!r}" if session_id is not None else "operations without a session"
    target = Target.current()
    with target.open(create=False) as storage:
        constraints = admin.recover_constraints(storage)
        plan = store_for(storage, constraints).plan_rollback(session_id, steps)
        if not plan.entries:
            raise CliError(f"nothing to roll back: {which} has no active log entries", FAILED)
        if dry_run:
            if as_json:
                emit_json({"dry_run": True, "entries": plan_doc(plan), "conflicts": conflict_lines(plan)})
            else:
                show_plan(plan, which, steps)
                print("dry run: nothing was changed")
            return 0
        if not as_json:
            show_plan(plan, which, steps)
        confirm(f"Undo these {len(plan.entries)} operation(s)?", yes)
        expected = [(e["seq"], e.get("uuid")) for e in plan.entries]
        # One transaction: the store's operations join it (SAVEPOINTs), so the check and the
        # rollback commit together or not at all.
        with storage.engine.connect() as conn, conn.begin():
            bound = SQLStorage(conn, table_prefix=target.prefix, schema=target.schema, auto_migrate=False)
            store = store_for(bound, constraints)
            now = store.plan_rollback(session_id, steps)
            if [(e["seq"], e.get("uuid")) for e in now.entries] != expected:
                raise ConflictError("the log changed since the plan was shown; nothing was rolled back, run it again")
            store.rollback(session_id, steps, force=force)
    if as_json:
        emit_json({"dry_run": False, "undone": plan.entries})
    else:
        print(f"rolled back {len(plan.entries)} operation(s) of {which}")
    return 0
