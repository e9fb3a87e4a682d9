"""Held read connections (`memstate_sql.readers`): a sync storage's one-statement reads run on one
autocommit connection per thread, which goes back to the pool when its thread ends, its storage closes,
an error happens on it, or the server drops it; a forked child never uses its parent's."""

from __future__ import annotations

import gc
import multiprocessing
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

import memstate_sql as ms


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    eng = sa.create_engine(db_url, pool_size=3)
    yield eng
    eng.dispose()


def _checkouts(engine: sa.Engine) -> list[int]:
    seen = [0]

    def checkout(*_: Any) -> None:
        seen[0] += 1

    sa.event.listen(engine, "checkout", checkout)
    return seen


def test_reads_of_one_thread_share_one_connection_that_sees_every_commit(engine: sa.Engine, prefix: str) -> None:
    storage = ms.SQLStorage(engine, table_prefix=prefix)
    store = ms.MemoryStore(storage)
    fid = store.commit(ms.Fact(type="note", payload={"n": 0}))
    store.get(fid)
    seen = _checkouts(engine)
    for n in range(1, 30):
        store.update(fid, {"payload": {"n": n}})
        got = store.get(fid)
        assert got is not None and got["payload"] == {"n": n}  # each read sees the commit before it
        assert store.query(typename="note", filters={"payload.n": n}) != []
        assert store.count(typename="note") == 1
    # Neither the 87 reads nor the 29 updates check a connection out: the updates' transactions run on
    # the held connection too, opened by an explicit BEGIN (DialectSupport.begin_held).
    assert seen[0] == 0
    storage.close()
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]


def test_a_finished_thread_gives_its_connection_back(engine: sa.Engine, prefix: str) -> None:
    storage = ms.SQLStorage(engine, table_prefix=prefix)
    store = ms.MemoryStore(storage)
    fid = store.commit(ms.Fact(type="note", payload={}))
    baseline = engine.pool.checkedout()  # type: ignore[attr-defined]
    results: list[Any] = []
    worker = threading.Thread(target=lambda: results.append(store.get(fid)))
    worker.start()
    worker.join()
    del worker
    gc.collect()
    assert results and results[0]["id"] == fid
    assert engine.pool.checkedout() == baseline  # type: ignore[attr-defined]
    storage.close()


def test_held_connections_leave_the_pool_room_for_writers(engine: sa.Engine, prefix: str) -> None:
    """pool_size=3: at most two threads hold a connection; the others check one out per operation."""
    storage = ms.SQLStorage(engine, table_prefix=prefix)
    store = ms.MemoryStore(storage)
    fid = store.commit(ms.Fact(type="note", payload={"n": 0}))
    gate = threading.Barrier(6)
    errors: list[BaseException] = []
    held: list[int] = []

    def reader(k: int) -> None:
        try:
            store.get(fid)
            gate.wait(timeout=30)  # every thread has read: only held connections are checked out
            held.append(engine.pool.checkedout())  # type: ignore[attr-defined]
            gate.wait(timeout=30)
            store.update(fid, {"payload": {"n": k}})  # writers on held and on checked-out connections
            assert store.get(fid) is not None
            gate.wait(timeout=30)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=reader, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert held == [2] * 6
    storage.close()
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]


def test_a_sibling_closing_leaves_its_parents_connections(engine: sa.Engine, prefix: str) -> None:
    storage = ms.SQLStorage(engine, table_prefix=prefix)
    tenant = storage.for_namespace("tenant-a")
    tenant_store = ms.MemoryStore(tenant)
    fid = tenant_store.commit(ms.Fact(type="note", payload={}))
    assert ms.MemoryStore(storage).get(fid) is None  # the default namespace's read: held
    assert tenant_store.get(fid) is not None  # the same held connection, another namespace
    assert engine.pool.checkedout() == 1  # type: ignore[attr-defined]
    tenant.close()
    seen = _checkouts(engine)
    assert tenant_store.get(fid) is not None
    assert seen[0] == 0
    storage.close()
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]


def _kill(engine: sa.Engine, victim: Any) -> None:
    with engine.connect() as admin:
        if engine.dialect.name == "postgresql":
            pid = victim.info.backend_pid
            admin.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        else:
            admin.execute(sa.text(f"KILL {int(victim.thread_id())}"))


def _reading(engine: sa.Engine, prefix: str, payload: dict[str, Any]) -> tuple[ms.SQLStorage, ms.MemoryStore, str, Any]:
    """A storage whose thread has read once (so holds a connection): storage, store, the fact's id, readers."""
    storage = ms.SQLStorage(engine, table_prefix=prefix)
    store = ms.MemoryStore(storage)
    fid = store.commit(ms.Fact(type="note", payload=payload))
    assert store.get(fid) is not None
    readers = storage.runner.readers
    assert readers is not None and readers.local.held is not None
    return storage, store, fid, readers


def test_a_held_connection_the_server_dropped_is_replaced(db: str, engine: sa.Engine, prefix: str) -> None:
    if db == "sqlite":
        pytest.skip("SQLite is embedded: there is no server to drop a connection")
    storage, store, fid, readers = _reading(engine, prefix, {"n": 1})
    victim = readers.local.held.conn.connection.dbapi_connection
    _kill(engine, victim)
    got = store.get(fid)  # found dead at its first statement: read again on a fresh connection
    assert got is not None and got["payload"] == {"n": 1}
    assert readers.local.held.conn.connection.dbapi_connection is not victim
    storage.close()
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]


