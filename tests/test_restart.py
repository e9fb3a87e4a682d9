"""Database restarts: the store recovers by itself, and the operation in flight fails cleanly.

Runs against private PostgreSQL and MariaDB servers started for this module (tests/servers.py),
never the shared ones. SQLite is an embedded file: there is no server to restart (its crash
behaviour is covered by the SIGKILL tests).
"""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import pytest

import memstate_sql as ms
from memstate_sql import ConnectionLost, Fact
from tests.conftest import REQUIRE
from tests.invariants import check_tables
from tests.servers import PrivateServer, private_server


@pytest.fixture(scope="module")
def server(db: str) -> Iterator[PrivateServer]:
    if db == "sqlite":
        pytest.skip("SQLite is embedded: there is no database server to restart")
    try:
        instance = private_server(db)
    except (FileNotFoundError, OSError, subprocess.CalledProcessError) as exc:
        reason = f"cannot start a private {db} server: {getattr(exc, 'stderr', None) or exc}"
        if REQUIRE:
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    try:
        instance.start()
        yield instance
    finally:
        instance.destroy()


@pytest.fixture
def private_prefix() -> str:
    return "r" + uuid.uuid4().hex[:10]


@pytest.mark.parametrize("crash", [False, True], ids=["restart", "crash"])
def test_an_existing_store_works_after_the_server_restarts(
    server: PrivateServer, private_prefix: str, crash: bool
) -> None:
    store = ms.MemoryStore(ms.SQLStorage(server.url, table_prefix=private_prefix))
    try:
        before = store.commit(Fact(type="t", payload={"v": 1}), session_id="s")
        server.restart(crash=crash)
        after = store.commit(Fact(type="t", payload={"v": 2}), session_id="s")  # no ConnectionLost: pre-ping
        assert store.get(before)["payload"] == {"v": 1} and store.get(after)["payload"] == {"v": 2}
        store.rollback("s")
        assert store.get(after) is None
    finally:
        store.storage.close()
    check_tables(server.url, private_prefix)


def test_an_existing_async_store_works_after_the_server_restarts(server: PrivateServer, private_prefix: str) -> None:
    async def scenario() -> None:
        store = ms.AsyncMemoryStore(ms.AsyncSQLStorage(server.url, table_prefix=private_prefix))
        try:
            fid = await store.commit(Fact(type="t", payload={"v": 1}))
            server.restart()
            await store.update(fid, {"payload": {"v": 2}})
            assert (await store.get(fid))["payload"] == {"v": 2}
        finally:
            await store.storage.close()

    asyncio.run(scenario())
    check_tables(server.url, private_prefix)


@pytest.mark.parametrize("crash", [False, True], ids=["restart", "crash"])
def test_the_operation_in_flight_fails_with_connection_lost_and_leaves_nothing(
    server: PrivateServer, private_prefix: str, crash: bool
) -> None:
    entered, resume = threading.Event(), threading.Event()

    def hook(op: ms.Operation, fact_id: str, fact: ms.Fact | None) -> None:
        if fact is not None and fact.payload.get("block"):
            entered.set()
            assert resume.wait(60)
            store.storage.load(fact_id)  # joins the transaction: fails on the broken connection

    store = ms.MemoryStore(ms.SQLStorage(server.url, table_prefix=private_prefix), [hook])
    outcome: list[BaseException | str] = []

    def in_flight() -> None:
        try:
            outcome.append(store.commit(Fact(id="inflight", type="t", payload={"block": True}), session_id="s"))
        except BaseException as exc:
            outcome.append(exc)

    try:
        store.commit(Fact(id="kept", type="t", payload={"v": 1}), session_id="s")
        thread = threading.Thread(target=in_flight)
        thread.start()
        assert entered.wait(30)  # the fact and its log entry are written, the transaction is open
        server.restart(crash=crash)
        resume.set()
        thread.join(60)
        [error] = outcome
        assert isinstance(error, ConnectionLost), error
        assert isinstance(error, ms.StorageError) and isinstance(error, ms.MemoryStoreError)
        assert "did not commit" in str(error)
        # Nothing half-written: neither the fact nor its log entry; the store carries on.
        assert store.get("inflight") is None
        assert [e["fact_id"] for e in store.storage.get_tx_log("s")] == ["kept"]
        store.commit(Fact(id="next", type="t", payload={"v": 2}), session_id="s")
    finally:
        resume.set()
        store.storage.close()
    check_tables(server.url, private_prefix)


