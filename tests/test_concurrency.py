"""Several processes on one database: ordering and constraints come from the database."""

from __future__ import annotations

import asyncio
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import pytest

import memstate_sql as ms
from tests import workers

PROCESSES = 6


@pytest.fixture
def pool() -> Any:
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=PROCESSES, mp_context=ctx) as executor:
        yield executor, ctx.Manager()


@pytest.mark.parametrize("worker", [workers.singleton_committer, workers.async_singleton_committer])
def test_processes_racing_on_one_singleton_key_leave_exactly_one_fact(
    db_url: str, prefix: str, pool: Any, worker: Any
) -> None:
    storage = ms.SQLStorage(db_url, table_prefix=prefix)
    storage.load("create-schema")  # the schema exists before the race (migration races are tested elsewhere)
    executor, manager = pool
    barrier = manager.Barrier(PROCESSES)
    futures = [executor.submit(worker, db_url, prefix, f"p{i}", barrier) for i in range(PROCESSES)]
    ids = {f.result(timeout=120) for f in futures}  # no worker raised: no integrity error reached a caller
    assert len(ids) == 1
    facts = storage.query("account")
    assert len(facts) == 1 and facts[0]["id"] in ids
    log = storage.get_tx_log(None)
    assert sorted(e["op"] for e in log) == ["COMMIT"] + ["UPDATE"] * (PROCESSES - 1)
    storage.close()


def test_log_sequence_is_strictly_increasing_across_processes(db_url: str, prefix: str, pool: Any) -> None:
    storage = ms.SQLStorage(db_url, table_prefix=prefix)
    storage.load("create-schema")
    executor, manager = pool
    barrier = manager.Barrier(3)
    futures = [executor.submit(workers.sequential_committer, db_url, prefix, f"w{i}", 15, barrier) for i in range(3)]
    committed = [fid for f in futures for fid in f.result(timeout=120)]
    log = storage.get_tx_log("shared", limit=1000)
    seqs = [e["seq"] for e in log]
    assert len(seqs) == len(committed) == 45
    assert seqs == sorted(seqs, reverse=True) and len(set(seqs)) == len(seqs)
    # Each process's own commits appear in its own order.
    for worker in ("w0", "w1", "w2"):
        mine = [e["fact_after"]["payload"]["i"] for e in reversed(log) if e["fact_after"]["payload"]["w"] == worker]
        assert mine == list(range(15))
    storage.close()


def test_two_store_instances_share_one_sequence(db_url: str, prefix: str) -> None:
    a = ms.MemoryStore(ms.SQLStorage(db_url, table_prefix=prefix))
    b = ms.MemoryStore(ms.SQLStorage(db_url, table_prefix=prefix))
    for i in range(5):
        a.commit(ms.Fact(type="t", payload={"i": i}), session_id="s")
        b.commit(ms.Fact(type="t", payload={"i": i}), session_id="s")
    seqs = [e["seq"] for e in a.storage.get_tx_log("s")]
    assert len(seqs) == 10 and seqs == sorted(seqs, reverse=True) and len(set(seqs)) == 10
    # rollback undoes the newest entries whichever instance wrote them
    newest = b.storage.get_tx_log("s", limit=1)[0]
    a.rollback("s", 1)
    assert a.get(newest["fact_id"]) is None
    a.storage.close()
    b.storage.close()


def test_fifty_concurrent_async_commits_on_one_store(db_url: str, prefix: str) -> None:
    async def main() -> list[str]:
        storage = ms.AsyncSQLStorage(db_url, table_prefix=prefix)
        store = ms.AsyncMemoryStore(storage)
        try:
            return await asyncio.gather(*(store.commit(ms.Fact(type="t", payload={"i": i})) for i in range(50)))
        finally:
            await storage.close()

    ids = asyncio.run(main())
    assert len(set(ids)) == 50
    storage = ms.SQLStorage(db_url, table_prefix=prefix)
    assert len(storage.query("t")) == 50
    assert len(storage.get_tx_log(None, limit=100)) == 50
    storage.close()
