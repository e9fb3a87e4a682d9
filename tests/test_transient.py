"""Real transient database failures are retried by re-running the whole unit of work.

Injected for real, not mocked: a deadlock between the store's transaction (a hook that
takes a row lock) and another connection on PostgreSQL (40P01) and MariaDB (1213); a
serialization failure under REPEATABLE READ on PostgreSQL (40001); a lock wait timeout
on MariaDB (1205); a write lock held by another connection on SQLite (database is locked).
After the last attempt the caller gets `TransientStorageError` naming the cause, and
nothing of the operation is in the database.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

import memstate_sql as ms
from memstate_sql import Fact, MemoryStore, SQLStorage, TransientStorageError
from tests.invariants import check_tables


def only(db: str, *names: str) -> None:
    if db not in names:
        pytest.skip(f"this failure mode is specific to {', '.join(names)}")


class Sleeps:
    """Records the backoff sleeps of a runner (and sleeps a fixed, short time)."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.seconds = seconds
        self.calls: list[float] = []

    def __call__(self, wanted: float) -> None:
        self.calls.append(wanted)
        time.sleep(self.seconds)


@pytest.fixture
def other(db_url: str) -> Iterator[sa.Engine]:
    """Another client of the same database."""
    engine = sa.create_engine(db_url)
    yield engine
    engine.dispose()


class Deadlocker:
    """A hook that deadlocks the store's transaction with another connection, `times` times.

    The store's transaction holds the row lock of fact `f` (it is updating it). The hook
    lets another connection lock fact `g`, then asks for `g` itself (through the storage,
    which joins the store's transaction) while the other connection asks for `f`.
    The store's transaction is made the victim: on PostgreSQL the other session's
    deadlock_timeout is longer; on MariaDB the other transaction has written more rows.
    """

    def __init__(self, db: str, other: sa.Engine, storage: SQLStorage, prefix: str, f: str, g: str, times: int):
        self.db, self.other, self.storage, self.prefix = db, other, storage, prefix
        self.f, self.g, self.times = f, g, times
        self.calls = 0
        self.errors: list[BaseException] = []
        self.threads: list[threading.Thread] = []

    def _blocker(self, locked: threading.Event) -> None:
        try:
            with self.other.connect() as conn, conn.begin():
                if self.db == "postgresql":
                    conn.exec_driver_sql("SET LOCAL deadlock_timeout = '20s'")
                else:
                    pad = f"{self.prefix}_pad"
                    conn.execute(sa.text(f"INSERT INTO {pad} (n) VALUES " + ",".join(["(1)"] * 50)))
                # The key the store locks by: (namespace, id), the primary key (the default namespace is '').
                facts = f"{self.prefix}_facts"
                conn.execute(
                    sa.text(f"SELECT id FROM {facts} WHERE namespace = '' AND id = :g FOR UPDATE"), {"g": self.g}
                )
                locked.set()
                time.sleep(0.3)  # the store's transaction is now waiting for g
                conn.execute(
                    sa.text(f"UPDATE {facts} SET version = version + 1 WHERE namespace = '' AND id = :f"), {"f": self.f}
                )
        except BaseException as exc:  # reported by the test
            self.errors.append(exc)

    def __call__(self, op: ms.Operation, fact_id: str, fact: ms.Fact | None) -> None:
        self.calls += 1
        if self.calls > self.times:
            return
        locked = threading.Event()
        thread = threading.Thread(target=self._blocker, args=(locked,))
        thread.start()
        self.threads.append(thread)
        assert locked.wait(10)
        doc = self.storage.load(self.g)
        assert doc is not None
        self.storage.save(doc)  # joins the store's transaction: SELECT ... FOR UPDATE on g

    def join(self) -> None:
        for thread in self.threads:
            thread.join(30)


def setup_deadlock(db: str, db_url: str, prefix: str, other: sa.Engine, times: int, attempts: int) -> tuple[Any, ...]:
    storage = SQLStorage(db_url, table_prefix=prefix, max_attempts=attempts)
    storage.runner.sleep = Sleeps()
    store = MemoryStore(storage)
    f = store.commit(Fact(id="f", type="t", payload={"v": 1}))
    g = store.commit(Fact(id="g", type="t", payload={"v": "g"}))
    if db == "mysql":
        with other.begin() as conn:
            conn.execute(sa.text(f"CREATE TABLE {prefix}_pad (n INT)"))
    hook = Deadlocker(db, other, storage, prefix, f, g, times)
    store.add_hook(hook)
    return storage, store, hook


def log_count(storage: SQLStorage) -> int:
    return len(storage.history("f"))


