"""The asyncio store and storage: facades over the one sync implementation.

`AsyncSQLStorage` and `AsyncMemoryStore` hold no logic of their own. Each
coroutine runs the corresponding method of `SQLStorage` / `MemoryStore`
inside SQLAlchemy's greenlet bridge (``greenlet_spawn``) on the async engine's
``sync_engine``: database I/O goes through the async driver, async hooks are
awaited in place (inside the operation's transaction), and a retry backoff
sleeps with ``asyncio.sleep``. This is how SQLAlchemy's ``AsyncSession`` runs
the sync ``Session``; it means the sync and async stores cannot drift apart.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel
from sqlalchemy import Connection
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, create_async_engine

from memstate_sql import jsondoc
from memstate_sql._compat import await_only, greenlet_spawn
from memstate_sql.dialects import support_for
from memstate_sql.errors import ValidationFailed
from memstate_sql.facts import Fact, ScoredFact
from memstate_sql.hooks import AsyncMemoryHook
from memstate_sql.indexes import IndexedPath, IndexKind
from memstate_sql.models import DEFAULT_PREFIX
from memstate_sql.records import RollbackPlan
from memstate_sql.registry import Constraint
from memstate_sql.storage import Page, SQLStorage
from memstate_sql.store import MemoryStore
from memstate_sql.validation import check_batch, query_spec

T = TypeVar("T")

#: Async drivers for the sync URLs people write.
_ASYNC_DRIVERS = {
    "sqlite": ("pysqlite", "aiosqlite"),
    "postgresql": ("psycopg", "psycopg"),
    "mysql": ("pymysql", "aiomysql"),
    "mariadb": ("pymysql", "aiomysql"),
}
_KNOWN_ASYNC = {"aiosqlite", "psycopg", "asyncpg", "aiomysql", "asyncmy"}


def async_url(url: str | URL) -> URL:
    """Map a sync SQLAlchemy URL to its async driver (``sqlite://`` → ``sqlite+aiosqlite://``...)."""
    parsed = make_url(url) if isinstance(url, str) else url
    backend, driver = parsed.get_backend_name(), parsed.get_driver_name()
    if backend not in _ASYNC_DRIVERS:
        raise ValidationFailed(f"memstate_sql supports SQLite, PostgreSQL and MySQL/MariaDB, not {backend!r}")
    explicit = "+" in parsed.drivername
    if explicit and driver in _KNOWN_ASYNC:
        return parsed
    sync_default, async_driver = _ASYNC_DRIVERS[backend]
    if explicit and driver != sync_default:
        raise ValidationFailed(
            f"{parsed.drivername!r} is not an asyncio driver; write "
            f"'{backend}+{async_driver}://...' (install memstate-sql[async])"
        )
    return parsed.set(drivername=f"{backend}+{async_driver}")


async def _spawn(fn: Callable[..., T], *args: Any) -> T:
    result: T = await greenlet_spawn(fn, *args)
    return result


async def _apaginate(
    get_core: Callable[[], Awaitable[SQLStorage]], fetch: Callable[[SQLStorage, tuple[Any, ...] | None], Page]
) -> AsyncIterator[dict[str, Any]]:
    core = await get_core()
    after: tuple[Any, ...] | None = None
    while True:
        docs, last = await _spawn(fetch, core, after)
        for doc in docs:
            yield doc
        if last is None:
            return
        after = last


class AsyncSQLStorage:
    """The asyncio form of `SQLStorage` (aiosqlite, psycopg 3, aiomysql).

    Takes a URL (sync URLs are mapped to the async driver), an `AsyncEngine`,
    or a host's `AsyncConnection` / `AsyncSession` to join.
    """

    def __init__(
        self,
        url_or_async_engine: str | URL | AsyncEngine | AsyncConnection | AsyncSession,
        *,
        table_prefix: str = DEFAULT_PREFIX,
        schema: str | None = None,
        auto_migrate: bool = True,
        engine_options: Mapping[str, Any] | None = None,
        max_attempts: int = 10,
        max_payload_bytes: int = jsondoc.DEFAULT_MAX_BYTES,
        indexed_paths: Iterable[IndexedPath | tuple[str, IndexKind]] | None = None,
    ) -> None:
        self._bound: AsyncConnection | AsyncSession | None = None
        if isinstance(url_or_async_engine, str | URL):
            url = async_url(url_or_async_engine)
            dialect = support_for(url.get_backend_name())
            self.engine = create_async_engine(url, **{**dialect.engine_options(url), **(engine_options or {})})
            dialect.configure_engine(self.engine.sync_engine)
            self._owns = True
        elif isinstance(url_or_async_engine, AsyncEngine):
            self.engine, self._owns = url_or_async_engine, False
        elif isinstance(url_or_async_engine, AsyncConnection | AsyncSession):
            self._bound = url_or_async_engine
            if isinstance(url_or_async_engine, AsyncConnection):
                self.engine = url_or_async_engine.engine
            elif isinstance(url_or_async_engine.bind, AsyncEngine):
                self.engine = url_or_async_engine.bind
            else:
                raise ValidationFailed("the AsyncSession given to AsyncSQLStorage must be bound to an AsyncEngine")
            self._owns = False
        else:
            raise ValidationFailed(
                "AsyncSQLStorage takes a database URL, an AsyncEngine, an AsyncConnection or an AsyncSession, "
                f"not {type(url_or_async_engine).__name__}"
            )
        self._options: dict[str, Any] = {
            "table_prefix": table_prefix,
            "schema": schema,
            "auto_migrate": auto_migrate,
            "max_attempts": max_attempts,
            "max_payload_bytes": max_payload_bytes,
            "indexed_paths": indexed_paths,
        }
        self._core: SQLStorage | None = None
        # Schema preparation runs once, before any operation. Greenlets of one event loop share a
        # thread, so the sync core's threading.Lock cannot serialise them: an asyncio.Lock does.
        self._prepare_lock = asyncio.Lock()
        if self._bound is None:
            self._core = SQLStorage.bridged(self.engine.sync_engine, **self._options)

    async def core(self) -> SQLStorage:
        """The sync implementation this facade drives (bound to the host connection if any)."""
        if self._core is None:
            assert self._bound is not None
            bound: Connection | Callable[[], Connection]
            if isinstance(self._bound, AsyncSession):
                session = self._bound

                def bound() -> Connection:
                    # The session's connection of the moment (it changes after each commit);
                    # called inside the greenlet bridge.
                    sync_conn = await_only(session.connection()).sync_connection
                    assert sync_conn is not None
                    return sync_conn  # type: ignore[no-any-return]

            else:
                sync_conn = self._bound.sync_connection
                assert sync_conn is not None
                bound = sync_conn
            self._core = SQLStorage.bridged(self.engine.sync_engine, bound=bound, **self._options)
        if not self._core.schema_gate.ready:
            async with self._prepare_lock:
                await _spawn(self._core.schema_gate.ensure)
        return self._core

    @property
    def constraints(self) -> dict[str, Constraint]:
        return self._core.constraints if self._core is not None else {}

    async def load(self, id: str) -> dict[str, Any] | None:
        return await _spawn((await self.core()).load, id)

    async def save(self, fact_data: dict[str, Any]) -> None:
        await _spawn((await self.core()).save, fact_data)

    async def delete(self, id: str) -> None:
        await _spawn((await self.core()).delete, id)

    async def query(
        self,
        type_filter: str | None = None,
        json_filters: dict[str, Any] | None = None,
        *,
        limit: int | None = None,
        offset: int = 0,
        order_by: str | Sequence[Any] | None = None,
    ) -> list[dict[str, Any]]:
        core = await self.core()
        return await _spawn(
            functools.partial(core.query, limit=limit, offset=offset, order_by=order_by), type_filter, json_filters
        )

    async def count(self, type_filter: str | None = None, json_filters: dict[str, Any] | None = None) -> int:
        return await _spawn((await self.core()).count, type_filter, json_filters)

    def iter_query(
        self,
        type_filter: str | None = None,
        json_filters: dict[str, Any] | None = None,
        *,
        order_by: str | Sequence[Any] | None = None,
        batch_size: int = 500,
    ) -> AsyncIterator[dict[str, Any]]:
        """Stream `query`'s result in batches (keyset pagination); each batch is one awaited read."""
        spec = query_spec(type_filter, json_filters, order_by=order_by)
        check_batch(batch_size)
        return _apaginate(self.core, lambda core, after: core.page(spec, batch_size, after))

    async def append_tx(self, tx_data: dict[str, Any]) -> None:
        await _spawn((await self.core()).append_tx, tx_data)

    async def get_tx_log(self, session_id: str | None, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        return await _spawn((await self.core()).get_tx_log, session_id, limit, offset)

    async def delete_session(self, session_id: str) -> list[str]:
        return await _spawn((await self.core()).delete_session, session_id)

    async def get_session_facts(self, session_id: str) -> list[dict[str, Any]]:
        return await _spawn((await self.core()).get_session_facts, session_id)

    async def delete_txs(self, tx_uuids: list[str]) -> None:
        await _spawn((await self.core()).delete_txs, tx_uuids)

    async def load_with_version(self, id: str) -> tuple[dict[str, Any], int] | None:
        return await _spawn((await self.core()).load_with_version, id)

    async def history(self, fact_id: str) -> list[dict[str, Any]]:
        return await _spawn((await self.core()).history, fact_id)

    async def close(self) -> None:
        if self._owns:
            await self.engine.dispose()

    async def __aenter__(self) -> AsyncSQLStorage:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


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
        self._hooks: list[Any] = list(hooks or [])
        self._schemas: list[tuple[str, type[BaseModel], Constraint | None]] = []
        self._impl: MemoryStore | None = None

    async def _store(self) -> MemoryStore:
        if self._impl is None:
            impl = MemoryStore(await self.storage.core(), self._hooks)
            for typename, model, constraint in self._schemas:
                impl.register_schema(typename, model, constraint)
            self._impl = impl
        return self._impl

    @property
    def hooks(self) -> list[Any]:
        return self._hooks if self._impl is None else self._impl.hooks

    def add_hook(self, hook: AsyncMemoryHook) -> None:
        self.hooks.append(hook)

    def register_schema(self, typename: str, model: type[BaseModel], constraint: Constraint | None = None) -> None:
        if self._impl is not None:
            self._impl.register_schema(typename, model, constraint)
        else:
            self._schemas.append((typename, model, constraint))

    async def commit(
        self,
        fact: Fact,
        session_id: str | None = None,
        ephemeral: bool = False,
        actor: str | None = None,
        reason: str | None = None,
    ) -> str:
        return await _spawn((await self._store()).commit, fact, session_id, ephemeral, actor, reason)

    async def commit_model(
        self,
        model: BaseModel,
        fact_id: str | None = None,
        source: str | None = None,
        session_id: str | None = None,
        ephemeral: bool = False,
        actor: str | None = None,
        reason: str | None = None,
    ) -> str:
        store = await self._store()
        return await _spawn(store.commit_model, model, fact_id, source, session_id, ephemeral, actor, reason)

    async def update(
        self,
        fact_id: str,
        patch: dict[str, Any],
        actor: str | None = None,
        reason: str | None = None,
        *,
        expected_version: int | None = None,
    ) -> str:
        store = await self._store()
        return await _spawn(
            functools.partial(store.update, expected_version=expected_version), fact_id, patch, actor, reason
        )

    async def delete(
        self,
        session_id: str | None,
        fact_id: str,
        actor: str | None = None,
        reason: str | None = None,
        *,
        expected_version: int | None = None,
    ) -> str:
        store = await self._store()
        return await _spawn(
            functools.partial(store.delete, expected_version=expected_version), session_id, fact_id, actor, reason
        )

    async def promote_session(
        self,
        session_id: str,
        selector: Callable[[dict[str, Any]], bool] | None = None,
        actor: str | None = None,
        reason: str | None = None,
    ) -> list[str]:
        return await _spawn((await self._store()).promote_session, session_id, selector, actor, reason)

    async def discard_session(self, session_id: str, actor: str | None = None, reason: str | None = None) -> int:
        return await _spawn((await self._store()).discard_session, session_id, actor, reason)

    async def rollback(
        self,
        session_id: str | None,
        steps: int = 1,
        *,
        force: bool = False,
        actor: str | None = None,
        reason: str | None = None,
    ) -> int:
        rollback = functools.partial((await self._store()).rollback, force=force, actor=actor, reason=reason)
        return await _spawn(rollback, session_id, steps)

    async def plan_rollback(self, session_id: str | None, steps: int = 1) -> RollbackPlan:
        return await _spawn((await self._store()).plan_rollback, session_id, steps)

    async def get(self, fact_id: str) -> dict[str, Any] | None:
        return await _spawn((await self._store()).get, fact_id)

    async def get_with_version(self, fact_id: str) -> tuple[dict[str, Any], int] | None:
        return await _spawn((await self._store()).get_with_version, fact_id)

    async def get_version(self, fact_id: str) -> int | None:
        return await _spawn((await self._store()).get_version, fact_id)

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
        store = await self._store()
        return await _spawn(
            functools.partial(store.query, limit=limit, offset=offset, order_by=order_by), typename, filters, session_id
        )

    async def count(
        self, typename: str | None = None, filters: dict[str, Any] | None = None, session_id: str | None = None
    ) -> int:
        return await _spawn((await self._store()).count, typename, filters, session_id)

    def iter_query(
        self,
        typename: str | None = None,
        filters: dict[str, Any] | None = None,
        session_id: str | None = None,
        *,
        order_by: str | Sequence[Any] | None = None,
        batch_size: int = 500,
    ) -> AsyncIterator[dict[str, Any]]:
        """Stream `query`'s result in batches (keyset pagination); each batch is one awaited read."""
        spec = query_spec(typename, filters, session_id, order_by)
        check_batch(batch_size)
        return _apaginate(self.storage.core, lambda core, after: core.page(spec, batch_size, after))

    async def search(
        self,
        query: str,
        limit: int = 5,
        filters: dict[str, Any] | None = None,
        score_threshold: float | None = None,
    ) -> list[ScoredFact]:
        return await _spawn((await self._store()).search, query, limit, filters, score_threshold)
