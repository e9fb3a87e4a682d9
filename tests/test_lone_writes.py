"""Lone writes: on PostgreSQL a commit of a new fact, and an update, send their one self-contained write
(fact row, session position and log entry in one statement) in autocommit, with no BEGIN and no COMMIT
(`Operations.commit_alone`, `Operations.update_alone`, `TransactionRunner._alone`).

What must still hold, and is tried here: hooks and vectors keep the transaction (a raising hook leaves
nothing); an update whose row changed between its unlocked read and its write writes nothing and runs
again under the row's lock (nothing lost); refusals are the locked path's; a connection the server
closed while it was idle is never written on alone (the operation runs as a transaction and is retried,
as before); a connection lost under a lone write is reported as an unknown outcome, never retried
blindly; an engine with a stricter isolation level keeps its transactions.
"""

from __future__ import annotations

import asyncio
import select
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa

import memstate_sql as ms
from memstate_sql import ConnectionLost


@pytest.fixture
def pg(db: str) -> None:
    if db != "postgresql":
        pytest.skip("one-statement writes are PostgreSQL's (data-modifying CTEs); elsewhere a write is a transaction")


Sent = list[tuple[str, bool]]


def _listen(storage: ms.SQLStorage, hook: Callable[[Any, str], None] | None = None) -> Sent:
    """(first word of each statement, whether the driver had a transaction open) for every statement
    from now on (until `_stop`)."""
    sent: Sent = []

    def listener(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        status = conn.connection.dbapi_connection.info.transaction_status.name
        sent.append((statement.split()[0], status != "IDLE"))
        if hook is not None:
            hook(conn, statement)

    sa.event.listen(storage.engine, "before_cursor_execute", listener)
    _LISTENERS[id(sent)] = (storage, listener)
    return sent


_LISTENERS: dict[int, tuple[ms.SQLStorage, Any]] = {}


def _stop(sent: Sent) -> None:
    storage, listener = _LISTENERS.pop(id(sent))
    sa.event.remove(storage.engine, "before_cursor_execute", listener)


@pytest.fixture
def opened(db_url: str, prefix: str) -> Iterator[Callable[..., ms.SQLStorage]]:
    made: list[ms.SQLStorage] = []

    def make(**options: Any) -> ms.SQLStorage:
        storage = ms.SQLStorage(db_url, table_prefix=prefix, **options)
        made.append(storage)
        return storage

    yield make
    for storage in made:
        storage.close()


def _terminate(db_url: str, pid: int) -> None:
    engine = sa.create_engine(db_url, poolclass=sa.NullPool)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar() is True
        alive = sa.text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid")
        for _ in range(200):  # until the server process is gone
            if conn.execute(alive, {"pid": pid}).scalar() == 0:
                break
            time.sleep(0.01)
    engine.dispose()


def _wait_readable(fd: int) -> None:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    assert poller.poll(5000), "the terminated session's socket never became readable"


def test_commit_and_update_send_their_write_alone(pg: None, opened: Callable[..., ms.SQLStorage]) -> None:
    storage = opened()
    store = ms.MemoryStore(storage)
    store.count()
    sent = _listen(storage)
    fid = store.commit(ms.Fact(type="note", payload={"n": 1}), session_id="s")
    assert sent == [("WITH", False)]  # no BEGIN, and none opened by the driver: autocommit
    sent.clear()
    store.update(fid, {"payload": {"m": 2}})
    assert sent == [("SELECT", False), ("WITH", False)]
    assert store.get(fid)["payload"] == {"n": 1, "m": 2} and store.get_with_version(fid)[1] == 2
    assert [(e["op"], e["fact_id"]) for e in storage.get_tx_log("s")] == [("UPDATE", fid), ("COMMIT", fid)]
    # The log's entries carry what a transaction's would: the state before and after, in session order.
    update = storage.get_tx_log("s")[0]
    assert update["fact_before"]["payload"] == {"n": 1} and update["fact_after"]["payload"] == {"n": 1, "m": 2}
    store.rollback("s", 1)
    assert store.get(fid)["payload"] == {"n": 1}


def test_a_given_id_is_tried_alone_until_commits_keep_finding_theirs_taken(
    pg: None, opened: Callable[..., ms.SQLStorage]
) -> None:
    storage = opened()
    store = ms.MemoryStore(storage)
    store.count()
    sent = _listen(storage)

    def commit(fid: str, n: int) -> list[str]:
        sent.clear()
        store.commit(ms.Fact(id=fid, type="note", payload={"n": n}), session_id="s")
        return [word for word, _ in sent]

    assert commit("a", 1) == ["WITH"]  # a new id: alone
    # Commits that update (the id is taken) try alone in vain three times, then go straight to the
    # transaction, except every 16th, which tries again.
    assert [commit("a", n) for n in range(2, 5)] == [["WITH", "BEGIN", "SELECT", "WITH"]] * 3
    upserts = [commit("a", n) for n in range(5, 5 + 16)]
    assert upserts[:15] == [["BEGIN", "SELECT", "WITH"]] * 15 and upserts[15] == ["WITH", "BEGIN", "SELECT", "WITH"]
    # A new id meanwhile: the transaction all the same (the row read under lock, then inserted and logged).
    assert commit("b", 0) == ["BEGIN", "SELECT", "INSERT", "WITH"]
    upserts = [commit(f"new{n}", n) for n in range(15)]  # "b" was the 17th: the next probe is the 32nd
    assert upserts[:14] == [["BEGIN", "SELECT", "INSERT", "WITH"]] * 14
    assert upserts[14] == ["WITH"]  # the probe finds a new id: alone again from then on
    assert commit("c", 0) == ["WITH"]
    assert store.get_with_version("a")[1] == 20 and store.count() == 1 + 1 + 15 + 1
    assert len(storage.get_tx_log("s", limit=100)) == 20 + 1 + 15 + 1


def test_hooks_keep_the_transaction(pg: None, opened: Callable[..., ms.SQLStorage]) -> None:
    storage = opened()

    def hook(op: ms.Operation, fact_id: str, fact: ms.Fact | None) -> None:
        if fact is not None and fact.payload.get("refuse"):
            raise RuntimeError("refused by the hook")

    store = ms.MemoryStore(storage, [hook])
    store.count()
    sent = _listen(storage)
    fid = store.commit(ms.Fact(type="note", payload={"n": 1}), session_id="s")
    assert sent == [("BEGIN", False), ("WITH", True)]
    with pytest.raises(ms.HookError):
        store.commit(ms.Fact(type="note", payload={"refuse": True}), session_id="s")
    with pytest.raises(ms.HookError):
        store.update(fid, {"payload": {"refuse": True}})
    # Nothing of the refused operations was written: neither the fact nor a log entry.
    assert store.count() == 1 and store.get(fid)["payload"] == {"n": 1}
    assert [e["op"] for e in storage.get_tx_log("s")] == ["COMMIT"]


def test_an_update_whose_row_changed_after_its_read_runs_again_under_lock(
    pg: None, opened: Callable[..., ms.SQLStorage]
) -> None:
    storage, other = opened(), opened()
    store, rival = ms.MemoryStore(storage), ms.MemoryStore(other)
    fid = store.commit(ms.Fact(type="note", payload={"n": 1}), session_id="s")
    raced: list[bool] = []

    def race(conn: Any, statement: str) -> None:
        # Between the lone update's unlocked read and its write, another process updates the row.
        if statement.startswith("WITH") and not raced:
            raced.append(True)
            rival.update(fid, {"payload": {"rival": True}})

    sent = _listen(storage, race)
    store.update(fid, {"payload": {"mine": True}})
    # The lone write matched nothing (the version moved on), so the update ran again, under the row's lock.
    assert sent == [("SELECT", False), ("WITH", False), ("BEGIN", False), ("SELECT", True), ("WITH", True)]
    assert store.get(fid)["payload"] == {"n": 1, "rival": True, "mine": True}
    assert store.get_with_version(fid)[1] == 3
    assert [e["op"] for e in storage.get_tx_log("s")] == ["UPDATE", "UPDATE", "COMMIT"]


def test_refusals_are_those_of_the_locked_update(pg: None, opened: Callable[..., ms.SQLStorage]) -> None:
    storage = opened()
    store = ms.MemoryStore(storage)
    fid = store.commit(ms.Fact(type="note", payload={"n": 1}))
    with pytest.raises(ms.ConflictError, match="version"):
        store.update(fid, {"payload": {"n": 2}}, expected_version=7)
    with pytest.raises(ms.FactNotFound):
        store.update("missing", {"payload": {"n": 2}})
    storage.register_constraint("frozen", ms.Constraint(immutable=True))
    frozen = store.commit(ms.Fact(type="frozen", payload={"n": 1}))
    with pytest.raises(ms.MemoryStoreError, match="mmutable"):
        store.update(frozen, {"payload": {"n": 2}})
    assert store.get_with_version(fid)[1] == 1 and store.get(frozen)["payload"] == {"n": 1}
    assert store.update(fid, {"payload": {"n": 3}}, expected_version=1) == fid


def test_a_connection_closed_by_the_server_while_idle_is_not_written_on_alone(
    pg: None, db_url: str, opened: Callable[..., ms.SQLStorage]
) -> None:
    storage = opened()
    store = ms.MemoryStore(storage)
    store.commit(ms.Fact(type="note", payload={"n": 0}), session_id="s")
    fds: list[int] = []
    sent = _listen(storage, lambda conn, _: fds.append(conn.connection.dbapi_connection.pgconn.socket))
    store.count()
    pid = _backend_pid_of(storage)
    _terminate(db_url, pid)  # as a server restart or an idle-session timeout would
    _wait_readable(fds[-1])
    sent.clear()
    fid = store.commit(ms.Fact(type="note", payload={"n": 1}), session_id="s")  # no ConnectionLost
    # Not alone on it: a transaction, whose BEGIN found the connection dead; then alone on a new one.
    assert sent == [("BEGIN", False), ("WITH", False)]
    assert store.get(fid)["payload"] == {"n": 1}
    assert [e["fact_id"] for e in storage.get_tx_log("s")].count(fid) == 1


def _backend_pid_of(storage: ms.SQLStorage) -> int:
    pids: list[int] = []

    def listener(conn: Any, *args: Any) -> None:
        pids.append(conn.connection.dbapi_connection.info.backend_pid)

    sa.event.listen(storage.engine, "before_cursor_execute", listener)
    try:
        ms.MemoryStore(storage).count()
    finally:
        sa.event.remove(storage.engine, "before_cursor_execute", listener)
    return pids[-1]


def test_a_connection_lost_under_a_lone_write_is_an_unknown_outcome(
    pg: None, db_url: str, opened: Callable[..., ms.SQLStorage]
) -> None:
    storage = opened()
    store = ms.MemoryStore(storage)
    store.commit(ms.Fact(type="note", payload={"n": 0}), session_id="s")
    pid = _backend_pid_of(storage)

    def lose(conn: Any, statement: str) -> None:
        if statement.startswith("WITH"):
            _terminate(db_url, pid)  # the connection dies under the statement about to be sent
            _wait_readable(conn.connection.dbapi_connection.pgconn.socket)

    sent = _listen(storage, lose)
    with pytest.raises(ConnectionLost, match="unknown"):
        store.commit(ms.Fact(type="note", payload={"n": 1}), session_id="s")
    assert sent == [("WITH", False)]  # sent alone once, never retried blindly
    _stop(sent)
    # Here it had not reached the server: nothing written, and the store carries on.
    assert store.count() == 1
    store.commit(ms.Fact(type="note", payload={"n": 2}), session_id="s")
    assert [e["op"] for e in storage.get_tx_log("s")] == ["COMMIT", "COMMIT"]


def test_a_stricter_isolation_level_keeps_its_transactions(pg: None, opened: Callable[..., ms.SQLStorage]) -> None:
    storage = opened(engine_options={"isolation_level": "SERIALIZABLE"})
    store = ms.MemoryStore(storage)
    store.count()
    sent = _listen(storage)
    fid = store.commit(ms.Fact(type="note", payload={"n": 1}), session_id="s")
    store.update(fid, {"payload": {"n": 2}})
    assert [word for word, _ in sent] == ["BEGIN", "WITH", "BEGIN", "SELECT", "WITH"]
    assert all(in_tx for word, in_tx in sent if word != "BEGIN")


def test_the_asyncio_store_writes_alone_on_its_checked_out_connection(pg: None, db_url: str, prefix: str) -> None:
    """`AsyncSQLStorage` checks a connection out per operation (no held ones): the lone write runs there,
    in autocommit (psycopg switches for free), and a hook still keeps the transaction."""
    sent: Sent = []

    def listener(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        # Whether the statement is part of a transaction: psycopg, outside autocommit, sends its BEGIN
        # within this very execute.
        driver = conn.connection.dbapi_connection._connection  # psycopg's AsyncConnection
        sent.append((statement.split()[0], not driver.autocommit))

    hooked: list[str] = []

    async def hook(op: ms.Operation, fact_id: str, fact: ms.Fact | None) -> None:
        hooked.append(fact_id)

    async def scenario() -> None:
        storage = ms.AsyncSQLStorage(db_url, table_prefix=prefix)
        store, with_hook = ms.AsyncMemoryStore(storage), ms.AsyncMemoryStore(storage, [hook])
        try:
            await store.count()
            sa.event.listen(storage.engine.sync_engine, "before_cursor_execute", listener)
            fid = await store.commit(ms.Fact(type="note", payload={"n": 1}), session_id="s")
            assert sent == [("WITH", False)]
            sent.clear()
            await store.update(fid, {"payload": {"m": 2}})
            assert sent == [("SELECT", False), ("WITH", False)]
            sent.clear()
            other = await with_hook.commit(ms.Fact(type="note", payload={"n": 2}), session_id="s")
            assert sent == [("WITH", True)] and hooked == [other]
            assert (await store.get(fid))["payload"] == {"n": 1, "m": 2}
            assert [e["op"] for e in await storage.get_tx_log("s")] == ["COMMIT", "UPDATE", "COMMIT"]
        finally:
            await storage.close()
        strict = ms.AsyncSQLStorage(db_url, table_prefix=prefix, engine_options={"isolation_level": "SERIALIZABLE"})
        try:
            strict_store = ms.AsyncMemoryStore(strict)
            await strict_store.count()  # the schema check
            sa.event.listen(strict.engine.sync_engine, "before_cursor_execute", listener)
            sent.clear()
            await strict_store.commit(ms.Fact(type="note", payload={"n": 3}), session_id="s")
            assert sent == [("WITH", True)]  # a stricter isolation level keeps its transaction
        finally:
            await strict.close()

    asyncio.run(scenario())