def test_a_deadlock_re_runs_the_whole_unit_of_work(db: str, db_url: str, prefix: str, other: sa.Engine) -> None:
    only(db, "postgresql", "mysql")
    storage, store, hook = setup_deadlock(db, db_url, prefix, other, times=1, attempts=5)
    try:
        store.update("f", {"payload": {"v": 2}})
        hook.join()
        assert not hook.errors, hook.errors  # the other connection was not the victim
        assert hook.calls == 2  # the hook ran in the failed attempt and again in the retry
        assert len(storage.runner.sleep.calls) == 1
        assert store.get("f")["payload"] == {"v": 2}
        assert [h["op"] for h in storage.history("f")] == ["COMMIT", "UPDATE"]  # one entry, not two
        assert store.get_version("f") == 3  # created, bumped by the other connection, updated once
    finally:
        storage.close()


def test_a_persistent_deadlock_gives_up_with_the_cause(db: str, db_url: str, prefix: str, other: sa.Engine) -> None:
    only(db, "postgresql", "mysql")
    storage, store, hook = setup_deadlock(db, db_url, prefix, other, times=2, attempts=2)
    try:
        with pytest.raises(TransientStorageError, match=r"(?i)deadlock") as info:
            store.update("f", {"payload": {"v": 2}})
        hook.join()
        assert isinstance(info.value, ms.StorageError) and isinstance(info.value, ms.MemoryStoreError)
        assert isinstance(info.value.__cause__, sa.exc.DBAPIError)
        assert "gave up after 2 attempts" in str(info.value)
        assert store.get("f")["payload"] == {"v": 1} and log_count(storage) == 1  # nothing of it was written
    finally:
        storage.close()
    check_tables(db_url, prefix)


def test_a_serialization_failure_is_retried(db: str, db_url: str, prefix: str, other: sa.Engine) -> None:
    only(db, "postgresql")
    storage = SQLStorage(db_url, table_prefix=prefix, engine_options={"isolation_level": "REPEATABLE READ"})
    storage.runner.sleep = sleeps = Sleeps()
    calls: list[int] = []

    def hook(op: ms.Operation, fact_id: str, fact: ms.Fact | None) -> None:
        calls.append(1)
        if len(calls) == 1:  # another client changes g after this transaction's snapshot
            with other.begin() as conn:
                conn.execute(
                    sa.text(f"UPDATE {prefix}_facts SET version = version + 1 WHERE namespace = '' AND id = 'g'")
                )
        doc = storage.load("g")
        assert doc is not None
        storage.save(doc)  # SELECT ... FOR UPDATE of a row changed since the snapshot: 40001

    store = MemoryStore(storage)
    try:
        store.commit(Fact(id="f", type="t", payload={"v": 1}))
        store.commit(Fact(id="g", type="t", payload={}))
        store.add_hook(hook)
        store.update("f", {"payload": {"v": 2}})
        assert len(calls) == 2 and len(sleeps.calls) == 1
        assert store.get("f")["payload"] == {"v": 2}
    finally:
        storage.close()


def test_a_lock_wait_timeout_is_retried(db: str, db_url: str, prefix: str, other: sa.Engine) -> None:
    only(db, "mysql")
    options = {"connect_args": {"init_command": "SET SESSION innodb_lock_wait_timeout = 1"}}
    storage = SQLStorage(db_url, table_prefix=prefix, engine_options=options)
    storage.runner.sleep = sleeps = Sleeps()
    store = MemoryStore(storage)
    try:
        store.commit(Fact(id="f", type="t", payload={"v": 1}))
        locked = threading.Event()

        def hold() -> None:
            with other.connect() as conn, conn.begin():
                conn.execute(sa.text(f"SELECT id FROM {prefix}_facts WHERE namespace = '' AND id = 'f' FOR UPDATE"))
                locked.set()
                time.sleep(1.6)

        thread = threading.Thread(target=hold)
        thread.start()
        assert locked.wait(10)
        store.update("f", {"payload": {"v": 2}})
        thread.join()
        assert len(sleeps.calls) >= 1 and store.get("f")["payload"] == {"v": 2}
    finally:
        storage.close()


def sqlite_storage(db_url: str, prefix: str, attempts: int) -> SQLStorage:
    # A caller-supplied engine is used as is: a 50 ms busy timeout instead of memstate_sql's 30 s.
    engine = sa.create_engine(db_url, connect_args={"timeout": 0.05})
    storage = SQLStorage(engine, table_prefix=prefix, max_attempts=attempts)
    storage.runner.sleep = Sleeps(0.1)
    return storage


