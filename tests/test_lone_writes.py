"""Lone writes: a commit of a new fact, and an update, send their write without a transaction's round
trips (`Operations.commit_alone`, `Operations.update_alone`, `TransactionRunner._alone`): on PostgreSQL
one self-contained statement (fact row, session position and log entry) in autocommit, with no BEGIN and
no COMMIT; on MySQL/MariaDB the transaction's statements as one multi-statement text
(tests/test_scripted_writes.py has what is MySQL's own).

What must still hold, and is tried here on both: hooks and vectors keep the transaction (a raising hook
leaves nothing); an update whose row changed between its unlocked read and its write writes nothing and
runs again under the row's lock (nothing lost); refusals are the locked path's; a connection the server
closed while it was idle is never written on alone (the operation runs as a transaction and is retried,
as before); a connection lost under a lone write is reported as an unknown outcome, never retried
blindly. PostgreSQL's own: an engine with a stricter isolation level keeps its transactions; the
caller-id predictor.
"""

from __future__ import annotations

import asyncio
import select
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa

import memstate_sql as ms
from memstate_sql import ConnectionLost
from tests import scripts_support as scripts
from tests.dbutil import driver_of, listen, stop


@pytest.fixture
def pg(db: str) -> None:
    if db != "postgresql":
        pytest.skip("one-statement writes are PostgreSQL's (data-modifying CTEs)")


Sent = list[tuple[str, bool]]


def _status(conn: Any, statement: str) -> tuple[str, bool]:
    """(first word of the statement, whether the driver had a transaction open)."""
    return statement.split()[0], conn.connection.dbapi_connection.info.transaction_status.name != "IDLE"


def _listen(storage: ms.SQLStorage, hook: Callable[[Any, str], None] | None = None) -> Sent:
    return listen(storage.engine, _status, hook)


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
    assert poller.poll(5000), "the ended session's socket never became readable"


@dataclass(frozen=True)
class Lone:
    """What one database's lone writes look like from a statement listener, and how a test ends the
    server session of a connection."""

    status: Callable[[Any, str], tuple[str, bool]]  # (kind, whether a transaction was open) of a statement
    commit: str  # the kind of a lone commit's one round trip
    update: str  # the kind of a lone update's write (after its SELECT)
    read: str  # the kind of an update's read
    hooked_commit: Sent  # a commit with a hook: a transaction
    locked_update: Sent  # an update as a transaction, after its lone attempt
    ident: Callable[[Any], int]  # the server's id of a driver connection's session
    socket: Callable[[Any], int]  # its socket's file descriptor
    end: Callable[[str, int], None]  # end that session from another connection, and wait until it is gone
    async_status: Callable[[Any, str], tuple[str, bool]]  # `status` on the asyncio storage's connections
    async_hooked_commit: Sent  # a commit with a hook there (a checked-out connection: no BEGIN of ours)


def _pg_async_status(conn: Any, statement: str) -> tuple[str, bool]:
    # Whether the statement is part of a transaction: psycopg, outside autocommit, sends its BEGIN within
    # this very execute.
    driver = conn.connection.dbapi_connection._connection  # psycopg's AsyncConnection
    return statement.split()[0], not driver.autocommit


_PG = Lone(
    status=_status,
    commit="WITH",
    update="WITH",
    read="SELECT",
    hooked_commit=[("BEGIN", False), ("WITH", True)],
    locked_update=[("BEGIN", False), ("SELECT", True), ("WITH", True)],
    ident=lambda driver: int(driver.info.backend_pid),
    socket=lambda driver: int(driver.pgconn.socket),
    end=_terminate,
    async_status=_pg_async_status,
    async_hooked_commit=[("WITH", True)],
)


