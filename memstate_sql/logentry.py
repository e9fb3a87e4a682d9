"""What a log entry did to the facts, defined once.

Every reader that interprets the log asks this module: rollback planning
(what undoing an entry restores), `verify` (replaying the active log must give
the facts table), `history` (which entries touched a fact) and the CLI.

Kinds of entries (`Operation`):

* single-fact entries (COMMIT, COMMIT_EPHEMERAL, UPDATE, PROMOTE, DELETE, EXPIRE)
  name their fact in ``fact_id`` and carry its images before and after; EXPIRE
  (written by a sweep, without a session, for a fact whose expiry had passed)
  removes it like DELETE, and no rollback undoes it (`NOT_UNDOABLE_OPS`);
* DISCARD_SESSION deletes every fact listed (as documents) in ``discarded``;
* ROLLBACK is the audit record of one rollback: its ``uuid`` is the id that the
  undone entries carry in ``reverted_by``, it names who and why, and lists each
  fact it restored or deleted (``discarded`` holds ``{"id", "before", "after"}``
  per fact). A ROLLBACK entry is not part of the *active* log (it is marked as
  reverted by itself): it restores exactly the state that the remaining active
  entries describe, so replaying the active log never needs it, and it cannot
  itself be rolled back.

A log entry appended through `SQLStorage.append_tx` may carry no images (memstate
writes such records); its effects are then unknown (`Effect.known` is false).
memstate's own DISCARD_SESSION entries list nothing: they deleted every fact of
their session that existed at that point, which only a replay of the log can
tell (pass the replayed `state` to `effects`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from memstate_sql.facts import Operation
from memstate_sql.records import TxRecord
from memstate_sql.timeutil import canonical_iso

#: Entries that change exactly the fact named in ``fact_id``.
SINGLE_FACT_OPS = frozenset(
    op.value
    for op in (
        Operation.COMMIT,
        Operation.COMMIT_EPHEMERAL,
        Operation.UPDATE,
        Operation.PROMOTE,
        Operation.DELETE,
        Operation.EXPIRE,
    )
)
#: Single-fact entries after which the fact is gone.
REMOVING_OPS = frozenset({Operation.DELETE.value, Operation.EXPIRE.value})
#: Entries that list the facts they changed in their document list.
MULTI_FACT_OPS = frozenset({Operation.DISCARD_SESSION.value, Operation.ROLLBACK.value})
#: Entries a session rollback never undoes: a sweep deleted facts that had expired anyway.
NOT_UNDOABLE_OPS = frozenset({Operation.EXPIRE.value})


@dataclass(frozen=True)
class Effect:
    """One fact an entry changed: its document before and after the entry (None: absent)."""

    fact_id: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    known: bool = True
    """False when the entry did not record the state it left (an ``append_tx`` record without images)."""


def effects(entry: TxRecord, state: Mapping[str, Mapping[str, Any] | None] | None = None) -> list[Effect]:
    """The facts `entry` changed, in the order it changed them.

    `state`: the facts as the log left them just before `entry` (id → document, None: absent), when the
    caller replays the log; needed only for a session discard that does not list its facts (memstate's).
    """
    if entry.op in SINGLE_FACT_OPS:
        if not entry.fact_id:
            return []
        if entry.op in REMOVING_OPS:
            return [Effect(entry.fact_id, entry.fact_before, None)]
        return [Effect(entry.fact_id, entry.fact_before, entry.fact_after, entry.fact_after is not None)]
    docs: list[Mapping[str, Any]] = [
        doc for doc in entry.discarded or [] if isinstance(doc, Mapping) and doc.get("id") is not None
    ]
    if entry.op == Operation.DISCARD_SESSION.value:
        if entry.discarded is None and state is not None:
            docs = [doc for doc in state.values() if doc is not None and doc.get("session_id") == entry.session_id]
        return [Effect(str(doc["id"]), dict(doc), None) for doc in docs]
    if entry.op == Operation.ROLLBACK.value:
        return [Effect(str(doc["id"]), _doc(doc.get("before")), _doc(doc.get("after"))) for doc in docs]
    return []


def touched(entry: TxRecord) -> set[str]:
    """Ids of the facts `entry` changed or names."""
    return {e.fact_id for e in effects(entry)} | ({entry.fact_id} if entry.fact_id else set())


def touches(entry: TxRecord, fact_id: str) -> bool:
    return fact_id in touched(entry)


def is_active(entry: TxRecord) -> bool:
    """Whether `entry` belongs to the active log (not undone, not a rollback's own record)."""
    return entry.reverted_by is None


def undo(effect: Effect) -> dict[str, Any] | None:
    """The state undoing `effect` puts its fact in (None: the fact is removed)."""
    return effect.before


def rollback_record(changes: Iterable[Effect]) -> list[dict[str, Any]]:
    """The document list of a ROLLBACK entry, one item per fact it changed."""
    return [{"id": e.fact_id, "before": e.before, "after": e.after} for e in changes]


def comparable(doc: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A fact document in comparable form: the same instant written ``Z`` or ``+00:00`` (entries imported
    from memstate), or with or without microseconds, compares equal; absent optional fields are None."""
    if doc is None:
        return None
    out = {key: doc.get(key) for key in ("id", "type", "payload", "source", "session_id")}
    out["ts"] = canonical_iso(doc.get("ts"))
    return out


def _doc(value: Any) -> dict[str, Any] | None:
    return dict(value) if isinstance(value, Mapping) else None
