"""Round trips of a one-step rollback, per database: what the guarantees need and nothing more.

Counted as `benchmarks/run.py` counts them: every statement sent (a SQLAlchemy ``before_cursor_execute``
listener, which also moves the hot statements onto SQLAlchemy's path so that it sees them), psycopg's own
BEGIN, and the COMMIT of a server database (SQLite's is in-process). A one-step rollback of a session's
last change to a fact that exists takes 9 on SQLite, 8 on PostgreSQL:

    (BEGIN) · session row locked · the session's newest entry · the fact read and locked · later entries of
    the fact · the versioned UPDATE/DELETE · the entry marked undone · ROLLBACK entry (SQLite, MySQL: its
    position, then the row; PostgreSQL: the mark, the position and the row in one statement) · (COMMIT)

and 10 on MySQL: a sync store runs its transactions on the thread's held autocommit connection
(`memstate_sql.readers`), which MySQL enters with a BEGIN of ours (pymysql, outside autocommit, sends none:
the server opens the transaction by itself); in exchange, no ROLLBACK is sent when a connection goes back to
the pool after each operation (SQLAlchemy's reset on return, which this listener does not see).

A fact that was absent when the plan read it could not be locked: a writer may have created and logged it
since, so the later entries are read once more before COMMIT (10) — except on SQLite, whose writers are
serialised. On Galera the re-check always happens: its row locks are node-local.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa

import memstate_sql as ms

#: The statements of one-step rollback of a present fact, per database (see the module docstring).
ONE_STEP = {"sqlite": 9, "postgresql": 8, "mysql": 10}


@contextmanager
def counting(engine: sa.Engine) -> Iterator[list[str]]:
    dialect = engine.dialect.name
    sent: list[str] = []

    def statement(conn: Any, cursor: Any, sql: str, *args: Any) -> None:
        dbapi = conn.connection.dbapi_connection
        if dialect == "postgresql" and not dbapi.autocommit and dbapi.info.transaction_status == 0:
            sent.append("BEGIN")  # psycopg opens the transaction with a BEGIN of its own
        sent.append(" ".join(sql.split())[:80])

    def ended(conn: Any) -> None:
        dbapi = conn.connection.dbapi_connection
        if dialect == "postgresql" and dbapi.info.transaction_status == 0:
            return  # nothing to end: psycopg sends nothing
        if dialect != "sqlite":  # in-process: no round trip
            sent.append("END")

    sa.event.listen(engine, "before_cursor_execute", statement)
    sa.event.listen(engine, "commit", ended)
    sa.event.listen(engine, "rollback", ended)
    try:
        yield sent
    finally:
        sa.event.remove(engine, "before_cursor_execute", statement)
        sa.event.remove(engine, "commit", ended)
        sa.event.remove(engine, "rollback", ended)


@pytest.fixture
def store(db_url: str, prefix: str) -> Iterator[ms.MemoryStore]:
    storage = ms.SQLStorage(db_url, table_prefix=prefix)
    try:
        yield ms.MemoryStore(storage)
    finally:
        storage.close()


def trips(store: ms.MemoryStore, op: Callable[[], Any]) -> list[str]:
    with counting(store.storage.engine) as sent:
        op()
    return list(sent)


def warm(store: ms.MemoryStore) -> None:
    """One rollback first: schema check, connection settings and statement caches are not counted."""
    store.commit(ms.Fact(id="warm", type="note", payload={}), session_id="warm")
    store.rollback("warm", 1)


def test_rollback_of_an_update_and_of_a_commit(store: ms.MemoryStore, db: str) -> None:
    warm(store)
    store.commit(ms.Fact(id="a", type="note", payload={"n": 1}), session_id="s")
    store.commit(ms.Fact(id="b", type="note", payload={"n": 1}), session_id="s")
    store.update("a", {"payload": {"n": 2}})
    restore = trips(store, lambda: store.rollback("s", 1))  # the UPDATE: versioned UPDATE back
    assert len(restore) == ONE_STEP[db], restore
    assert store.get("a")["payload"] == {"n": 1}
    remove = trips(store, lambda: store.rollback("s", 1))  # the COMMIT of b: versioned DELETE
    assert len(remove) == ONE_STEP[db], remove
    assert store.get("b") is None
    assert [e["fact_id"] for e in store.storage.get_tx_log("s", limit=10)] == ["a"], (
        "the undone entries left the active log"
    )


def test_an_absent_fact_is_rechecked_where_it_could_not_be_locked(store: ms.MemoryStore, db: str) -> None:
    """Undoing a DELETE re-creates a fact the plan found absent (no row to lock)."""
    warm(store)
    store.commit(ms.Fact(id="d", type="note", payload={"n": 1}), session_id="s")
    store.delete("s", "d")
    sent = trips(store, lambda: store.rollback("s", 1))
    assert store.get("d")["payload"] == {"n": 1}
    assert len(sent) == ONE_STEP[db] + (0 if db == "sqlite" else 1), sent


def test_galera_always_rechecks(store: ms.MemoryStore, db: str) -> None:
    """A Galera node's locks do not keep writers on other nodes off the rows: read the later entries again."""
    if db != "mysql":
        pytest.skip("Galera is a MySQL-family cluster")
    warm(store)
    readers = store.storage.runner.readers
    assert readers is not None
    info = readers.local.held.conn.connection.info  # the thread's held connection, as a Galera node's
    assert info.get("memstate_galera") is False
    info["memstate_galera"] = True
    try:
        store.commit(ms.Fact(id="g", type="note", payload={"n": 1}), session_id="s")
        store.update("g", {"payload": {"n": 2}})
        sent = trips(store, lambda: store.rollback("s", 1))
    finally:
        info["memstate_galera"] = False
    assert len(sent) == ONE_STEP[db] + 1, sent
    assert store.get("g")["payload"] == {"n": 1}


def test_forced_and_dry_run_rollbacks_keep_their_reads(store: ms.MemoryStore, db: str) -> None:
    """The merged plan read serves the dry run (no lock) and a forced rollback over another session's change."""
    warm(store)
    store.commit(ms.Fact(id="c", type="note", payload={"n": 1}), session_id="s")
    store.commit(ms.Fact(id="c", type="note", payload={"n": 2}), session_id="other")  # replaces c
    plan = store.plan_rollback("s", 1)
    assert [c.later_session_id for c in plan.conflicts] == ["other"]
    assert [a.action for a in plan.actions] == ["delete"]
    with pytest.raises(ms.ConflictError):
        store.rollback("s", 1)
    assert store.get("c")["payload"] == {"n": 2}
    sent = trips(store, lambda: store.rollback("s", 1, force=True))
    assert store.get("c") is None
    # The overridden UPDATE is marked undone in the same statement as the undone COMMIT.
    assert len(sent) == ONE_STEP[db], sent
    assert store.storage.get_tx_log("other", limit=10) == []
