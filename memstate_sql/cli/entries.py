"""How the commands put a log entry and a rollback plan into words.

What an entry did to which facts is the library's reading of the log
(`memstate_sql.logentry.effects`); what undoing it does is the library's
rollback plan (`RollbackPlan.actions`). This module only words them: it is the
one place where the command line reads either.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from memstate_sql import logentry
from memstate_sql.cli.output import compact
from memstate_sql.records import RollbackPlan, TxRecord


def _record(entry: Mapping[str, Any]) -> TxRecord:
    """A log entry document (memstate's form, as `get_tx_log` and `history` return) as a log row; a record
    appended in a shape of its own may lack any key but seq, and its ts may be no instant (docs/contract.md)."""
    from memstate_sql.timeutil import utcnow
    from memstate_sql.validation import instant_of

    return TxRecord(
        seq=int(entry.get("seq") or 0),
        uuid=str(entry.get("uuid")),
        op=str(entry.get("op") or ""),
        session_id=entry.get("session_id"),
        fact_id=entry.get("fact_id"),
        actor=entry.get("actor"),
        reason=entry.get("reason"),
        ts=instant_of(entry.get("ts"), utcnow())[0],
        fact_before=entry.get("fact_before"),
        fact_after=entry.get("fact_after"),
        discarded=entry.get("discarded"),
        reverted_by=entry.get("reverted_by"),
    )


def _change(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> str:
    if before is None and after is not None:
        return "created " + compact(after.get("payload"))
    if after is None:
        return "deleted " + compact(before.get("payload")) if before is not None else "deleted"
    changes: list[str] = []
    if before is not None and before.get("session_id") != after.get("session_id"):
        changes.append(f"session {before.get('session_id') or '(global)'} -> {after.get('session_id') or '(global)'}")
    old = (before or {}).get("payload") or {}
    new = after.get("payload") or {}
    for key in sorted(set(old) | set(new)):
        if old.get(key, ...) != new.get(key, ...):
            was = compact(old[key]) if key in old else "(none)"
            now = compact(new[key]) if key in new else "(none)"
            changes.append(f"{key}: {was} -> {now}")
    return "; ".join(changes) or "no change"


def describe(entry: Mapping[str, Any]) -> str:
    """What a log entry changed, in a few words."""
    effects = logentry.effects(_record(entry))
    if entry.get("op") == "ROLLBACK":
        return f"rollback: restored {len(effects)} fact(s)" + (f" ({entry['reason']})" if entry.get("reason") else "")
    if entry.get("op") == "DISCARD_SESSION":
        if effects:
            return f"discarded {len(effects)} fact(s)"
        return str(entry.get("reason") or "session discarded")
    if not effects:
        return str(entry.get("reason") or "")
    texts = [_change(e.before, e.after) if e.known else "changed (no after-image logged)" for e in effects]
    return "; ".join(texts)


def undo_text(plan: RollbackPlan, seq: int) -> str:
    """What the rollback in `plan` does for the entry `seq`."""
    actions = [a for a in plan.actions if a.seq == seq]
    if len(actions) > 1 or any(a.op == "DISCARD_SESSION" for a in actions):
        restored = sum(1 for a in actions if a.action == "restore")
        return f"restore {restored} discarded fact(s)" if restored else "nothing to restore"
    if not actions:
        return "nothing"
    action = actions[0]
    if action.action == "delete":
        return f"delete {action.fact_id}"
    if action.action == "none":
        return f"nothing ({action.fact_id} is already absent)"
    payload = compact((action.restore_to or {}).get("payload"))
    if action.current is None:
        return f"re-create {action.fact_id} as {payload}"
    return f"restore {action.fact_id} to {payload}"


def conflict_lines(plan: RollbackPlan) -> list[str]:
    """The later changes the planned rollback would override, one line each."""
    return [f"fact {c.fact_id}: {c.reason}" for c in plan.conflicts]
