"""Hook protocols (memstate's), called inside the operation's database transaction."""

from __future__ import annotations

from typing import Any, Protocol

from memstate_sql.facts import Fact, Operation, SearchResult


class MemoryHook(Protocol):
    """Called once per changed fact, after the operation's writes and before COMMIT.

    An exception from a hook is wrapped in `HookError` and rolls the whole
    operation back. If the unit of work is retried after a transient database
    failure, hooks of the failed attempt may have been called already: a hook
    that writes outside the database must be idempotent per `(op, fact_id)`.
    """

    def __call__(self, op: Operation, fact_id: str, fact: Fact | None) -> None: ...

    def search(
        self,
        query: str,
        limit: int = 5,
        filters: dict[str, Any] | None = None,
        score_threshold: float | None = None,
    ) -> list[SearchResult]: ...


class AsyncMemoryHook(Protocol):
    """The asyncio form of `MemoryHook`, awaited inside the operation's transaction."""

    async def __call__(self, op: Operation, fact_id: str, fact: Fact | None) -> None: ...

    async def search(
        self,
        query: str,
        limit: int = 5,
        filters: dict[str, Any] | None = None,
        score_threshold: float | None = None,
    ) -> list[SearchResult]: ...
