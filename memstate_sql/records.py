"""The rows the store reads and writes, as plain immutable records.

`FactState` is one fact row, `TxRecord` one log row; both know their memstate
document form. They sit at the bottom of the layers: everything above reads
and writes these, and only `memstate_sql.repository` maps them to SQL rows.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel

from memstate_sql import jsondoc
from memstate_sql.timeutil import format_iso

#: Length limit of every key string column (ids, types, sessions, sources, actors, singleton tokens):
#: 191 characters of utf8mb4 fit MySQL's 767-byte index prefix limit.
KEY_LENGTH = 191

#: The namespace of a storage opened without one: the only namespace of an ``ms_0001`` database.
DEFAULT_NAMESPACE = ""


def singleton_token(value: Any) -> str:
    """The value of a singleton key as stored in the unique index.

    Canonical JSON keeps types apart (``true``, ``1`` and ``"1"`` differ) and
    numbers are normalised so that ``1`` and ``1.0`` are the same key, as they
    are equal under the filter contract. Long values are replaced by a digest.
    """

    def norm(v: Any) -> Any:
        if isinstance(v, float) and v.is_integer():
            return int(v)
        if isinstance(v, dict):
            return {k: norm(v[k]) for k in sorted(v)}
        if isinstance(v, list):
            return [norm(i) for i in v]
        return v

    text = jsondoc.dumps(norm(value))
    if len(text) > KEY_LENGTH:
        return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()
    return text


def singleton_slot(fact_id: str, token: str | None) -> str:
    """The value of the facts table's unique ``(namespace, type, singleton_slot)`` key.

    A singleton fact's slot is its token; any other fact's slot is ``#`` and its id (a digest
    when long), unique per fact and never equal to a token (canonical JSON and ``sha256:``
    digests never start with ``#``). No fact leaves the key NULL: Galera certifies NULLs of a
    unique key as equal, so two concurrent inserts of non-singleton facts of one type on
    different nodes would conflict (docs/scaling.md).
    """
    if token is not None:
        return token
    if len(fact_id) < KEY_LENGTH:
        return "#" + fact_id
    return "#sha256:" + hashlib.sha256(fact_id.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class FactState:
    """One fact row."""

    id: str
    type: str
    payload: dict[str, Any]
    session_id: str | None
    source: str | None
    ts: datetime
    version: int = 1
    immutable: bool = False
    singleton: str | None = None
    expires_at: datetime | None = None
    """When the fact stops existing for every reader (None: never)."""
    document: dict[str, Any] | None = None
    """The document the fact was saved with, without its payload, when the columns cannot render it
    (`SQLStorage.save` of extra or missing keys, another ts spelling); None: the canonical rendering."""

    def envelope(self) -> dict[str, Any]:
        """The canonical rendering of the columns, without the payload."""
        env = {
            "id": self.id,
            "type": self.type,
            "source": self.source,
            "session_id": self.session_id,
            "ts": format_iso(self.ts),
        }
        if self.expires_at is not None:  # a memstate_sql extension, present only on expiring facts
            env["expires_at"] = format_iso(self.expires_at)
        return env

    def doc(self) -> dict[str, Any]:
        """The memstate document of the fact (what `load` and `query` return): the document it was
        saved with, or the canonical rendering of its columns."""
        if self.document is not None:
            return {**self.document, "payload": self.payload}
        doc = {
            "id": self.id,
            "type": self.type,
            "payload": self.payload,
            "source": self.source,
            "session_id": self.session_id,
            "ts": format_iso(self.ts),
        }
        if self.expires_at is not None:  # a memstate_sql extension, present only on expiring facts
            doc["expires_at"] = format_iso(self.expires_at)
        return doc

    def evolve(self, **changes: Any) -> FactState:
        """This state with `changes`; a saved document follows them (`carry`)."""
        new = replace(self, **changes)
        if self.document is None or "document" in changes:
            return new
        return new.carry(self)

    def carry(self, previous: FactState) -> FactState:
        """This state keeping what `previous` kept of the document it was saved with: its extra keys, its
        missing keys and its spellings of the fields this state leaves unchanged; changed fields are
        written canonically (as memstate's store writes them over a loaded document)."""
        if previous.document is None:
            return self
        old, new = previous.envelope(), self.envelope()
        doc = dict(previous.document)
        for key in ENVELOPE_KEYS:
            if old.get(key, _ABSENT) != new.get(key, _ABSENT):
                if key in new:
                    doc[key] = new[key]
                else:
                    doc.pop(key, None)
        return replace(self, document=None if doc == new else doc)


#: The keys of a fact document held in typed columns (besides the payload).
ENVELOPE_KEYS = ("id", "type", "source", "session_id", "ts", "expires_at")
_ABSENT = object()


@dataclass(frozen=True)
class TxRecord:
    """One log row."""

    seq: int
    uuid: str
    op: str
    session_id: str | None
    fact_id: str | None
    actor: str | None
    reason: str | None
    ts: datetime
    fact_before: dict[str, Any] | None
    fact_after: dict[str, Any] | None
    discarded: list[dict[str, Any]] | None
    reverted_by: str | None
    document: dict[str, Any] | None = None
    """The record `append_tx` was given, without seq and without the images held in `fact_before` /
    `fact_after`, when the columns cannot render it (missing keys, another ts spelling); None: canonical."""
    session_seq: int | None = None
    """The entry's position in its session's log (1, 2, 3...); None for an entry without a session
    (those take no position) or one not stored yet. Unlike `seq`, it follows the order in which the
    session's operations committed on every engine."""

    def doc(self) -> dict[str, Any]:
        """The memstate form of the entry: the record `append_tx` was given (with the database's seq), or
        the canonical rendering of the columns (`TxEntry.model_dump(mode="json")`)."""
        if self.document is not None:
            out = {**self.document, "seq": self.seq}
            if self.fact_before is not None:
                out["fact_before"] = self.fact_before
            if self.fact_after is not None:
                out["fact_after"] = self.fact_after
            return out
        return self.canonical()

    def canonical(self) -> dict[str, Any]:
        """The canonical rendering of the columns."""
        return {
            "uuid": self.uuid,
            "session_id": self.session_id,
            "seq": self.seq,
            "ts": format_iso(self.ts),
            "op": self.op,
            "fact_id": self.fact_id,
            "fact_before": self.fact_before,
            "fact_after": self.fact_after,
            "actor": self.actor,
            "reason": self.reason,
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
