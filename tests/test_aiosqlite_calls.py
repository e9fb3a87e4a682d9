"""aiosqlite: calls to the worker thread per operation, and the transactions they keep.

Every call on an aiosqlite connection is a hop to its worker thread. memstate_sql's aiosqlite engines use
`OneCallConnection` / `OneCallCursor` (memstate_sql/dialects/sqlite.py): one call per statement, no COMMIT or
ROLLBACK call when SQLite has no transaction open, and the write transaction's BEGIN IMMEDIATE sent with its
first statement. These tests count the calls (aiosqlite's `Connection._execute`, through which every call
goes) against the statements SQLite actually ran (its trace callback), and check that the transactions are
still what they were: IMMEDIATE from the first statement, rolled back for real, hooks' failures included.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
import sqlalchemy as sa
from sqlalchemy.util.concurrency import await_

import memstate_sql as ms
from memstate_sql.dialects import sqlite as sqlite_dialect
from memstate_sql.dialects import support_for


class Recorder:
    """Worker-thread calls (`calls`) and the statements SQLite ran (`traced`), per measured operation."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.traced: list[str] = []
        self.on_statement: Any = None  # called in the worker thread with each statement's SQL

    def trace(self, sql: str) -> None:
        self.traced.append(sql.split(None, 1)[0].upper())
        if self.on_statement is not None:
            self.on_statement(sql)

    def clear(self) -> None:
        self.calls.clear()
        self.traced.clear()


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    rec = Recorder()
    original = aiosqlite.Connection._execute

    async def counted(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        rec.calls.append(getattr(fn, "__name__", repr(fn)))
        return await original(self, fn, *args, **kwargs)

    monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
    return rec


def traced_storage(path: Path, rec: Recorder, **options: Any) -> ms.AsyncSQLStorage:
    storage = ms.AsyncSQLStorage(f"sqlite:///{path}", **options)

    @sa.event.listens_for(storage.engine.sync_engine, "connect")
    def _trace(dbapi_conn: Any, _record: Any) -> None:
        await_(dbapi_conn._connection.set_trace_callback(rec.trace))

    return storage


OPERATIONS = ("commit", "update", "get", "query", "rollback", "commit_many")


async def measure(store: ms.AsyncMemoryStore, rec: Recorder) -> dict[str, tuple[int, list[str], list[str]]]:
    """(worker calls, call names, statements SQLite ran) of each operation, warmed once first."""
    fid = await store.commit(ms.Fact(type="note", payload={"n": 0}), session_id="s")
    counter = iter(range(1, 1_000_000))
    ops = {
        "commit": lambda: store.commit(ms.Fact(type="note", payload={"n": next(counter)}), session_id="s"),
        "update": lambda: store.update(fid, {"payload": {"n": -1}}),
        "get": lambda: store.get(fid),
        "query": lambda: store.query("note", {"payload.n": -1}, limit=5),
        "rollback": lambda: store.rollback("s", 1),
        "commit_many": lambda: store.commit_many(
            [ms.Fact(type="note", payload={"n": next(counter)}) for _ in range(3)], session_id="s"
        ),
    }
    found = {}
    for name in OPERATIONS:
        await ops[name]()
        rec.clear()
        await ops[name]()
        found[name] = (len(rec.calls), list(rec.calls), list(rec.traced))
    return found


def test_one_worker_call_per_statement(tmp_path: Path, recorder: Recorder) -> None:
    async def main() -> dict[str, tuple[int, list[str], list[str]]]:
        storage = traced_storage(tmp_path / "calls.db", recorder)
        try:
            return await measure(ms.AsyncMemoryStore(storage), recorder)
        finally:
            await storage.close()

    found = asyncio.run(main())
    for name, (calls, names, traced) in found.items():
        begins = [s for s in traced if s == "BEGIN"]
        ends = [s for s in traced if s in ("COMMIT", "ROLLBACK")]
        statements = len(traced) - len(begins) - len(ends)
        # A BEGIN costs no call of its own, every other statement one; COMMIT/ROLLBACK only when one ran.
        # (commit_many's rows and log entries are multi-row INSERTs: one statement, one call, each.)
        assert calls == statements + len(ends), (name, names, traced)
        assert names.count("commit") + names.count("rollback") == len(ends), (name, names, traced)
        assert set(names) <= {"_one_call", "commit", "rollback"}, (name, names)
    writes = ("commit", "update", "rollback", "commit_many")
    for name in writes:
        traced = found[name][2]
        assert traced[0] == "BEGIN" and traced[-1] == "COMMIT", (name, traced)  # a real transaction each
    # A point read and a query: one statement, one call (no cursor, fetch, close, COMMIT or pool-reset hops).
    assert found["get"][0] == 1 and found["query"][0] == 1, found
    assert found["commit"][0] <= 5, found["commit"]


def test_without_one_call_the_adapter_makes_several_calls_per_statement(
    tmp_path: Path, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The comparison the numbers above are about: SQLAlchemy's own aiosqlite cursors on the same store."""

    async def main(path: Path) -> dict[str, tuple[int, list[str], list[str]]]:
        storage = traced_storage(path, recorder)
        try:
            return await measure(ms.AsyncMemoryStore(storage), recorder)
        finally:
            await storage.close()

    fast = asyncio.run(main(tmp_path / "fast.db"))
    monkeypatch.setattr(sqlite_dialect, "install_one_call", lambda dbapi_conn: False)
    plain = asyncio.run(main(tmp_path / "plain.db"))
    for name in OPERATIONS:
        assert [s for s in plain[name][2] if s != "BEGIN"] == [s for s in fast[name][2] if s != "BEGIN"], name
        assert plain[name][0] >= 3 * fast[name][0], (name, plain[name][:2], fast[name][:2])


def test_install_is_guarded(tmp_path: Path) -> None:
    raw = sqlite3.connect(tmp_path / "plain.db")
    try:
        assert sqlite_dialect.install_one_call(raw) is False  # not SQLAlchemy's aiosqlite adapter: unchanged
        assert type(raw) is sqlite3.Connection
    finally:
        raw.close()

    async def main() -> type:
        storage = ms.AsyncSQLStorage(f"sqlite:///{tmp_path / 'guard.db'}")
        try:
            async with storage.engine.connect() as conn:
                dbapi_conn = (await conn.get_raw_connection()).dbapi_connection
                assert sqlite_dialect.install_one_call(dbapi_conn) is False  # already swapped: not twice
                return type(dbapi_conn)
        finally:
            await storage.close()

    assert asyncio.run(main()) is sqlite_dialect.OneCallConnection


def probe_write_lock(path: Path) -> str:
    """Try to take the write lock from another connection without waiting: "free" or SQLite's error."""
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
        return "free"
    except sqlite3.OperationalError as err:
        return str(err)
    finally:
        other.close()


def test_write_transaction_is_immediate_from_its_first_statement(tmp_path: Path, recorder: Recorder) -> None:
    path = tmp_path / "immediate.db"
    seen: list[tuple[str, str]] = []

    def at_statement(sql: str) -> None:  # in the worker thread, as SQLite starts each statement
        word = sql.split(None, 1)[0].upper()
        if word not in ("BEGIN", "COMMIT", "ROLLBACK", "PRAGMA"):
            seen.append((word, probe_write_lock(path)))

    async def main() -> None:
        storage = traced_storage(path, recorder)
        store = ms.AsyncMemoryStore(storage)
        try:
            fid = await store.commit(ms.Fact(type="note", payload={"n": 1}), session_id="s")
            recorder.on_statement = at_statement
            await store.update(fid, {"payload": {"n": 2}})
            writes = list(seen)
            seen.clear()
            assert await store.get(fid) is not None
            reads = list(seen)
        finally:
            recorder.on_statement = None
            await storage.close()
        # Before the update's first statement ran (a SELECT), the write lock was already this transaction's.
        assert writes and writes[0][0] == "SELECT", writes
        assert all("locked" in outcome for _, outcome in writes), writes
        # A read takes no write lock.
        assert reads and all(outcome == "free" for _, outcome in reads), reads

    asyncio.run(main())


def test_second_writer_waits_for_the_first(tmp_path: Path) -> None:
    path = tmp_path / "wait.db"
    holding, release = asyncio.Event, asyncio.Event

    async def main() -> None:
        held, go = holding(), release()

        async def hold(op: ms.Operation, fact_id: str, fact: ms.Fact | None) -> None:
            held.set()
            await go.wait()  # inside the first writer's transaction, after its writes

        first = ms.AsyncSQLStorage(f"sqlite:///{path}")
        second = ms.AsyncSQLStorage(f"sqlite:///{path}")
        try:
            await ms.AsyncMemoryStore(first).count()
            one = asyncio.ensure_future(
                ms.AsyncMemoryStore(first, [hold]).commit(ms.Fact(id="a", type="note", payload={}))
            )
            await held.wait()
            assert "locked" in probe_write_lock(path)
            two = asyncio.ensure_future(ms.AsyncMemoryStore(second).commit(ms.Fact(id="b", type="note", payload={})))
            await asyncio.sleep(0.5)
            assert not two.done()  # waiting for the write lock (busy timeout), not failing
            go.set()
            assert await one == "a"
            assert await asyncio.wait_for(two, 30) == "b"
            assert sorted(f["id"] for f in await ms.AsyncMemoryStore(second).query("note")) == ["a", "b"]
        finally:
            go.set()
            await first.close()
            await second.close()

    asyncio.run(main())


def rows(path: Path, sql: str) -> list[Any]:
    other = sqlite3.connect(path)
    try:
        return other.execute(sql).fetchall()
    finally:
        other.close()


def test_hook_raising_rolls_the_operation_back(tmp_path: Path, recorder: Recorder) -> None:
    path = tmp_path / "hook.db"

    class Refused(Exception):
        pass

    async def refuse(op: ms.Operation, fact_id: str, fact: ms.Fact | None) -> None:
        raise Refused(fact_id)

    async def main() -> None:
        storage = traced_storage(path, recorder, table_prefix="h")
        try:
            await ms.AsyncMemoryStore(storage).commit(ms.Fact(id="kept", type="note", payload={}), session_id="s")
            recorder.clear()
            with pytest.raises(ms.HookError) as raised:
                await ms.AsyncMemoryStore(storage, [refuse]).commit(
                    ms.Fact(id="gone", type="note", payload={}), session_id="s"
                )
            assert isinstance(raised.value.__cause__, Refused)
            assert recorder.traced[0] == "BEGIN" and recorder.traced[-1] == "ROLLBACK", recorder.traced
            assert "INSERT" in recorder.traced
            assert recorder.calls[-1] == "rollback"
            # The connection goes back to the pool clean: the next operation is a transaction of its own.
            assert await ms.AsyncMemoryStore(storage).get("gone") is None
        finally:
            await storage.close()

    asyncio.run(main())
    assert rows(path, "SELECT id FROM h_facts") == [("kept",)]
    assert rows(path, "SELECT fact_id FROM h_tx") == [("kept",)]
    assert rows(path, "SELECT last_seq FROM h_sessions") == [(1,)]


def test_rollback_of_a_deferred_begin_rolls_back(tmp_path: Path, recorder: Recorder) -> None:
    """On the connection itself: BEGIN IMMEDIATE pending, a first INSERT (which opens it), ROLLBACK."""
    path = tmp_path / "raw.db"
    begin_write = support_for("sqlite").begin_write

    async def main() -> None:
        storage = traced_storage(path, recorder)
        try:
            async with storage.engine.connect() as conn:
                await conn.exec_driver_sql("CREATE TABLE probe (n INTEGER)")
                await conn.commit()
                recorder.clear()
                transaction = await conn.begin()
                await conn.run_sync(begin_write)
                assert recorder.calls == []  # nothing sent yet
                await conn.exec_driver_sql("INSERT INTO probe VALUES (1)")
                assert recorder.calls == ["_one_call"] and recorder.traced == ["BEGIN", "INSERT"]
                assert "locked" in probe_write_lock(path)
                await transaction.rollback()
                assert recorder.traced[-1] == "ROLLBACK"
                assert probe_write_lock(path) == "free"
                # A write transaction that sent nothing leaves no pending BEGIN behind.
                async with conn.begin():
                    await conn.run_sync(begin_write)
                recorder.clear()
                await conn.exec_driver_sql("SELECT count(*) FROM probe")
                assert recorder.traced == ["SELECT"]
                await conn.commit()
                # Outside a SQLAlchemy transaction (nothing would end it) BEGIN IMMEDIATE is sent at once.
                recorder.clear()
                await conn.run_sync(begin_write)
                assert recorder.calls == ["_one_call"] and recorder.traced == ["BEGIN"]
                assert "locked" in probe_write_lock(path)
                await conn.rollback()
                assert probe_write_lock(path) == "free"
        finally:
            await storage.close()

    asyncio.run(main())
    assert rows(path, "SELECT count(*) FROM probe") == [(0,)]


def test_hot_statement_on_a_closed_connection_is_a_database_error(storage: ms.SQLStorage) -> None:
    """`Repository._send` opens its DB-API cursor inside its error handling: a connection found closed when the
    cursor is opened is a database error SQLAlchemy handles (wrapped, the connection invalidated: a disconnect
    the unit of work can classify), not a raw driver error escaping the repository."""
    fid = ms.MemoryStore(storage).commit(ms.Fact(type="note", payload={}))
    seen: list[BaseException] = []

    def work(repo: Any) -> Any:
        repo.conn.connection.dbapi_connection.close()
        try:
            return repo.get(fid)
        except BaseException as err:
            seen.append(err)
            raise

    with pytest.raises(ms.MemoryStoreError):
        storage.transaction(work, name="closed")
    assert seen, "the repository read succeeded on a closed connection"
    for err in seen:
        assert isinstance(err, sa.exc.DBAPIError) and err.connection_invalidated, repr(err)
    assert ms.MemoryStore(storage).get(fid) is not None  # the pool replaced the connection
