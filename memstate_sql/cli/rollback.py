"""`rollback`: undo a session's newest operations, with a plan shown first."""

from __future__ import annotations

import sys
from typing import Any

from memstate_sql.cli.context import Target
from memstate_sql.cli.errors import FAILED, USAGE, CliError
from memstate_sql.cli.reading import describe
from memstate_sql.cli.render import compact, table, to_json
from memstate_sql.errors import ConflictError
from memstate_sql.hooks import HookSet
from memstate_sql.operations import Operations
from memstate_sql.records import TxRecord, singleton_token
from memstate_sql.registry import Constraint
from memstate_sql.repository import Repository


def undo_effect(entry: TxRecord) -> str:
    """What undoing one log entry does (mirrors `StoreCore._undo`)."""
    if entry.op in ("COMMIT", "COMMIT_EPHEMERAL", "UPDATE", "PROMOTE"):
        if entry.fact_before:
            return f"restore {entry.fact_id} to " + compact(entry.fact_before.get("payload"))
        return f"delete {entry.fact_id}"
    if entry.op == "DELETE":
        return f"re-create {entry.fact_id} as " + compact((entry.fact_before or {}).get("payload"))
    if entry.op == "DISCARD_SESSION":
        restored = entry.discarded or []
        return f"restore {len(restored)} discarded fact(s)" if restored else "nothing to restore"
    return "nothing"


def recover_constraints(repo: Repository) -> dict[str, Constraint]:
    """The `Constraint` of each type, recovered from its rows.

    Constraints live in the application (`register_schema`), not in the database; a rollback
    restores facts from their log images and must give them back their singleton token and
    immutable flag. The singleton key of a type is the payload key whose value's token is the
    token stored on a row of that type.
    """
    found: dict[str, Constraint] = {}
    for fact in repo.constraint_samples():
        key = None
        if fact.singleton is not None:
            matches = (k for k, v in fact.payload.items() if v is not None and singleton_token(v) == fact.singleton)
            key = next(matches, None)
        found[fact.type] = Constraint(singleton_key=key, immutable=fact.immutable)
    return found


def confirm(question: str, assume_yes: bool) -> None:
    if assume_yes:
        return
    if not sys.stdin.isatty():
        raise CliError("refusing to change the database without confirmation: pass --yes", USAGE)
    sys.stderr.write(f"{question} [y/N] ")
    sys.stderr.flush()
    answer = sys.stdin.readline().strip().lower()
    if answer not in ("y", "yes"):
        raise CliError("aborted; nothing was changed", FAILED)


def plan_doc(entry: TxRecord) -> dict[str, Any]:
    return {**entry.doc(), "reverted_by": entry.reverted_by, "undo": undo_effect(entry)}


def cmd_rollback(args: Any) -> int:
    if args.steps < 1:
        raise CliError("--steps must be >= 1", USAGE)
    session = None if args.no_session else args.session
    which = f"session {session!r}" if session is not None else "operations without a session"
    with Target.from_args(args).open(create=False) as storage:
        plan: list[TxRecord] = storage.transaction(
            lambda repo: repo.tx_log(session, limit=args.steps), write=False, name="rollback plan"
        )
        if not plan:
            raise CliError(f"nothing to roll back: {which} has no active log entries", FAILED)
        if not args.json or args.dry_run:
            if args.json:
                print(to_json({"dry_run": True, "entries": [plan_doc(e) for e in plan]}))
            else:
                print(f"Rolling back {len(plan)} operation(s) of {which}, newest first:")
                print(
                    table(
                        ["seq", "op", "fact", "was", "undo"],
                        [[e.seq, e.op, e.fact_id or "", describe(e.doc()), undo_effect(e)] for e in plan],
                    )
                )
                if len(plan) < args.steps:
                    print(f"(only {len(plan)} of the {args.steps} steps asked for exist)")
        if args.dry_run:
            if not args.json:
                print("dry run: nothing was changed")
            return 0
        confirm(f"Undo these {len(plan)} operation(s)?", args.yes)
        expected = [e.uuid for e in plan]

        def apply(repo: Repository) -> list[dict[str, Any]]:
            current = [e.uuid for e in repo.tx_log(session, limit=args.steps, lock=True)]
            if current != expected:
                raise ConflictError("the log changed since the plan was shown; nothing was rolled back, run it again")
            ops = Operations(HookSet(), recover_constraints(repo), storage.max_payload_bytes)
            return [e.doc() for e in ops.rollback(repo, session, args.steps)]

        undone = storage.transaction(apply, name="rollback")
    if args.json:
        print(to_json({"dry_run": False, "undone": undone}))
    else:
        print(f"rolled back {len(undone)} operation(s) of {which}")
    return 0
