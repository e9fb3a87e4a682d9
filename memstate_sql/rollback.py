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

`Operations.rollback` (memstate_sql.operations) refuses a plan with conflicts (`RollbackConflictError`, a
`ConflictError`, nothing changed) unless forced. A forced rollback also marks
the newer single-fact entries it overrides as undone by itself, so the active
log keeps describing the facts table exactly; a newer *session discard* cannot
be overridden that way (it covers other facts too) and is refused even when
forced.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from memstate_sql import logentry
from memstate_sql.records import FactState, RollbackAction, RollbackConflict, RollbackPlan, TxRecord
from memstate_sql.repository import Repository


def newer(other: TxRecord, entry: TxRecord) -> bool:
    """Whether `other` was logged after `entry`: by the session position within one session (its
    commit order on every engine), by `seq` across sessions and between entries without a session,
    which have no positions (see docs/log-order.md)."""
    if other.session_seq is not None and entry.session_seq is not None and other.session_id == entry.session_id:
        return other.session_seq > entry.session_seq
    return other.seq > entry.seq


def later_entries(repo: Repository, entries: Sequence[TxRecord]) -> list[tuple[TxRecord, str, TxRecord]]:
    """(undone entry, fact id, newer active entry outside `entries` that touched the fact)."""
    fact_ids = sorted({e.fact_id for entry in entries for e in logentry.effects(entry)})
    undone = {e.uuid for e in entries}
    oldest = min((e.seq for e in entries), default=0)
    later = [e for e in repo.active_entries_after(oldest, fact_ids) if e.uuid not in undone]
    found = []
    for entry in entries:
        for effect in logentry.effects(entry):
            found += [
                (entry, effect.fact_id, other)
                for other in later
                if newer(other, entry) and logentry.touches(other, effect.fact_id)
            ]
    return found


#: Reads the current rows of some facts (id -> state; absent: no live row), e.g. `Repository.facts_by_id`.
Read = Callable[[Sequence[str]], Mapping[str, FactState]]


def fact_ids(entries: Sequence[TxRecord]) -> list[str]:
    """The facts undoing `entries` would change, sorted."""
    return sorted({e.fact_id for entry in entries for e in logentry.effects(entry)})


def plan(
    repo: Repository, session_id: str | None, steps: int, entries: Sequence[TxRecord], *, read: Read
) -> RollbackPlan:
    """Simulate undoing `entries` (newest first) against the current rows, which `read` reads (in one
    statement; a rollback's `read` locks them, and keeps the states it read for the writes); nothing is
    written."""
    ids = fact_ids(entries)
    # Read (and lock) the facts first: every writer that changed a locked row has committed (and logged) by then.
    found = read(ids)
    current: dict[str, dict[str, Any] | None] = {}
    for fid in ids:
        state = found.get(fid)
        current[fid] = None if state is None else state.doc()
    later = later_entries(repo, entries)

    actions: list[RollbackAction] = []
    conflicts: list[RollbackConflict] = []
    for entry in entries:
        for effect in logentry.effects(entry):
            fid = effect.fact_id
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
                effect.known
                and logentry.comparable(now) != logentry.comparable(effect.after)
                and not any(c.fact_id == fid and c.later_seq is not None for c in conflicts)
            ):
                conflicts.append(
                    RollbackConflict(
                        fact_id=fid,
                        seq=entry.seq,
                        reason=f"the fact is not in the state seq {entry.seq} left it in (changed without a log entry)",
                    )
                )
            target = logentry.undo(effect)
            if target is not None:
                action: Literal["restore", "delete", "none"] = "restore"
            else:
                action = "delete" if now is not None else "none"
            actions.append(
                RollbackAction(seq=entry.seq, op=entry.op, fact_id=fid, action=action, restore_to=target, current=now)
            )
            current[fid] = None if target is None else dict(target)
    return RollbackPlan(
        session_id=session_id,
        steps=steps,
        entries=[e.doc() for e in entries],
        actions=actions,
        conflicts=conflicts,
    )


def may_change_since(repo: Repository, ids: Sequence[str], read: Mapping[str, FactState]) -> bool:
    """Whether another writer may have changed one of the facts `ids` (and logged it) since `read` was
    read and locked in this transaction, so that a rollback must read the later entries again before it
    commits. Not when every one was present (its row locked) and the database keeps other writers off
    locked rows (`DialectSupport.writers_excluded`; never on Galera, whose locks are node-local)."""
    return not repo.dialect.writers_excluded(repo.conn, rows_locked=all(fid in read for fid in ids))


def describe(conflicts: Sequence[RollbackConflict]) -> str:
    shown = "; ".join(f"fact {c.fact_id}: {c.reason}" for c in conflicts[:5])
    more = f" (and {len(conflicts) - 5} more)" if len(conflicts) > 5 else ""
    return shown + more