def test_sqlite_busy_is_retried(db: str, db_url: str, prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    only(db, "sqlite")
    caplog.set_level(logging.INFO, logger="memstate_sql")
    storage = sqlite_storage(db_url, prefix, attempts=20)
    store = MemoryStore(storage)
    store.commit(Fact(id="f", type="t", payload={"v": 1}))
    holder = sqlite3.connect(sa.make_url(db_url).database or "", isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.4, holder.commit)
    release.start()
    try:
        store.update("f", {"payload": {"v": 2}})
        assert len(storage.runner.sleep.calls) >= 1
        assert store.get("f")["payload"] == {"v": 2}
        retries = [r for r in caplog.records if "retrying after a retry error" in r.getMessage()]
        [done] = [
            r
            for r in caplog.records
            if getattr(r, "memstate_op", None) == "update" and r.levelno == logging.INFO and "ok" in r.getMessage()
        ]
        assert len(retries) == len(storage.runner.sleep.calls) and done.memstate_attempts == len(retries) + 1
    finally:
        release.join()
        holder.close()
        storage.engine.dispose()


def test_sqlite_busy_gives_up_with_the_cause(db: str, db_url: str, prefix: str) -> None:
    only(db, "sqlite")
    storage = sqlite_storage(db_url, prefix, attempts=3)
    store = MemoryStore(storage)
    store.commit(Fact(id="f", type="t", payload={"v": 1}))
    holder = sqlite3.connect(sa.make_url(db_url).database or "", isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(TransientStorageError, match="database is locked") as info:
            store.update("f", {"payload": {"v": 2}})
        assert "gave up after 3 attempts" in str(info.value)
    finally:
        holder.rollback()
        holder.close()
    assert store.get("f")["payload"] == {"v": 1} and log_count(storage) == 1
    storage.engine.dispose()


def test_a_database_error_of_the_hooks_own_connection_is_a_hook_error(
    db: str, db_url: str, prefix: str, other: sa.Engine
) -> None:
    """Only errors inside the operation's own transaction are classified (and maybe retried)."""
    calls: list[int] = []

    def hook(op: ms.Operation, fact_id: str, fact: ms.Fact | None) -> None:
        calls.append(1)
        with other.connect() as conn:
            conn.execute(sa.text("SELECT * FROM no_such_table_memstate"))

    storage = SQLStorage(db_url, table_prefix=prefix)
    store = MemoryStore(storage, [hook])
    try:
        with pytest.raises(ms.HookError):
            store.commit(Fact(id="f", type="t", payload={}))
        assert calls == [1] and store.get("f") is None and storage.get_tx_log(None) == []
    finally:
        storage.close()


def _kill_pooled_connections(db: str, storage: SQLStorage, other: sa.Engine) -> int:
    """End, from another client, the server sessions of the connections idle in `storage`'s pool."""
    pids: list[int] = []
    with storage.engine.connect() as conn:  # the pooled connection the next operation gets back
        query = "SELECT pg_backend_pid()" if db == "postgresql" else "SELECT CONNECTION_ID()"
        pids.append(int(conn.exec_driver_sql(query).scalar_one()))
    with other.begin() as conn:
        for pid in pids:
            conn.exec_driver_sql(f"SELECT pg_terminate_backend({pid})" if db == "postgresql" else f"KILL {pid}")
    return len(pids)


@pytest.mark.parametrize("first", ["get", "commit", "update", "query"])
def test_a_pooled_connection_dead_before_the_operation_is_replaced(
    db: str, db_url: str, prefix: str, other: sa.Engine, first: str, caplog: pytest.LogCaptureFixture
) -> None:
    """No pre-ping: a connection that died while idle in the pool (server restart, idle timeout, a DBA's
    kill) is found dead at the operation's first statement and the operation runs again on a fresh
    one; nothing of it had been applied, so it is applied exactly once."""
    only(db, "postgresql", "mysql")
    storage = SQLStorage(db_url, table_prefix=prefix, engine_options={"pool_size": 1})
    store = MemoryStore(storage)
    try:
        fid = store.commit(Fact(id="f", type="t", payload={"v": 1}), session_id="s")
        assert _kill_pooled_connections(db, storage, other) == 1
        caplog.set_level(logging.INFO, logger="memstate_sql")
        if first == "get":
            assert store.get(fid)["payload"] == {"v": 1}  # type: ignore[index]
        elif first == "commit":
            store.commit(Fact(id="g", type="t", payload={"v": 2}), session_id="s")
        elif first == "update":
            store.update(fid, {"payload": {"v": 3}})
        else:
            assert [d["id"] for d in store.query("t", {"payload.v": 1})] == ["f"]
        assert "dead at first use" in caplog.text
        log = [e["fact_id"] for e in storage.get_tx_log("s")] + [e["fact_id"] for e in storage.get_tx_log(None)]
        assert log.count("g") == (1 if first == "commit" else 0) and log.count("f") == (2 if first == "update" else 1)
    finally:
        storage.close()
    check_tables(db_url, prefix)
