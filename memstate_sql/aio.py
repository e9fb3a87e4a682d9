"""The asyncio store and storage: facades over the one sync implementation.

`AsyncSQLStorage` and `AsyncMemoryStore` hold no logic of their own. Each
coroutine runs the corresponding method of `SQLStorage` / `MemoryStore`
inside SQLAlchemy's greenlet bridge (``greenlet_spawn``) on the async engine's
``sync_engine``: database I/O goes through the async driver, async hooks are
awaited in place (inside the operation's transaction), and a retry backoff
sleeps with ``asyncio.sleep``. This is how SQLAlchemy's ``AsyncSession`` runs
the sync ``Session``; it means the sync and async stores cannot drift apart.

The methods between the ``# START GENERATED`` / ``# END GENERATED`` markers are
written by ``tools/generate_async.py`` from the sync classes (same parameters,
annotations, defaults and docstrings): change the sync method, then run
``python -m tools.generate_async``. ``tests/test_async_parity.py`` fails when a
sync method has no twin, when they differ, or when this file is stale.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from itertools import islice
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Connection
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from memstate_sql import jsondoc
from memstate_sql._compat import await_only, greenlet_spawn
from memstate_sql.dialects import async_engine_for, async_url
from memstate_sql.errors import ValidationFailed
from memstate_sql.hooks import AsyncMemoryHook
from memstate_sql.indexes import IndexedPath, IndexKind
from memstate_sql.models import DEFAULT_PREFIX
from memstate_sql.registry import Constraint
from memstate_sql.storage import SQLStorage, check_engine_settings
from memstate_sql.store import MemoryStore
from memstate_sql.vectors import VectorIndex

# START GENERATED IMPORTS
# code within this block is **programmatically, statically generated** by tools/generate_async.py
if TYPE_CHECKING:
    from collections.abc import Sequence
    from datetime import datetime, timedelta

    from pydantic import BaseModel

    from memstate_sql import vectors
    from memstate_sql.facts import Fact, ScoredFact
    from memstate_sql.records import RollbackPlan
    from memstate_sql.verify import VerifyReport

# END GENERATED IMPORTS

__all__ = ["AsyncMemoryStore", "AsyncSQLStorage", "async_url"]

T = TypeVar("T")


async def _spawn(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Run the sync `fn` in the greenlet bridge: its database I/O and awaited hooks suspend this coroutine."""
    result: T = await greenlet_spawn(fn, *args, **kwargs)
    return result


def _take(items: Iterator[T], count: int) -> list[T]:
    return list(islice(items, count))


async def _aiterate(items: Iterator[T], chunk: int) -> AsyncIterator[T]:
    """Drive a lazy sync iterator from the bridge, `chunk` items per bridge call.

    With `chunk` the page size of a keyset-paginated read, each call reads one page.
    """
    while True:
        batch = await _spawn(_take, items, chunk)
        if not batch:
            return
        for item in batch:
            yield item


def _connection_of(conn: AsyncConnection) -> Callable[[], Connection]:
    def current() -> Connection:
        sync_conn = conn.sync_connection
        if sync_conn is None:
            raise ValidationFailed("the AsyncConnection given to AsyncSQLStorage is not started")
        return sync_conn

    return current


def _session_connection(session: AsyncSession) -> Callable[[], Connection]:
    def current() -> Connection:
        # The session's connection of the moment (it changes after each commit); called inside the bridge.
        sync_conn = await_only(session.connection()).sync_connection
        assert sync_conn is not None
        return sync_conn  # type: ignore[no-any-return]

    return current


