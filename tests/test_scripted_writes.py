"""Scripted lone writes: on MySQL/MariaDB a commit of a new fact, and an update, send the statements of
their transaction as one multi-statement text, ``START TRANSACTION; ...; COMMIT``, in one round trip
(`DialectSupport.scripted_writes`, `memstate_sql.dialects.mysql`).

What must still hold, and is tried here: a statement the server refuses part-way ends the script with
nothing written (its transaction rolled back, positions included); an update whose row changed between
its unlocked read and its script writes neither row nor entry, and runs again under the row's lock; a
taken id falls back to the transaction; hooks keep the transaction; a connection the server closed while
idle is never written on this way; a connection lost under a script is an unknown outcome, never retried
blindly; an engine whose connections lack CLIENT.MULTI_STATEMENTS keeps its transactions; hostile
values stay values; the asyncio store (aiomysql) writes the same way on its checked-out connections.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

import memstate_sql as ms
from memstate_sql.repository import Repository
from tests.conftest import count_rows
from tests.dbutil import driver_of, listen, stop
from tests.scripts_support import COMMIT, LOCKED_UPDATE, UPDATE, in_transaction, status


@pytest.fixture
def my(db: str) -> None:
    if db != "mysql":
        pytest.skip("scripted writes are MySQL's (its multi-statement protocol)")


def test_a_write_without_a_session_takes_no_position_and_leaves_the_connection_idle(
    my: None, opened: Callable[..., ms.SQLStorage]
) -> None:
    storage = opened()
    store = ms.MemoryStore(storage)
    store.count()
    sent = listen(storage.engine, status)
    fid = store.commit(ms.Fact(type="note", payload={"n": 1}))
    store.update(fid, {"payload": {"n": 2}})
    guarded = "START TRANSACTION; UPDATE facts; SET; INSERT tx; COMMIT"
    assert sent == [
        ("START TRANSACTION; INSERT facts; INSERT tx; COMMIT", False),
        ("SELECT facts", False),
        (guarded, False),
    ]
    stop(sent)
    assert not in_transaction(driver_of(storage))  # each script committed its own transaction
    assert [(e["op"], e["fact_id"]) for e in storage.get_tx_log(None)] == [("UPDATE", fid), ("COMMIT", fid)]


def test_positions_follow_one_another_across_scripts_and_transactions(
    my: None, opened: Callable[..., ms.SQLStorage]
) -> None:
    """Scripts and transactions take the session's positions from the same row, in commit order."""
    storage = opened()
    store = ms.MemoryStore(storage)
    hooked = ms.MemoryStore(storage, [lambda op, fid, fact: None])  # a hook: the transaction's route
    ids = []
    for n in range(6):
        writer = hooked if n % 3 == 2 else store
        ids.append(writer.commit(ms.Fact(type="note", payload={"n": n}), session_id="s"))
    store.update(ids[0], {"payload": {"n": -1}})
    assert [e["fact_id"] for e in storage.get_tx_log("s", limit=10)] == [ids[0], *reversed(ids)]
    store.rollback("s", 3)  # by position: the update and the last two commits
    assert store.get(ids[0])["payload"] == {"n": 0} and store.count() == 4