def _child_reads(fid: str, queue: Any) -> None:
    storage, parents = _INHERITED_STORAGE
    got = ms.MemoryStore(storage).get(fid)
    readers = storage.runner.readers
    assert readers is not None
    queue.put((None if got is None else got["payload"], readers.local.held.conn is parents))


_INHERITED_STORAGE: list[Any] = []


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork on this platform")
def test_a_forked_child_never_uses_its_parents_connection(db_url: str, prefix: str) -> None:
    engine = sa.create_engine(db_url, pool_size=3)
    storage, store, fid, readers = _reading(engine, prefix, {"n": 7})
    parents = readers.local.held.conn
    _INHERITED_STORAGE[:] = [storage, parents]
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child_reads, args=(fid, queue))
    child.start()
    assert queue.get(timeout=60) == ({"n": 7}, False)  # the child read on a connection of its own
    child.join(timeout=60)
    assert child.exitcode == 0
    # The parent's connection was neither used nor closed by the child: it still answers, as itself.
    assert readers.local.held.conn is parents
    assert parents.exec_driver_sql("SELECT 1").scalar() == 1
    parents.commit()
    got = store.get(fid)
    assert got is not None and got["payload"] == {"n": 7}
    _INHERITED_STORAGE.clear()
    storage.close()
    engine.dispose()


def test_async_storages_and_null_pools_hold_nothing(db_url: str, prefix: str) -> None:
    storage = ms.SQLStorage(sa.create_engine(db_url, poolclass=sa.pool.NullPool), table_prefix=prefix)
    assert storage.runner.readers is None
    ms.MemoryStore(storage).count()
    storage.close()


def test_a_failed_operation_leaves_the_held_connection_clean(engine: sa.Engine, prefix: str) -> None:
    """An operation's own failure (a raising hook, a conflict) rolls its transaction back and keeps the
    connection, with nothing open on it; a database error gives the connection back to the pool."""
    storage = ms.SQLStorage(engine, table_prefix=prefix)
    store = ms.MemoryStore(storage)
    fid = store.commit(ms.Fact(type="note", payload={"n": 1}))
    readers = storage.runner.readers
    assert readers is not None and store.get(fid) is not None
    held = readers.local.held.conn

    armed = [True]

    def refuse(*_: Any) -> None:
        if armed[0]:
            raise RuntimeError("hook refuses")

    store.add_hook(refuse)
    with pytest.raises(ms.HookError, match="hook refuses"):
        store.update(fid, {"payload": {"n": 2}})
    armed[0] = False
    assert readers.local.held.conn is held and not held.in_transaction()
    got = store.get(fid)
    assert got is not None and got["payload"] == {"n": 1}
    with pytest.raises(ms.ConflictError):
        store.update(fid, {"payload": {"n": 3}}, expected_version=99)
    assert readers.local.held.conn is held and not held.in_transaction()
    store.update(fid, {"payload": {"n": 4}})
    got = store.get(fid)
    assert got is not None and got["payload"] == {"n": 4}
    # A database error on the held connection: it is given back, the next read opens another.
    with pytest.raises(ms.StorageError):
        storage._read(lambda repo: repo.conn.exec_driver_sql("SELECT * FROM no_such_table"), one_statement=True)
    assert readers.local.held is None
    assert store.get(fid) is not None
    storage.close()
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]


@pytest.mark.parametrize("level", ["REPEATABLE READ", "SERIALIZABLE"])
def test_transactions_keep_the_isolation_level_the_engine_was_given(
    db: str, db_url: str, prefix: str, level: str
) -> None:
    """A held autocommit connection opens its transactions itself: at the engine's isolation level, as
    the driver would have (psycopg carries it in its BEGIN; MySQL keeps it as a session setting)."""
    if db == "sqlite":
        pytest.skip("SQLite has one isolation level for its transactions (serializable)")
    storage = ms.SQLStorage(db_url, table_prefix=prefix, engine_options={"isolation_level": level})
    ms.MemoryStore(storage).count()
    seen = storage.transaction(
        lambda repo: repo.conn.dialect.get_isolation_level(repo.conn.connection.dbapi_connection), write=True
    )
    assert storage.runner.readers is not None and storage.runner.readers.local.held is not None
    assert str(seen).replace("-", " ").upper() == level
    storage.close()


def test_a_sibling_called_from_a_hook_runs_beside_the_operation_not_inside_it(engine: sa.Engine, prefix: str) -> None:
    """A `for_namespace` sibling shares its parent's held connections; its operation, called by a hook
    of the parent's running operation, is an operation of its own on another connection: it does not
    see the parent's uncommitted row."""
    storage = ms.SQLStorage(engine, table_prefix=prefix)
    tenant = storage.for_namespace("tenant-b")
    store = ms.MemoryStore(storage)
    store.count()
    facts = storage.models.Fact.__table__.name
    seen: list[int] = []

    def count_rows(repo: Any) -> int:
        return int(repo.conn.exec_driver_sql(f"SELECT count(*) FROM {facts}").scalar())

    def hook(*_: Any) -> None:
        seen.append(tenant.transaction(count_rows, write=False))
        seen.append(tenant._read(count_rows, one_statement=True))

    store.add_hook(hook)
    store.commit(ms.Fact(type="note", payload={}))
    assert seen == [0, 0]  # the hook ran before COMMIT: the row was not committed yet
    assert tenant._read(count_rows, one_statement=True) == 1
    storage.close()
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
