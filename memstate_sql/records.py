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

    def doc(self) -> dict[str, Any]:
        """The memstate document of the fact (what `load` and `query` return)."""
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
        return replace(self, **changes)


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
    session_seq: int | None = None
    """The entry's position in its session's log (1, 2, 3...); None for an entry without a session
    (those take no position) or one not stored yet. Unlike `seq`, it follows the order in which the
    session's operations committed on every engine."""

    def doc(self) -> dict[str, Any]:
        """The memstate form of the entry (`TxEntry.model_dump(mode="json")`)."""
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
