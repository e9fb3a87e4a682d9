"""Hooks: memstate's protocols, and their delivery inside the operation's transaction.

`HookSet` is the one place hooks are called, for the sync and the asyncio store
alike: a hook's result is awaited when it is a coroutine and the store runs in
SQLAlchemy's greenlet bridge (`AsyncMemoryStore`); the sync store refuses an
async hook.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from sqlalchemy import exc as sa_exc

from memstate_sql._compat import await_only, in_greenlet
from memstate_sql.errors import HookError, RetryUnitOfWork, is_joined
from memstate_sql.facts import Fact, Operation, SearchResult
from memstate_sql.records import FactState


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


def invoke(fn: Callable[..., Any], *args: Any) -> Any:
    """Call a hook (or a hook's search); await the result when it is a coroutine.

    Awaiting is possible when the store runs inside the asyncio bridge
    (`AsyncMemoryStore`); a sync `MemoryStore` given an async hook says so.
    """
    result = fn(*args)
    if inspect.isawaitable(result):
        if in_greenlet():
            return await_only(result)
        if inspect.iscoroutine(result):
            result.close()
        raise TypeError(f"{fn!r} is asynchronous; use it with AsyncMemoryStore")
    return result


#: One hook notification: the operation, the fact's id, the fact's new state (None: deleted).
Notification = tuple[Operation, str, "FactState | None"]


class HookSet:
    """The hooks of one store, delivered after an operation's writes and before COMMIT."""

    def __init__(self, hooks: Iterable[Any] = ()) -> None:
        self.hooks: list[Any] = list(hooks)

    def __bool__(self) -> bool:
        return bool(self.hooks)

    def deliver(self, calls: Sequence[Notification]) -> None:
        """Call every hook for every notification; a hook that raises becomes `HookError`."""
        if not self.hooks:
            return  # no Fact models to build
        for op, fact_id, state in calls:
            fact: Fact | None = None
            built = False
            for hook in self.hooks:
                try:
                    # Asked of the class: a mock's invented attribute must not count.
                    notify = getattr(hook, "notify_state", None) if hasattr(type(hook), "notify_state") else None
                    if notify is not None:
                        # memstate_sql's own index hooks (`memstate_sql.outbox.IndexHook`) take the row
                        # itself (its version included): no Fact to build, no row to read again.
                        invoke(notify, op, fact_id, state)
                        continue
                    if not built:
                        fact, built = (None if state is None else Fact.model_validate(state.doc())), True
                    invoke(hook, op, fact_id, fact)
                except RetryUnitOfWork:
                    raise
                except Exception as exc:
                    if isinstance(exc, sa_exc.DBAPIError) and is_joined(exc):
                        # The hook's storage call failed inside this transaction: the unit of work
                        # classifies it (a deadlock is retried, a lost connection reported).
                        raise
                    raise HookError(f"hook {hook!r} failed on {op.value} {fact_id}: {exc!r}") from exc

    def search(
        self, query: str, limit: int, filters: dict[str, Any] | None, score_threshold: float | None
    ) -> list[SearchResult]:
        """The hits of every hook that can search."""
        hits: list[SearchResult] = []
        for hook in self.hooks:
            search = getattr(hook, "search", None)
            if callable(search):
                hits.extend(invoke(search, query, limit, filters, score_threshold) or [])
        return hits