def _mysql() -> Lone:
    return Lone(
        status=scripts.status,
        commit=scripts.COMMIT,
        update=scripts.UPDATE,
        read="SELECT facts",
        hooked_commit=[("BEGIN", False), ("INSERT facts", True), ("INSERT sessions", True), ("INSERT tx", True)],
        locked_update=[(kind, kind != "BEGIN") for kind in scripts.LOCKED_UPDATE],
        ident=lambda driver: int(driver.thread_id()),
        socket=lambda driver: int(driver._sock.fileno()),
        end=scripts.kill_session,
        async_status=scripts.status,
        async_hooked_commit=[("INSERT facts", False), ("INSERT sessions", True), ("INSERT tx", True)],
    )


@pytest.fixture
def lone(db: str) -> Lone:
    if db == "sqlite":
        pytest.skip("SQLite writes are transactions (BEGIN IMMEDIATE): no lone writes")
    return _PG if db == "postgresql" else _mysql()


def test_commit_and_update_send_their_write_alone(lone: Lone, opened: Callable[..., ms.SQLStorage]) -> None:
    storage = opened()
    store = ms.MemoryStore(storage)
    store.count()
    sent = listen(storage.engine, lone.status)
    fid = store.commit(ms.Fact(type="note", payload={"n": 1}), session_id="s")
    assert sent == [(lone.commit, False)]  # no transaction was open before it: none of ours, none of the driver's
    sent.clear()
    store.update(fid, {"payload": {"m": 2}})
    assert sent == [(lone.read, False), (lone.update, False)]
    stop(sent)
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


def test_hooks_keep_the_transaction(lone: Lone, opened: Callable[..., ms.SQLStorage]) -> None:
    storage = opened()

    def hook(op: ms.Operation, fact_id: str, fact: ms.Fact | None) -> None:
        if fact is not None and fact.payload.get("refuse"):
            raise RuntimeError("refused by the hook")

    store = ms.MemoryStore(storage, [hook])
    store.count()
    sent = listen(storage.engine, lone.status)
    fid = store.commit(ms.Fact(type="note", payload={"n": 1}), session_id="s")
    assert sent == lone.hooked_commit
    with pytest.raises(ms.HookError):
        store.commit(ms.Fact(type="note", payload={"refuse": True}), session_id="s")
    with pytest.raises(ms.HookError):
        store.update(fid, {"payload": {"refuse": True}})
    # Nothing of the refused operations was written: neither the fact nor a log entry.
    assert store.count() == 1 and store.get(fid)["payload"] == {"n": 1}
    assert [e["op"] for e in storage.get_tx_log("s")] == ["COMMIT"]


def test_an_update_whose_row_changed_after_its_read_runs_again_under_lock(
    lone: Lone, opened: Callable[..., ms.SQLStorage]
) -> None:
    storage, other = opened(), opened()
    store, rival = ms.MemoryStore(storage), ms.MemoryStore(other)
    fid = store.commit(ms.Fact(type="note", payload={"n": 1}), session_id="s")
    raced: list[bool] = []

    def race(conn: Any, statement: str) -> None:
        # Between the lone update's unlocked read and its write, another process updates the row.
        if lone.status(conn, statement)[0] == lone.update and not raced:
            raced.append(True)
            rival.update(fid, {"payload": {"rival": True}})

    sent = listen(storage.engine, lone.status, race)
    store.update(fid, {"payload": {"mine": True}})
    # The lone write matched nothing (the version moved on) and logged nothing, so the update ran again,
    # under the row's lock.
    assert sent == [(lone.read, False), (lone.update, False), *lone.locked_update]
    assert store.get(fid)["payload"] == {"n": 1, "rival": True, "mine": True}
    assert store.get_with_version(fid)[1] == 3
    log = storage.get_tx_log("s")
    assert [e["op"] for e in log] == ["UPDATE", "UPDATE", "COMMIT"]
    assert log[0]["fact_before"]["payload"] == {"n": 1, "rival": True}


