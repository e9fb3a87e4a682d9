"""Hook protocols (memstate's), called inside the operation's database transaction."""

from __future__ import annotations

from typing import Any, Protocol

from memstate_sql.facts import Fact, Operation, SearchResult


class MemoryHook(Protocol):
    """Called once per changed fact, after the operation's writes and before COMMIT.

    Contract (docs/reliability.md):

    * An exception from a hook is wrapped in `HookError` and rolls the whole
      operation back (fact rows, log entries, and whatever the hook wrote
      through a storage of the same store, which joins the transaction).
    * **Hooks can be called again.** A transient database failure (deadlock,
      serialization failure, busy SQLite, a lost unique-key race) re-runs the
      whole operation in a new transaction, hooks included, up to
      ``max_attempts`` times. The calls of a failed attempt were rolled back
      in the database but not outside it: a hook that writes elsewhere (a
      vector index, a queue) must be idempotent for the same
      ``(op, fact_id, fact)``, e.g. an upsert keyed by `fact_id`.
    * A hook can also be called for an operation that finally fails (a later
      hook raised, the connection was lost, the retries ran out); outside
      effects of such calls must be reconciled by the caller (or by reading
      the log, which only holds committed operations).
    * A database error raised by a storage call the hook makes on the same
      store is the operation's own error (retried or reported as
      `TransientStorageError` / `ConnectionLost`), not a `HookError`.
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
