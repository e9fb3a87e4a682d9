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


def pooled_worker(
    url: str, prefix: str, wid: int, ops: int, seed: int, mode: str, pooler: str | None
) -> dict[str, Any]:
    """A mixed workload (tests/workload.py's operations, plus reads) through one storage; returns how many
    operations succeeded, how many were refused as the API says (conflict, not found) and the messages of
    the ones that failed."""
    import random

    from tests import workload

    rng = random.Random(seed)
    result: dict[str, Any] = {"ok": 0, "refused": 0, "failed": []}

    def outcome(error: BaseException | None) -> None:
        if error is None:
            result["ok"] += 1
        elif isinstance(error, ms.ConflictError | ms.FactNotFound):
            result["refused"] += 1
        else:
            result["failed"].append(f"{type(error).__name__}: {error}")

    if mode == "sync":
        store = ms.MemoryStore(ms.SQLStorage(url, table_prefix=prefix, pooler=pooler))
        store.register_schema("user", workload.User, ms.Constraint(singleton_key="email"))
        try:
            for n in range(ops):
                try:
                    if n % 3 == 2:
                        store.query("note", {"payload.w": wid}, limit=5)
                        store.get(f"n{rng.randrange(workload.IDS)}")
                    else:
                        workload.one_operation(store, rng, wid, n)
                except Exception as error:  # counted, not raised
                    outcome(error)
                else:
                    outcome(None)
        finally:
            store.storage.close()
        return result

    async def run() -> None:
        storage = ms.AsyncSQLStorage(url, table_prefix=prefix, pooler=pooler)
        store = ms.AsyncMemoryStore(storage)
        try:
            for n in range(ops):
                fid = f"a{wid}-{rng.randrange(10)}"
                session = f"as{wid}"
                try:
                    step = n % 5
                    if step == 0:
                        await store.commit(ms.Fact(id=fid, type="note", payload={"w": wid, "n": n}), session_id=session)
                    elif step == 1:
                        await store.query("note", {"payload.w": wid}, limit=5)
                    elif step == 2:
                        if await store.get(fid) is not None:
                            await store.update(fid, {"payload": {"n": n}})
                    elif step == 3:
                        await store.count("note")
                    else:
                        await store.rollback(session, 1)
                except Exception as error:  # counted, not raised
                    outcome(error)
                else:
                    outcome(None)
        finally:
            await storage.close()

    asyncio.run(run())
    return result