class AsyncSQLStorage:
    """The asyncio form of `SQLStorage` (aiosqlite, psycopg 3, aiomysql); same options (`pooler`...).

    Takes a URL (sync URLs are mapped to the async driver), an `AsyncEngine`,
    or a host's `AsyncConnection` / `AsyncSession` to join.
    """

    def __init__(
        self,
        url_or_async_engine: str | URL | AsyncEngine | AsyncConnection | AsyncSession,
        *,
        namespace: str | None = None,
        table_prefix: str = DEFAULT_PREFIX,
        schema: str | None = None,
        auto_migrate: bool = True,
        engine_options: Mapping[str, Any] | None = None,
        max_attempts: int = 10,
        max_payload_bytes: int = jsondoc.DEFAULT_MAX_BYTES,
        indexed_paths: Iterable[IndexedPath | tuple[str, IndexKind]] | None = None,
        sqlite_synchronous: str | None = None,
        read_your_writes: bool = False,
        vector_index: VectorIndex | None = None,
        pooler: str | None = None,
    ) -> None:
        bound: Callable[[], Connection] | None = None
        check_engine_settings(url_or_async_engine, sqlite_synchronous, pooler, read_your_writes)
        if isinstance(url_or_async_engine, str | URL):
            self.engine = async_engine_for(
                url_or_async_engine,
                engine_options,
                sqlite_synchronous=sqlite_synchronous,
                read_your_writes=read_your_writes,
                pooler=pooler,
            )
            self._owns = True
        elif isinstance(url_or_async_engine, AsyncEngine):
            self.engine, self._owns = url_or_async_engine, False
        elif isinstance(url_or_async_engine, AsyncConnection):
            self.engine, self._owns = url_or_async_engine.engine, False
            bound = _connection_of(url_or_async_engine)
        elif isinstance(url_or_async_engine, AsyncSession):
            if not isinstance(url_or_async_engine.bind, AsyncEngine):
                raise ValidationFailed("the AsyncSession given to AsyncSQLStorage must be bound to an AsyncEngine")
            self.engine, self._owns = url_or_async_engine.bind, False
            bound = _session_connection(url_or_async_engine)
        else:
            raise ValidationFailed(
                "AsyncSQLStorage takes a database URL, an AsyncEngine, an AsyncConnection or an AsyncSession, "
                f"not {type(url_or_async_engine).__name__}"
            )
        #: The sync storage this facade drives, on the async engine's ``sync_engine`` (as
        #: `AsyncSession.sync_session` is the `Session` an `AsyncSession` drives).
        self.sync_storage = SQLStorage.bridged(
            self.engine.sync_engine,
            bound=bound,
            namespace=namespace,
            table_prefix=table_prefix,
            schema=schema,
            auto_migrate=auto_migrate,
            max_attempts=max_attempts,
            max_payload_bytes=max_payload_bytes,
            indexed_paths=indexed_paths,
            vector_index=vector_index,
        )

    @property
    def vector_index(self) -> VectorIndex | None:
        """The in-database vector index (`SQLStorage.vector_index`); its embedding function may be async."""
        return self.sync_storage.vector_index

    def for_namespace(self, namespace: str | None) -> AsyncSQLStorage:
        """A storage for another namespace on the same engine and tables (`SQLStorage.for_namespace`)."""
        sibling = AsyncSQLStorage.__new__(AsyncSQLStorage)
        sibling.engine, sibling._owns = self.engine, False
        sibling.sync_storage = self.sync_storage.for_namespace(namespace)
        return sibling

    @property
    def constraints(self) -> dict[str, Constraint]:
        """Constraints registered by the stores on this storage (`AsyncMemoryStore.register_schema`)."""
        return self.sync_storage.constraints

    async def run_sync(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run the sync callable `fn` (which uses `sync_storage`, or a `MemoryStore` on it) inside the greenlet
        bridge, as `AsyncConnection.run_sync` does: its database I/O goes through the async driver. Work composed
        of several calls runs in one transaction when `fn` wraps them in ``sync_storage.transaction(...)``."""
        return await _spawn(fn, *args, **kwargs)

    # START GENERATED METHODS AsyncSQLStorage
    # code within this block is **programmatically, statically generated** by tools/generate_async.py

    @property
    def table_prefix(self) -> str:
        return self.sync_storage.table_prefix

    def register_constraint(self, typename: str, constraint: Constraint) -> None:
        """Register `constraint` for `typename` on this storage (every store on it shares it). Facts of
        the type stored before (imported, written by another application) are brought under it before
        the next write (`Operations.apply_constraints`).
        """
        self.sync_storage.register_constraint(typename, constraint)

    def declare_indexed_paths(self, paths: Iterable[IndexedPath | tuple[str, IndexKind]]) -> None:
        """Declare more payload paths to index, as ``indexed_paths=`` does, on a storage already built (an
        integration that owns some fact types declares its paths this way). Their indexes are created,
        idempotently, before the storage's next operation.
        """
        self.sync_storage.declare_indexed_paths(paths)

    async def load(self, id: str) -> dict[str, Any] | None:
        return await _spawn(self.sync_storage.load, id)

    async def load_with_version(self, id: str) -> tuple[dict[str, Any], int] | None:
        """`load` plus the fact's version (incremented by every write)."""
        return await _spawn(self.sync_storage.load_with_version, id)

    async def save(self, fact_data: dict[str, Any]) -> None:
        """Upsert a fact document; `load` returns exactly this document (docs/contract.md: ``id``,
        ``type`` and ``payload`` are required, other keys and any ``ts`` are kept as given).
        Constraints registered on this storage apply; an immutable fact cannot be overwritten
        (`ConflictError`).
        """
        await _spawn(self.sync_storage.save, fact_data)

    async def delete(self, id: str) -> None:
        await _spawn(self.sync_storage.delete, id)

    async def query(
        self,
        type_filter: str | None = None,
        json_filters: dict[str, Any] | None = None,
        *,
        limit: int | None = None,
        offset: int = 0,
        order_by: str | Sequence[Any] | None = None,
    ) -> list[dict[str, Any]]:
        """Facts of `type_filter` matching `json_filters` (see `memstate_sql.filters`).

        `order_by`: a path or a list of paths (envelope fields or ``payload.`` paths), each
        prefixed with ``-`` for descending; ties are broken by id. Default: ts, then id.
        """
        return await _spawn(
            self.sync_storage.query, type_filter, json_filters, limit=limit, offset=offset, order_by=order_by
        )

    async def count(self, type_filter: str | None = None, json_filters: dict[str, Any] | None = None) -> int:
        """How many facts `query(type_filter, json_filters)` would return."""
        return await _spawn(self.sync_storage.count, type_filter, json_filters)

    def iter_query(
        self,
        type_filter: str | None = None,
        json_filters: dict[str, Any] | None = None,
        *,
        order_by: str | Sequence[Any] | None = None,
        batch_size: int = 500,
    ) -> AsyncIterator[dict[str, Any]]:
        """Stream the result of `query` in batches of `batch_size` rows (keyset pagination).

        Each batch is its own short read transaction: facts committed while the
        iteration runs may or may not be seen, but no fact is returned twice
        unless its sort key changed in between.
        """
        return _aiterate(
            self.sync_storage.iter_query(type_filter, json_filters, order_by=order_by, batch_size=batch_size),
            batch_size,
        )

    async def append_tx(self, tx_data: dict[str, Any]) -> None:
        """Append a log record, in any shape memstate's backends store (every key optional; see
        `validation.record_from_tx` and docs/contract.md). `get_tx_log` returns it as given, except
        ``seq``, which the database assigns (one increasing sequence for every process).
        """
        await _spawn(self.sync_storage.append_tx, tx_data)

    async def get_tx_log(self, session_id: str | None, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        """The session's log, newest first (``session_id=None``: entries without a session)."""
        return await _spawn(self.sync_storage.get_tx_log, session_id, limit, offset)

    async def delete_session(self, session_id: str) -> list[str]:
        return await _spawn(self.sync_storage.delete_session, session_id)

    async def get_session_facts(self, session_id: str) -> list[dict[str, Any]]:
        return await _spawn(self.sync_storage.get_session_facts, session_id)

    async def delete_txs(self, tx_uuids: list[str]) -> None:
        await _spawn(self.sync_storage.delete_txs, tx_uuids)

    async def close(self) -> None:
        if self._owns:
            await self.engine.dispose()

    async def explain_search(self) -> vectors.SearchPlan:
        """How `MemoryStore.search` computes searches on this storage (docs/search.md): ``mode``
        ``"in-database"`` (the database's vector extension ranks the vectors: sqlite-vec), ``"exact
        scan"`` (with the ``reason`` the extension is not used), or ``"hooks"`` (no `vector_index`: the
        hooks answer). Loads the extension into a connection as a search would; raises `StorageError`
        as a search would where ``VectorIndex(in_database="required")`` cannot be honoured.
        """
        return await _spawn(self.sync_storage.explain_search)

    async def verify(self) -> VerifyReport:
        """`memstate_sql.verify` over this storage's namespace, through its own engine."""
        return await _spawn(self.sync_storage.verify)

    async def __aenter__(self) -> AsyncSQLStorage:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def sweep(self, limit: int | None = None, *, batch_size: int = 1000, exclusive: bool = False) -> int:
        """Delete this namespace's expired facts, at most `limit` (None: all there are now), in batches
        of `batch_size`, each batch one transaction with its EXPIRE log entries; returns how many.

        Expired facts are invisible to every reader whether swept or not; sweeping reclaims their rows.
        Sweepers in several processes may run at once: each fact is deleted once (rows another sweeper
        holds are skipped). `exclusive`: do nothing (return 0) while another process's exclusive sweep of
        this namespace runs (the background sweepers of `memstate_sql.sweeper` use it).
        """
        return await _spawn(self.sync_storage.sweep, limit, batch_size=batch_size, exclusive=exclusive)

    async def compact_log(self, before: datetime | str, *, batch_size: int = 1000) -> int:
        """Remove this namespace's log entries logged before `before`, in batches of `batch_size` (each one
        transaction), keeping what the facts and `verify` need: each existing fact's newest active entry.
        Each batch leaves a COMPACT record (the horizon, and how many entries of each session went); a
        rollback that would need a removed entry is refused with `RollbackHorizonError`. Returns how many
        entries were removed. The space goes back to the database's free lists: SQLite reuses it (run
        ``VACUUM`` to shrink the file), PostgreSQL's autovacuum reclaims the dead rows.
        """
        return await _spawn(self.sync_storage.compact_log, before, batch_size=batch_size)

    async def history(self, fact_id: str) -> list[dict[str, Any]]:
        """Every log entry that changed one fact, oldest first: its own entries, the session discard that
        deleted it, the rollbacks that restored it, and the entries a rollback undid (``reverted_by``:
        the uuid of that rollback's ROLLBACK entry).
        """
        return await _spawn(self.sync_storage.history, fact_id)

    # END GENERATED METHODS AsyncSQLStorage


class AsyncMemoryStore:
    """The asyncio form of `MemoryStore`: same methods as coroutines, same guarantees.

    Async hooks are awaited inside the operation's database transaction,
    before COMMIT; any failure rolls the transaction back.
    """

    def __init__(self, storage: AsyncSQLStorage, hooks: list[AsyncMemoryHook] | None = None) -> None:
        if not isinstance(storage, AsyncSQLStorage):
            raise ValidationFailed(
                f"AsyncMemoryStore needs a memstate_sql.AsyncSQLStorage, got {type(storage).__name__}"
            )
        self.storage = storage
        sync_hooks: list[Any] = list(hooks or [])
        #: The sync store this facade drives (its hooks are awaited inside the bridge).
        self.sync_store = MemoryStore(storage.sync_storage, sync_hooks)

    # START GENERATED METHODS AsyncMemoryStore
    # code within this block is **programmatically, statically generated** by tools/generate_async.py

    @property
    def hooks(self) -> list[Any]:
        return self.sync_store.hooks

    def add_hook(self, hook: AsyncMemoryHook) -> None:
        self.sync_store.add_hook(hook)  # type: ignore[arg-type]

    def register_schema(self, typename: str, model: type[BaseModel], constraint: Constraint | None = None) -> None:
        """Validate the payloads of `typename` with `model`; `constraint` (singleton key, immutability) is
        registered on the storage and applies to every fact of the type, including facts stored before.
        """
        self.sync_store.register_schema(typename, model, constraint)

    async def commit(
        self,
        fact: Fact,
        session_id: str | None = None,
        ephemeral: bool = False,
        actor: str | None = None,
        reason: str | None = None,
        *,
        ttl: float | timedelta | None = None,
        expires_at: datetime | str | None = None,
    ) -> str:
        """Validate and store `fact` (an update when its id or singleton key exists); returns its id.

        `ttl` (seconds or a timedelta) or `expires_at` (an instant) make the fact expire: from then on
        no reader returns it, and `SQLStorage.sweep` deletes it. Without either, the type's
        `Constraint(ttl=...)` applies, if any; an update keeps the fact's expiry.
        """
        return await _spawn(
            self.sync_store.commit, fact, session_id, ephemeral, actor, reason, ttl=ttl, expires_at=expires_at
        )

    async def commit_many(
        self,
        facts: Iterable[Fact],
        session_id: str | None = None,
        ephemeral: bool = False,
        actor: str | None = None,
        reason: str | None = None,
        *,
        ttl: float | timedelta | None = None,
        expires_at: datetime | str | None = None,
    ) -> list[str]:
        """`commit` of many facts in one transaction: all of them or none (a refused fact, a failing hook
        or any database error rolls the whole batch back). Each fact is committed as `commit` would,
        in order (a later fact with the id or singleton key of an earlier one updates it), with its own
        log entry; hooks are told about every fact before COMMIT. Returns the ids, in order. New rows
        and log entries go in multi-row statements (thousands of facts per second and per core).
        """
        return await _spawn(
            self.sync_store.commit_many, facts, session_id, ephemeral, actor, reason, ttl=ttl, expires_at=expires_at
        )

    async def commit_model(
        self,
        model: BaseModel,
        fact_id: str | None = None,
        source: str | None = None,
        session_id: str | None = None,
        ephemeral: bool = False,
        actor: str | None = None,
        reason: str | None = None,
        *,
        ttl: float | timedelta | None = None,
        expires_at: datetime | str | None = None,
    ) -> str:
        """Commit a registered pydantic model instance as a fact of its type (`ttl`/`expires_at` as in `commit`)."""
        return await _spawn(
            self.sync_store.commit_model,
            model,
            fact_id,
            source,
            session_id,
            ephemeral,
            actor,
            reason,
            ttl=ttl,
            expires_at=expires_at,
        )

    async def update(
        self,
        fact_id: str,
        patch: dict[str, Any],
        actor: str | None = None,
        reason: str | None = None,
        *,
        expected_version: int | None = None,
    ) -> str:
        """Shallow-merge ``patch["payload"]`` into the fact's payload and validate the result.

        With `expected_version`, raise `ConflictError` (changing nothing) unless the
        fact is still at that version (`get_version`): optimistic concurrency.
        """
        return await _spawn(self.sync_store.update, fact_id, patch, actor, reason, expected_version=expected_version)

    async def delete(
        self,
        session_id: str | None,
        fact_id: str,
        actor: str | None = None,
        reason: str | None = None,
        *,
        expected_version: int | None = None,
    ) -> str:
        """Delete the fact (logged under `session_id`); `expected_version` as in `update`."""
        return await _spawn(
            self.sync_store.delete, session_id, fact_id, actor, reason, expected_version=expected_version
        )

    async def promote_session(
        self,
        session_id: str,
        selector: Callable[[dict[str, Any]], bool] | None = None,
        actor: str | None = None,
        reason: str | None = None,
    ) -> list[str]:
        """Make the session's facts (those `selector` accepts) global; returns their ids."""
        return await _spawn(self.sync_store.promote_session, session_id, selector, actor, reason)

    async def discard_session(self, session_id: str, actor: str | None = None, reason: str | None = None) -> int:
        """Delete the facts that belong to the session (logged, hooks notified); returns how many."""
        return await _spawn(self.sync_store.discard_session, session_id, actor, reason)

    async def rollback(
        self,
        session_id: str | None,
        steps: int = 1,
        *,
        force: bool = False,
        actor: str | None = None,
        reason: str | None = None,
    ) -> int:
        """Undo the session's last `steps` operations, newest first, in one transaction.

        ``session_id=None`` undoes operations logged without a session. When a fact
        it would restore or delete was changed afterwards by another operation, the
        rollback raises `RollbackConflictError` (a `ConflictError`) and changes
        nothing; ``force=True`` overrides those later changes (and marks their log
        entries as undone by this rollback). `plan_rollback` is the dry run.

        The rollback is logged as one ROLLBACK entry (who: `actor`, why: `reason`, when, and what
        it restored), visible in `SQLStorage.history`; the undone entries point at it. Returns how
        many operations were undone: 0 when the session has none (memstate returns None).
        """
        return await _spawn(self.sync_store.rollback, session_id, steps, force=force, actor=actor, reason=reason)

    async def plan_rollback(self, session_id: str | None, steps: int = 1) -> RollbackPlan:
        """Dry run of `rollback`: the entries it would undo, the changes, the conflicts; changes nothing."""
        return await _spawn(self.sync_store.plan_rollback, session_id, steps)

    async def sweep(self, limit: int | None = None, *, batch_size: int = 1000, exclusive: bool = False) -> int:
        """`SQLStorage.sweep` with this store's hooks told DELETE for each swept fact (so an external
        index drops it); returns how many facts were deleted.
        """
        return await _spawn(self.sync_store.sweep, limit, batch_size=batch_size, exclusive=exclusive)

    async def reindex(self, batch_size: int = 500) -> int:
        """Repair the vector index of this store's namespace: embed the facts whose vector is missing, at
        another version or of another text (stored before the storage's `vector_index` was configured,
        imported, or written by code without it), `batch_size` facts examined at a time — each batch's
        texts embedded outside any transaction, then written in one — and delete the vectors of facts
        that no longer exist. Returns how many facts were (re)indexed (docs/search.md).
        """
        return await _spawn(self.sync_store.reindex, batch_size)

    async def get(self, fact_id: str) -> dict[str, Any] | None:
        return await _spawn(self.sync_store.get, fact_id)

    async def get_with_version(self, fact_id: str) -> tuple[dict[str, Any], int] | None:
        """The fact's document and its version (for `update`/`delete` ``expected_version``)."""
        return await _spawn(self.sync_store.get_with_version, fact_id)

    async def get_version(self, fact_id: str) -> int | None:
        """The fact's version: 1 when created, incremented by every write; None if absent."""
        return await _spawn(self.sync_store.get_version, fact_id)

    async def query(
        self,
        typename: str | None = None,
        filters: dict[str, Any] | None = None,
        session_id: str | None = None,
        *,
        limit: int | None = None,
        offset: int = 0,
        order_by: str | Sequence[Any] | None = None,
    ) -> list[dict[str, Any]]:
        """Facts of `typename` (all types if None) matching `filters` (and `session_id`).

        `order_by`: ``"ts"``, ``"-payload.score"`` or a list of such paths (``-``: descending);
        ties are broken by id. Default order: ts, then id. See docs/filters.md.
        """
        return await _spawn(
            self.sync_store.query, typename, filters, session_id, limit=limit, offset=offset, order_by=order_by
        )

    async def count(
        self, typename: str | None = None, filters: dict[str, Any] | None = None, session_id: str | None = None
    ) -> int:
        """How many facts `query(typename, filters, session_id)` would return."""
        return await _spawn(self.sync_store.count, typename, filters, session_id)

    def iter_query(
        self,
        typename: str | None = None,
        filters: dict[str, Any] | None = None,
        session_id: str | None = None,
        *,
        order_by: str | Sequence[Any] | None = None,
        batch_size: int = 500,
    ) -> AsyncIterator[dict[str, Any]]:
        """Stream `query`'s result in batches of `batch_size` (keyset pagination, one read per batch)."""
        return _aiterate(
            self.sync_store.iter_query(typename, filters, session_id, order_by=order_by, batch_size=batch_size),
            batch_size,
        )

    async def search(
        self, query: str, limit: int = 5, filters: dict[str, Any] | None = None, score_threshold: float | None = None
    ) -> list[ScoredFact]:
        """The facts most similar to `query`.

        With the storage's `vector_index` (docs/search.md): an exact cosine search over the vectors
        stored beside the facts, among the facts `filters` selects (the `query` filter language,
        compiled into the same SQL), in one read transaction; `score_threshold` is the lowest cosine
        similarity kept; best score first, ties by fact id. Without one: memstate's way, asking the
        hooks that can search and reading the hits' current state from the database, in the hooks'
        order (their scores may be similarities or distances); hits whose fact no longer exists are
        dropped.
        """
        return await _spawn(self.sync_store.search, query, limit, filters, score_threshold)

    # END GENERATED METHODS AsyncMemoryStore
