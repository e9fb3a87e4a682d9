"""Planning a rollback: what it would undo, and what it would destroy.

A rollback undoes a session's newest active log entries, newest first. Undoing
an entry puts each fact it changed back to its state before the entry. That is
only safe when nothing outside the undone entries changed the fact since: if
another session updated it, restoring the old image would silently discard that
work (memstate does exactly this). `plan()` simulates the undo inside the
transaction and reports two kinds of conflict per fact:

* *logged*: an active log entry newer than the undone one, and not itself being
  undone, touched the fact (an update, a delete, a promotion, a session discard);
* *state*: the fact's current row is not what the undone entry left behind
  (a write that bypassed the store's log, such as `SQLStorage.save`).

`StoreCore.rollback` refuses a plan with conflicts (`RollbackConflictError`, a
`ConflictError`, nothing changed) unless forced. A forced rollback also marks
the newer single-fact entries it overrides as undone by itself, so the active
log keeps describing the facts table exactly; a newer *session discard* cannot
be overridden that way (it covers other facts too) and is refused even when
forced.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel

from memstate_sql.errors import ConflictError
from memstate_sql.facts import Operation
from memstate_sql.repository import FactState, Repository, TxRecord

_SINGLE_FACT_OPS = {
    Operation.COMMIT.value,
    Operation.COMMIT_EPHEMERAL.value,
    Operation.UPDATE.value,
    Operation.PROMOTE.value,
}


class RollbackAction(BaseModel):
    """One fact change a rollback makes, in the order it makes them."""

    seq: int
    """The log entry being undone."""
    op: str
    fact_id: str
    action: Literal["restore", "delete", "none"]
    """``restore``: write `restore_to`; ``delete``: remove the fact; ``none``: already as it should be."""
    restore_to: dict[str, Any] | None = None
    current: dict[str, Any] | None = None
    """The fact as the plan found it just before this change (None: absent)."""


class RollbackConflict(BaseModel):
    """A fact the rollback would overwrite although it changed after the undone entry."""

    fact_id: str
    seq: int
    """The log entry being undone."""
    reason: str
    later_seq: int | None = None
    """The newer active log entry that touched the fact (None: an unlogged change)."""
    later_op: str | None = None
    later_uuid: str | None = None
    later_session_id: str | None = None


class RollbackPlan(BaseModel):
    """What `rollback(session_id, steps)` would do now (`MemoryStore.plan_rollback`)."""

    session_id: str | None
    steps: int
    entries: list[dict[str, Any]]
    """The log entries it would undo, newest first (memstate's log-entry form)."""
    actions: list[RollbackAction]
    conflicts: list[RollbackConflict]

    @property
    def ok(self) -> bool:
        """True when the rollback would not override any later change."""
        return not self.conflicts


class RollbackConflictError(ConflictError):
    """A rollback was refused because it would override later changes; nothing was changed.

    `plan` is the refused `RollbackPlan` (its `conflicts` say which facts and entries).
    """

    def __init__(self, message: str, plan: RollbackPlan) -> None:
        super().__init__(message)
        self.plan = plan


def effects(entry: TxRecord) -> list[tuple[str, dict[str, Any] | None, dict[str, Any] | None, bool]]:
    """(fact id, state the entry left, state before it, whether the left state is known) per fact."""
    if entry.op in _SINGLE_FACT_OPS and entry.fact_id:
        return [(entry.fact_id, entry.fact_after, entry.fact_before, entry.fact_after is not None)]
    if entry.op == Operation.DELETE.value and entry.fact_id:
        return [(entry.fact_id, None, entry.fact_before, True)]
    if entry.op == Operation.DISCARD_SESSION.value:
        return [(str(doc["id"]), None, doc, True) for doc in entry.discarded or [] if isinstance(doc, Mapping)]
    return []


def touched(entry: TxRecord) -> set[str]:
    return {fid for fid, *_ in effects(entry)} | ({entry.fact_id} if entry.fact_id else set())


def later_entries(repo: Repository, entries: Sequence[TxRecord]) -> list[tuple[TxRecord, str, TxRecord]]:
    """(undone entry, fact id, newer active entry outside `entries` that touched the fact)."""
    fact_ids = sorted({fid for e in entries for fid, *_ in effects(e)})
    undone = {e.uuid for e in entries}
    oldest = min((e.seq for e in entries), default=0)
    later = [e for e in repo.active_entries_after(oldest, fact_ids) if e.uuid not in undone]
    found = []
    for entry in entries:
        for fid, *_ in effects(entry):
            found += [(entry, fid, other) for other in later if other.seq > entry.seq and fid in touched(other)]
    return found


def plan(
    repo: Repository, session_id: str | None, steps: int, entries: Sequence[TxRecord], *, lock: bool
) -> RollbackPlan:
    """Simulate undoing `entries` (newest first) against the current rows; nothing is written."""
    fact_ids = sorted({fid for e in entries for fid, *_ in effects(e)})
    # Lock the facts first: every writer that changed them has committed (and logged) by then.
    current: dict[str, dict[str, Any] | None] = {}
    for fid in fact_ids:
        state: FactState | None = repo.get(fid, lock=lock)
        current[fid] = None if state is None else state.doc()
    later = later_entries(repo, entries)

    actions: list[RollbackAction] = []
    conflicts: list[RollbackConflict] = []
    for entry in entries:
        for fid, left, before, known in effects(entry):
            for _, _, other in (item for item in later if item[0] is entry and item[1] == fid):
                conflicts.append(
                    RollbackConflict(
                        fact_id=fid,
                        seq=entry.seq,
                        reason=f"{other.op} at seq {other.seq} changed the fact after seq {entry.seq}",
                        later_seq=other.seq,
                        later_op=other.op,
                        later_uuid=other.uuid,
                        later_session_id=other.session_id,
                    )
                )
            now = current[fid]
            if (
                known
                and _canon(now) != _canon(left)
                and not any(c.fact_id == fid and c.later_seq is not None for c in conflicts)
            ):
                conflicts.append(
                    RollbackConflict(
                        fact_id=fid,
                        seq=entry.seq,
                        reason=f"the fact is not in the state seq {entry.seq} left it in (changed without a log entry)",
                    )
                )
            if before is not None:
                action: Literal["restore", "delete", "none"] = "restore"
            else:
                action = "delete" if now is not None else "none"
            actions.append(
                RollbackAction(seq=entry.seq, op=entry.op, fact_id=fid, action=action, restore_to=before, current=now)
            )
            current[fid] = None if before is None else dict(before)
    return RollbackPlan(
        session_id=session_id,
        steps=steps,
        entries=[e.doc() for e in entries],
        actions=actions,
        conflicts=conflicts,
    )


def describe(conflicts: Sequence[RollbackConflict]) -> str:
    shown = "; ".join(f"fact {c.fact_id}: {c.reason}" for c in conflicts[:5])
    more = f" (and {len(conflicts) - 5} more)" if len(conflicts) > 5 else ""
    return shown + more


def _canon(doc: dict[str, Any] | None) -> dict[str, Any] | None:
    """A fact document in comparable form: the same instant written as ``Z`` or ``+00:00`` (log entries
    imported from memstate), or with or without microseconds, compares equal; absent optional fields are None."""
    if doc is None:
        return None
    out = {key: doc.get(key) for key in ("id", "type", "payload", "source", "session_id")}
    ts = doc.get("ts")
    if isinstance(ts, str):
        try:
            parsed = datetime.fromisoformat(ts.replace("Z", "+00:00"))
            ts = parsed.replace(tzinfo=timezone.utc) if parsed.tzinfo is None else parsed.astimezone(timezone.utc)
        except ValueError:
            pass
    out["ts"] = ts
    return out
