"""Functions run in child processes by the multi-process tests (importable under the spawn start method)."""

from __future__ import annotations

import asyncio
import multiprocessing.synchronize
from typing import Any

from pydantic import BaseModel

import memstate_sql as ms


class Account(BaseModel):
    email: str
    owner: str


def singleton_committer(url: str, prefix: str, owner: str, barrier: multiprocessing.synchronize.Barrier) -> str:
    """Commit the same singleton key as every other worker, all released at once."""
    storage = ms.SQLStorage(url, table_prefix=prefix)
    try:
        store = ms.MemoryStore(storage)
        store.register_schema("account", Account, ms.Constraint(singleton_key="email"))
        storage.load("warm-up")  # connect and check the schema before the race starts
        barrier.wait(timeout=60)
        return store.commit(ms.Fact(type="account", payload={"email": "race@x", "owner": owner}))
    finally:
        storage.close()


def sequential_committer(url: str, prefix: str, name: str, count: int, barrier: Any) -> list[str]:
    storage = ms.SQLStorage(url, table_prefix=prefix)
    try:
        store = ms.MemoryStore(storage)
        storage.load("warm-up")
        barrier.wait(timeout=60)
        return [store.commit(ms.Fact(type="n", payload={"w": name, "i": i}), session_id="shared") for i in range(count)]
    finally:
        storage.close()


def async_singleton_committer(url: str, prefix: str, owner: str, barrier: Any) -> str:
    async def run() -> str:
        storage = ms.AsyncSQLStorage(url, table_prefix=prefix)
        try:
            store = ms.AsyncMemoryStore(storage)
            store.register_schema("account", Account, ms.Constraint(singleton_key="email"))
            await storage.load("warm-up")
            barrier.wait(timeout=60)
            return await store.commit(ms.Fact(type="account", payload={"email": "race@x", "owner": owner}))
        finally:
            await storage.close()

    return asyncio.run(run())


def log_writer(url: str, prefix: str, name: str, count: int, barrier: Any, session: str | None, aio: bool) -> int:
    """`count` commits in `session` (None: without a session), each followed by an update of the fact
    (logged in the fact's session), sync or through the asyncio store; all workers released at once."""

    async def run_async() -> int:
        storage = ms.AsyncSQLStorage(url, table_prefix=prefix)
        try:
            store = ms.AsyncMemoryStore(storage)
            await storage.load("warm-up")
            barrier.wait(timeout=60)
            for i in range(count):
                fid = await store.commit(ms.Fact(type="n", payload={"w": name, "i": i}), session_id=session)
                await store.update(fid, {"payload": {"done": True}})
            return count
        finally:
            await storage.close()

    if aio:
        return asyncio.run(run_async())
    storage = ms.SQLStorage(url, table_prefix=prefix)
    try:
        store = ms.MemoryStore(storage)
        storage.load("warm-up")
        barrier.wait(timeout=60)
        for i in range(count):
            fid = store.commit(ms.Fact(type="n", payload={"w": name, "i": i}), session_id=session)
            store.update(fid, {"payload": {"done": True}})
        return count
    finally:
        storage.close()