def test_refusals_are_those_of_the_locked_update(lone: Lone, opened: Callable[..., ms.SQLStorage]) -> None:
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
    lone: Lone, db_url: str, opened: Callable[..., ms.SQLStorage]
) -> None:
    storage = opened()
    store = ms.MemoryStore(storage)
    store.commit(ms.Fact(type="note", payload={"n": 0}), session_id="s")
    driver = driver_of(storage)
    lone.end(db_url, lone.ident(driver))  # as a server restart or an idle-session timeout would
    _wait_readable(lone.socket(driver))
    sent = listen(storage.engine, lambda conn, statement: lone.status(conn, statement)[0])
    fid = store.commit(ms.Fact(type="note", payload={"n": 1}), session_id="s")  # no ConnectionLost
    # Not alone on it: a transaction, whose BEGIN found the connection dead; then alone on a new one.
    assert sent == ["BEGIN", lone.commit]
    assert store.get(fid)["payload"] == {"n": 1}
    assert [e["fact_id"] for e in storage.get_tx_log("s")].count(fid) == 1


def test_a_connection_lost_under_a_lone_write_is_an_unknown_outcome(
    lone: Lone, db_url: str, opened: Callable[..., ms.SQLStorage]
) -> None:
    storage = opened()
    store = ms.MemoryStore(storage)
    store.commit(ms.Fact(type="note", payload={"n": 0}), session_id="s")
    ident = lone.ident(driver_of(storage))

    def lose(conn: Any, statement: str) -> None:
        if lone.status(conn, statement)[0] == lone.commit:
            lone.end(db_url, ident)  # the connection dies under the write about to be sent
            _wait_readable(lone.socket(conn.connection.dbapi_connection))

    sent = listen(storage.engine, lone.status, lose)
    with pytest.raises(ConnectionLost, match="unknown"):
        store.commit(ms.Fact(type="note", payload={"n": 1}), session_id="s")
    assert sent == [(lone.commit, False)]  # sent alone once, never retried blindly
    stop(sent)
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


def test_the_asyncio_store_writes_alone_on_its_checked_out_connection(lone: Lone, db_url: str, prefix: str) -> None:
    """`AsyncSQLStorage` checks a connection out per operation (no held ones): the lone write runs there
    (PostgreSQL in autocommit, which psycopg switches to for free; MySQL's text brings its transaction),
    and a hook still keeps the transaction."""
    hooked: list[str] = []

    async def hook(op: ms.Operation, fact_id: str, fact: ms.Fact | None) -> None:
        hooked.append(fact_id)

    async def scenario() -> None:
        storage = ms.AsyncSQLStorage(db_url, table_prefix=prefix)
        store, with_hook = ms.AsyncMemoryStore(storage), ms.AsyncMemoryStore(storage, [hook])
        try:
            await store.count()
            sent = listen(storage.engine.sync_engine, lone.async_status)
            fid = await store.commit(ms.Fact(type="note", payload={"n": 1}), session_id="s")
            assert sent == [(lone.commit, False)]
            sent.clear()
            await store.update(fid, {"payload": {"m": 2}})
            assert sent == [(lone.read, False), (lone.update, False)]
            sent.clear()
            other = await with_hook.commit(ms.Fact(type="note", payload={"n": 2}), session_id="s")
            assert sent == lone.async_hooked_commit and hooked == [other]
            assert (await store.get(fid))["payload"] == {"n": 1, "m": 2}
            assert [e["op"] for e in await storage.get_tx_log("s")] == ["COMMIT", "UPDATE", "COMMIT"]
        finally:
            await storage.close()

    asyncio.run(scenario())


def test_the_asyncio_store_keeps_a_stricter_isolation_levels_transactions(pg: None, db_url: str, prefix: str) -> None:
    async def scenario() -> None:
        strict = ms.AsyncSQLStorage(db_url, table_prefix=prefix, engine_options={"isolation_level": "SERIALIZABLE"})
        try:
            store = ms.AsyncMemoryStore(strict)
            await store.count()  # the schema check
            sent = listen(strict.engine.sync_engine, _pg_async_status)
            await store.commit(ms.Fact(type="note", payload={"n": 3}), session_id="s")
            assert sent == [("WITH", True)]  # a stricter isolation level keeps its transaction
        finally:
            await strict.close()

    asyncio.run(scenario())