def test_a_statement_refused_part_way_leaves_nothing(
    my: None, db_url: str, prefix: str, opened: Callable[..., ms.SQLStorage], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The log entry refused (its 4th statement, after the fact row and the position): the script stops
    there and its transaction is rolled back; the connection stays usable."""
    storage = opened()
    store = ms.MemoryStore(storage)
    fid = store.commit(ms.Fact(type="note", payload={"n": 1}), session_id="s")
    logged = Repository._logged_params

    def broken_entry(self: Repository, params: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
        return {**logged(self, params, entry), "uuid": None}  # NOT NULL: refused by the database

    monkeypatch.setattr(Repository, "_logged_params", broken_entry)
    sent = listen(storage.engine, status)
    with pytest.raises(ms.StorageError):
        store.commit(ms.Fact(type="note", payload={"n": 2}), session_id="s")
    with pytest.raises(ms.StorageError):
        store.update(fid, {"payload": {"n": 3}})
    assert sent == [(COMMIT, False), ("SELECT facts", False), (UPDATE, False)]  # not retried
    monkeypatch.undo()
    assert count_rows(db_url, prefix, "facts") == 1 and count_rows(db_url, prefix, "tx") == 1
    assert store.get(fid)["payload"] == {"n": 1} and store.get_with_version(fid)[1] == 1
    # Nor was the session's position taken: the next entry follows the first with no gap.
    nxt = store.commit(ms.Fact(type="note", payload={"n": 4}), session_id="s")
    engine = sa.create_engine(db_url, poolclass=sa.NullPool)
    with engine.connect() as conn:
        tx = sa.Table(f"{prefix}_tx", sa.MetaData(), autoload_with=conn)
        positions = dict(conn.execute(sa.select(tx.c.fact_id, tx.c.session_seq)).all())
    engine.dispose()
    assert positions == {fid: 1, nxt: 2}


def test_a_duplicate_key_part_way_leaves_nothing_either(
    my: None, opened: Callable[..., ms.SQLStorage], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A duplicate key in a script's last write (here its log entry's uuid, taken) is read as "nothing
    written", and the update runs again as a transaction: the script's own transaction, with the fact
    row and position it had written, must then be rolled back, never committed by what ends the
    operation's use of the connection."""
    storage = opened()
    store = ms.MemoryStore(storage)
    fid = store.commit(ms.Fact(type="note", payload={"n": 1}), session_id="s")
    taken = storage.get_tx_log("s")[0]["uuid"]
    logged = Repository._logged_params

    def taken_uuid(self: Repository, params: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
        return {**logged(self, params, entry), "uuid": taken}

    monkeypatch.setattr(Repository, "_logged_params", taken_uuid)  # the scripts' parameters only
    sent = listen(storage.engine, status)
    store.update(fid, {"payload": {"n": 2}})
    assert [kind for kind, _ in sent] == ["SELECT facts", UPDATE, *LOCKED_UPDATE]
    monkeypatch.undo()
    stop(sent)
    assert store.get(fid)["payload"] == {"n": 2} and store.get_with_version(fid)[1] == 2
    log = storage.get_tx_log("s")
    assert [e["op"] for e in log] == ["UPDATE", "COMMIT"] and log[0]["fact_before"]["payload"] == {"n": 1}


def test_a_taken_id_falls_back_to_the_transaction(my: None, opened: Callable[..., ms.SQLStorage]) -> None:
    storage = opened()
    store = ms.MemoryStore(storage)
    store.commit(ms.Fact(id="a", type="note", payload={"n": 1}), session_id="s")
    sent = listen(storage.engine, status)
    store.commit(ms.Fact(id="a", type="note", payload={"n": 2}), session_id="s")
    # The script failed on the duplicate key (rolled back), then the transaction read the row and wrote.
    assert [kind for kind, _ in sent] == [COMMIT, *LOCKED_UPDATE]
    assert store.get("a")["payload"] == {"n": 2} and store.get_with_version("a")[1] == 2
    assert [e["op"] for e in storage.get_tx_log("s")] == ["UPDATE", "COMMIT"]


def test_an_engine_without_multi_statements_keeps_its_transactions(
    my: None, db_url: str, prefix: str, opened: Callable[..., ms.SQLStorage]
) -> None:
    """A host's engine (or ``connect_args`` that replace the client flags): no multi-statement texts."""
    engine = sa.create_engine(db_url, isolation_level="READ COMMITTED")
    try:
        storage = ms.SQLStorage(engine, table_prefix=prefix)
        store = ms.MemoryStore(storage)
        store.count()
        sent = listen(engine, status)
        fid = store.commit(ms.Fact(type="note", payload={"n": 1}), session_id="s")
        store.update(fid, {"payload": {"n": 2}})
        assert [kind for kind, _ in sent] == [
            "BEGIN", "INSERT facts", "INSERT sessions", "INSERT tx",
            "BEGIN", "SELECT facts", "UPDATE facts", "INSERT sessions", "INSERT tx",
        ]  # fmt: skip
        assert store.get_with_version(fid)[1] == 2
        storage.close()
    finally:
        engine.dispose()
    flagged = opened()  # memstate_sql's own engine asks for the flag, keeping FOUND_ROWS
    driver = driver_of(flagged)
    assert driver.client_flag & (1 << 16) and driver.client_flag & (1 << 1)


def test_hostile_values_stay_values(my: None, opened: Callable[..., ms.SQLStorage]) -> None:
    storage = opened()
    store = ms.MemoryStore(storage)
    hostile = "x'); DROP TABLE nope; -- \\' \" ; COMMIT; %s %(a)s"
    fid = store.commit(ms.Fact(id=hostile, type="note", payload={hostile: hostile}), session_id=hostile)
    store.update(fid, {"payload": {"more": hostile}})
    assert store.get(hostile)["payload"] == {hostile: hostile, "more": hostile}
    assert [e["op"] for e in storage.get_tx_log(hostile)] == ["UPDATE", "COMMIT"]
