"""The statements each store operation sends, per database: the minimum its guarantees allow.

Counted with a ``before_cursor_execute`` listener. A sync store's operations run on the thread's held
autocommit connection (`memstate_sql.readers`), where the BEGIN is a statement of ours (SQLite's ``BEGIN
IMMEDIATE``, elsewhere ``BEGIN``: what psycopg and pymysql would send by themselves outside autocommit)
and is seen; the drivers' COMMIT is not. A change that adds a round trip to the hot path fails here; one
that removes one updates the expected list.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa

import memstate_sql as ms


def _kind(statement: str) -> str:
    if ";" in statement:  # a MySQL script, sent as one text in one round trip
        return "; ".join(_kind(part) for part in statement.split(";"))
    words = statement.split()
    if words[0] in ("BEGIN", "START", "COMMIT", "SET"):
        return statement.strip()
    if words[0] == "WITH":
        return "WITH"
    table = words[2] if words[0] in ("INSERT", "DELETE") else ""
    if words[0] == "UPDATE":
        table = words[1]
    if words[0] == "SELECT":
        table = re.split(r"\sFROM\s", statement, maxsplit=1)[1].split()[0]
    return f"{words[0]} {table.strip(chr(34)).strip('`').rsplit('_', 1)[-1]}"


@pytest.fixture
def counted(db_url: str, prefix: str) -> Iterator[tuple[ms.MemoryStore, Callable[[Callable[[], Any]], list[str]]]]:
    storage = ms.SQLStorage(db_url, table_prefix=prefix)
    store = ms.MemoryStore(storage)
    store.count()  # the schema check and the first connection are not part of an operation
    sent: list[str] = []

    def listener(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        sent.append(_kind(statement))

    def run(operation: Callable[[], Any]) -> list[str]:
        sent.clear()
        operation()
        return list(sent)

    sa.event.listen(storage.engine, "before_cursor_execute", listener)
    try:
        yield store, run
    finally:
        sa.event.remove(storage.engine, "before_cursor_execute", listener)
        storage.close()


def _begin(db: str) -> list[str]:
    return ["BEGIN IMMEDIATE"] if db == "sqlite" else ["BEGIN"]


def _script(*statements: str) -> str:
    """A MySQL lone write: one text, its own transaction (``START TRANSACTION; ...; COMMIT``)."""
    return "; ".join(("START TRANSACTION", *statements, "COMMIT"))


def test_commit_of_a_new_fact_is_one_insert_and_its_log_entry(db: str, counted: Any) -> None:
    store, run = counted
    # PostgreSQL: the fact row, its session position and its log entry in one statement (data-modifying
    # CTEs). MySQL has no INSERT that ignores a taken key only (INSERT IGNORE ignores other errors too),
    # but a duplicate key there undoes the failed statement alone: a plain INSERT, no read either.
    # PostgreSQL sends that statement alone, in autocommit: no BEGIN, no COMMIT (tests/test_lone_writes.py);
    # MySQL sends the transaction's statements as one text, START TRANSACTION to COMMIT: one round trip.
    alone = {
        "postgresql": ["WITH"],
        "mysql": [_script("INSERT facts", "INSERT sessions", "INSERT tx")],
        "sqlite": [*_begin(db), "INSERT facts", "INSERT sessions", "INSERT tx"],
    }
    sent = run(lambda: store.commit(ms.Fact(type="note", payload={"n": 1}), session_id="s"))
    assert sent == alone[db]
    sent = run(lambda: store.commit(ms.Fact(type="note", payload={"n": 1})))
    alone = {
        "postgresql": ["WITH"],
        "mysql": [_script("INSERT facts", "INSERT tx")],
        "sqlite": [*_begin(db), "INSERT facts", "INSERT tx"],
    }
    assert sent == alone[db]


def test_commit_over_an_existing_id_reads_it_under_lock_then_writes(db: str, counted: Any) -> None:
    store, run = counted
    fid = store.commit(ms.Fact(id="given", type="note", payload={"n": 1}), session_id="s")
    # PostgreSQL: the versioned UPDATE, the session position and the log entry in one statement.
    written = ["WITH"] if db == "postgresql" else ["UPDATE facts", "INSERT sessions", "INSERT tx"]
    expected = [*_begin(db), "SELECT facts", *written]
    # A caller's id is tried alone first (tests/test_lone_writes.py): here taken, so nothing written.
    tried = {"postgresql": ["WITH"], "mysql": [_script("INSERT facts", "INSERT sessions", "INSERT tx")]}
    sent = run(lambda: store.commit(ms.Fact(id=fid, type="note", payload={"n": 2}), session_id="s"))
    assert sent == tried.get(db, []) + expected
    # An update: the row read without a lock, then the write alone, conditional on the version read
    # (PostgreSQL: one statement in autocommit; MySQL: one text, the entry written only if the UPDATE was).
    guarded = _script("UPDATE facts", "SET @memstate_written = ROW_COUNT()", "INSERT sessions", "INSERT tx")
    updated = {"postgresql": ["SELECT facts", "WITH"], "mysql": ["SELECT facts", guarded]}.get(db, expected)
    assert run(lambda: store.update(fid, {"payload": {"n": 3}})) == updated
    assert store.get_with_version(fid)[1] == 3


def test_a_taken_generated_id_falls_back_to_the_general_commit(db: str, counted: Any) -> None:
    """The one-INSERT commit of a generated id must not lose a write when the id is taken after all
    (a Fact object committed twice)."""
    store, run = counted
    fact = ms.Fact(type="note", payload={"n": 1})
    store.commit(fact)
    sent = run(lambda: store.commit(fact.model_copy(update={"payload": {"n": 2}})))
    tried = ["WITH"] if db == "postgresql" else ["INSERT facts"]  # MySQL: failed on the duplicate key
    written = ["WITH"] if db == "postgresql" else ["UPDATE facts", "INSERT tx"]
    # The lone INSERT wrote nothing (MySQL: its script failed on the duplicate key, rolled back), so the
    # commit runs again as a transaction.
    alone = {"postgresql": ["WITH"], "mysql": [_script("INSERT facts", "INSERT tx")]}.get(db, [])
    assert sent == alone + _begin(db) + tried + ["SELECT facts", *written]
    assert store.get(fact.id)["payload"] == {"n": 2}
    assert store.get_with_version(fact.id)[1] == 2
    assert [e["op"] for e in store.storage.get_tx_log(None)] == ["UPDATE", "COMMIT"]


def test_point_read_is_one_select(db: str, counted: Any) -> None:
    store, run = counted
    fid = store.commit(ms.Fact(type="note", payload={"n": 1}))
    assert run(lambda: store.get(fid)) == ["SELECT facts"]


def test_a_batch_of_new_facts_is_a_few_multi_row_statements(db: str, counted: Any) -> None:
    """commit_many of 1,000 new facts: one multi-row INSERT of the rows (that skips taken ids; MySQL reads
    the ids under lock first), the session's positions, one multi-row INSERT of the log entries; never
    one statement per fact."""
    store, run = counted
    batch = [ms.Fact(id=f"b{i:04d}", type="note", payload={"i": i}) for i in range(1000)]
    read = ["SELECT facts"] if db == "mysql" else []
    sent = run(lambda: store.commit_many(batch, session_id="s"))
    assert sent == [*_begin(db), *read, "INSERT facts", "INSERT sessions", "INSERT tx"]
    # Taken ids among new ones: the rows the INSERT skipped are read under lock and updated.
    mixed = [ms.Fact(id=f"b{i:04d}", type="note", payload={"i": -i}) for i in range(0, 1000, 100)]
    mixed += [ms.Fact(id=f"c{i:04d}", type="note", payload={"i": i}) for i in range(990)]
    sent = run(lambda: store.commit_many(mixed, session_id="s"))
    if db == "mysql":
        assert sent == [*_begin(db), "SELECT facts", "UPDATE facts", "INSERT facts", "INSERT sessions", "INSERT tx"]
    else:
        assert sent == [*_begin(db), "INSERT facts", "SELECT facts", "UPDATE facts", "INSERT sessions", "INSERT tx"]
    assert store.count("note") == 1990 and store.get("b0100")["payload"] == {"i": -100}
    assert len(store.storage.get_tx_log("s", limit=5000)) == 2000