def test_restarts_in_the_middle_of_a_busy_run(server: PrivateServer, private_prefix: str) -> None:
    """Two threads write continuously while the server is restarted twice (once crashed)."""
    store = ms.MemoryStore(ms.SQLStorage(server.url, table_prefix=private_prefix))
    store.commit(Fact(id="warm", type="t", payload={}))
    stop = threading.Event()
    outcomes: Counter[str] = Counter()
    unexpected: list[BaseException] = []
    after_restarts = threading.Event()
    recovered: Counter[str] = Counter()

    def writer(w: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                fid = store.commit(Fact(id=f"w{w}-{n % 5}", type="t", payload={"n": n}), session_id=f"s{w}")
                store.update(fid, {"payload": {"n": -n}})
                if n % 7 == 0:
                    store.rollback(f"s{w}")
                outcomes["ok"] += 1
                if after_restarts.is_set():
                    recovered["ok"] += 1
            except ConnectionLost:
                outcomes["connection_lost"] += 1
                time.sleep(0.02)
            except ms.ConflictError:
                outcomes["conflict"] += 1
            except BaseException as exc:
                unexpected.append(exc)
                return

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(2)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.5)
        server.restart()
        time.sleep(0.5)
        server.restart(crash=True)
        after_restarts.set()
        time.sleep(0.7)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
        store.storage.close()
    assert not unexpected, unexpected
    assert recovered["ok"] > 0, "no operation succeeded after the restarts"
    report = check_tables(server.url, private_prefix)
    print(f"restart run: {dict(outcomes)} tables={report.counts()}")


@pytest.mark.parametrize("crash", [False, True], ids=["restart", "crash"])
def test_an_async_operation_in_flight_fails_with_connection_lost(
    server: PrivateServer, private_prefix: str, crash: bool
) -> None:
    entered, resume = threading.Event(), threading.Event()

    class Hook:
        async def __call__(self, op: ms.Operation, fact_id: str, fact: ms.Fact | None) -> None:
            if fact is not None and fact.payload.get("block"):
                entered.set()
                while not resume.is_set():
                    await asyncio.sleep(0.01)

    outcome: list[BaseException | str] = []

    async def scenario() -> None:
        store = ms.AsyncMemoryStore(ms.AsyncSQLStorage(server.url, table_prefix=private_prefix), [Hook()])
        try:
            await store.commit(Fact(id="kept", type="t", payload={}), session_id="s")
            try:
                outcome.append(
                    await store.commit(Fact(id="inflight", type="t", payload={"block": True}), session_id="s")
                )
            except BaseException as exc:
                outcome.append(exc)
            assert await store.get("inflight") is None  # the store carries on, nothing half-written
            await store.commit(Fact(id="next", type="t", payload={}), session_id="s")
        finally:
            await store.storage.close()

    thread = threading.Thread(target=lambda: asyncio.run(scenario()))
    thread.start()
    try:
        assert entered.wait(30)
        server.restart(crash=crash)
    finally:
        resume.set()
        thread.join(60)
    [error] = outcome
    assert isinstance(error, ConnectionLost), repr(error)
    # The break was noticed at COMMIT: the client cannot know the outcome, and says so.
    assert "during COMMIT" in str(error) and "unknown" in str(error)
    check_tables(server.url, private_prefix)
