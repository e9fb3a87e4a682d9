"""The documents the public API exchanges: facts, log entries, search results."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from enum import Enum
from typing import Any

from pydantic import BaseModel, Field


def _new_id() -> str:
    return str(uuid.uuid4())


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Operation(str, Enum):
    """What a log entry (and a hook call) records."""

    COMMIT = "COMMIT"
    COMMIT_EPHEMERAL = "COMMIT_EPHEMERAL"
    UPDATE = "UPDATE"
    DELETE = "DELETE"
    PROMOTE = "PROMOTE"
    DISCARD_SESSION = "DISCARD_SESSION"
    EXPIRE = "EXPIRE"
    """A sweep deleted expired facts (`SQLStorage.sweep`); hooks are told once per fact."""
    COMPACT = "COMPACT"
    """The record of a log compaction (`SQLStorage.compact_log`): its horizon and what it removed."""
    ROLLBACK = "ROLLBACK"
    """The audit record of a rollback (`SQLStorage.history`); never part of `get_tx_log`."""


class Fact(BaseModel):
    """One stored fact: an envelope (id, type, source, session, timestamp) and a JSON payload."""

    id: str = Field(default_factory=_new_id)
    type: str
    payload: dict[str, Any]
    source: str | None = None
    session_id: str | None = None
    ts: datetime = Field(default_factory=utcnow)


class TxEntry(BaseModel):
    """One entry of the transaction log. `seq` is assigned by the database."""

    uuid: str = Field(default_factory=_new_id)
    session_id: str | None
    seq: int
    ts: datetime
    op: Operation
    fact_id: str | None
    fact_before: dict[str, Any] | None = None
    fact_after: dict[str, Any] | None = None
    actor: str | None = None
    reason: str | None = None


class SearchResult(BaseModel):
    """What a search hook returns: a fact id and its relevance score."""

    fact_id: str
    score: float


class ScoredFact(BaseModel):
    """A fact read back from the database together with its search score."""

    fact: Fact
    score: float
