"""The log's order (issue 15): `seq` is unique but is not commit order; a session's position is.

Entries whose `seq` order differs from their commit order are made two ways: for real, with a hook that
holds one transaction open after its log entry got its `seq` while another commits (possible on
PostgreSQL and MariaDB; SQLite serialises writers, so there `seq` is commit order); and as Galera hands
them out, by renumbering a session's earlier entry above its later one (a node whose counter is behind
gives a later, acknowledged commit a lower `seq`). Rollback, its plans, `get_tx_log`, export/import
and the migration must follow the session position in both cases.
"""

from __future__ import annotations

import io
import multiprocessing
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import pytest
import sqlalchemy as sa

import memstate_sql as ms
from memstate_sql import Fact, migrations
from memstate_sql.transfer import load_export, write_export
from tests import workers
from tests.dbutil import fetch, fetch_columns, table_names, temporary_engine


def execute(url: str, sql: str, params: dict[str, Any] | None = None) -> None:
    with temporary_engine(url) as engine, engine.begin() as conn:
        conn.execute(sa.text(sql), params or {})


def raise_seq(url: str, prefix: str, entry_uuid: str, by: int = 1_000_000) -> None:
    """Give one entry a higher `seq` than every later one: Galera's assignment on a lagging node."""
    execute(url, f"UPDATE {prefix}_tx SET seq = seq + {by} WHERE uuid = :u", {"u": entry_uuid})


def positions(url: str, prefix: str, session: str) -> list[tuple[int, int, str]]:
    """(session_seq, seq, op) of the session's entries, in position order."""
    return [
        (int(p), int(s), str(o))
        for p, s, o in fetch(
            url,
            f"SELECT session_seq, seq, op FROM {prefix}_tx WHERE namespace = '' AND session_id = :s "
            "ORDER BY session_seq",
            {"s": session},
        )
    ]


def sessionless(url: str, prefix: str) -> list[tuple[int | None, int, str]]:
    """(session_seq, seq, op) of the entries without a session, in seq order."""
    return [
        (p, int(s), str(o))
        for p, s, o in fetch(
            url,
            f"SELECT session_seq, seq, op FROM {prefix}_tx WHERE namespace = '' AND session_id IS NULL ORDER BY seq",
        )
    ]


# ---------------------------------------------------------------------------- Galera-style seq


def test_rollback_undoes_the_last_operation_when_it_has_the_lower_seq(
    make_store: Any, db_url: str, prefix: str
) -> None:
    store = make_store()
    session = "s"
    first = store.commit(Fact(type="note", payload={"n": 1}), session_id=session)
    second = store.commit(Fact(type="note", payload={"n": 2}), session_id=session)
    store.update(first, {"payload": {"n": 10}})  # logged in the fact's session, after both commits
    log = store.storage.get_tx_log(session)
    update, commit2, commit1 = log
    # Galera: the update and the second commit were acknowledged, yet the first commit's entry has the
    # highest seq (its node's counter was ahead).
    raise_seq(db_url, prefix, commit1["uuid"])
    assert [e["uuid"] for e in store.storage.get_tx_log(session)] == [update["uuid"], commit2["uuid"], commit1["uuid"]]
    plan = store.plan_rollback(session, 2)
    assert [e["uuid"] for e in plan.entries] == [update["uuid"], commit2["uuid"]]
    assert plan.ok, plan.conflicts  # the first commit is older in the session: not a "later" change
    assert store.rollback(session, 1) == 1
    assert store.get(first)["payload"] == {"n": 1}  # the update was undone, nothing else
    assert store.get(second)["payload"] == {"n": 2}
    assert store.rollback(session, 1) == 1
    assert store.get(second) is None and store.get(first) is not None
    assert [e["uuid"] for e in store.storage.get_tx_log(session)] == [commit1["uuid"]]
    # A new operation goes after the session's last position, whatever seq it gets.
    third = store.commit(Fact(type="note", payload={"n": 3}), session_id=session)
    rows = positions(db_url, prefix, session)
    assert [p for p, _, _ in rows] == list(range(1, len(rows) + 1))
    assert store.storage.get_tx_log(session)[0]["fact_id"] == third
    assert store.storage.verify().ok


def test_export_import_keeps_each_sessions_order(db_url: str, prefix: str, tmp_path: Any) -> None:
    with ms.SQLStorage(db_url, table_prefix=prefix) as source:
        store = ms.MemoryStore(source)
        a = store.commit(Fact(type="note", payload={"n": 1}), session_id="s")
        b = store.commit(Fact(type="note", payload={"n": 2}), session_id="s")
        store.commit(Fact(type="note", payload={"n": 3}))
        raise_seq(db_url, prefix, source.get_tx_log("s")[1]["uuid"])  # a's entry now has the highest seq
        out = io.StringIO()
        assert write_export(source, out).log == 3
    target_url = f"sqlite:///{tmp_path}/target.db"
    with ms.SQLStorage(target_url) as target:
        tstore = ms.MemoryStore(target)
        # The target already has entries in session "s": the imported ones go after them, in their order.
        own = tstore.commit(Fact(type="note", payload={"own": True}), session_id="s")
        out.seek(0)
        assert load_export(target, out).log == 3
        log = target.get_tx_log("s")
        assert [e["fact_id"] for e in log] == [b, a, own]
        assert tstore.rollback("s", 1) == 1 and tstore.get(b) is None and tstore.get(a) is not None
        assert target.verify().ok
        again = io.StringIO()
        write_export(target, again)
        lines = [line for line in again.getvalue().splitlines() if '"kind":"tx"' in line]
        assert len(lines) == 5 and all('"session_seq":' in line for line in lines)
        assert sum('"session_seq":null' in line for line in lines) == 1  # the entry without a session
        assert [p for p, _, _ in sessionless(target_url, "memstate")] == [None]


def test_a_bad_session_seq_in_an_export_line_is_refused(storage: ms.SQLStorage) -> None:
    line = (
        '{"kind":"tx","uuid":"u1","op":"COMMIT","session_id":"s","seq":1,"ts":"2026-01-01T00:00:00Z",'
        '"fact_id":null,"fact_before":null,"fact_after":null,"actor":null,"reason":null,"session_seq":-1}'
    )
    text = '{"format":"memstate-sql-export","format_version":1}\n' + line + '\n{"kind":"end","facts":0,"log":1}\n'
    with pytest.raises(ms.ValidationFailed, match="session_seq must be a positive integer or null"):
        load_export(storage, io.StringIO(text))
    with pytest.raises(ms.ValidationFailed, match="session_seq must be a positive integer or null"):
        load_export(storage, io.StringIO(text.replace('"session_seq":-1', '"session_seq":0')))
    assert storage.get_tx_log("s") == []


def test_entries_without_a_session_take_no_position_and_follow_seq(make_store: Any, db_url: str, prefix: str) -> None:
    """No position, no sessions row: `get_tx_log(None)`, plans and `rollback(None, n)` follow `seq`."""
    store = make_store()
    first = store.commit(Fact(type="note", payload={"n": 1}))
    second = store.commit(Fact(type="note", payload={"n": 2}))
    store.update(first, {"payload": {"n": 10}})
    rows = sessionless(db_url, prefix)
    assert [(p, o) for p, _, o in rows] == [(None, "COMMIT"), (None, "COMMIT"), (None, "UPDATE")]
    assert fetch(db_url, f"SELECT COUNT(*) FROM {prefix}_sessions") == [(0,)]
    update, commit2, commit1 = store.storage.get_tx_log(None)
    assert (update["op"], commit2["fact_id"], commit1["fact_id"]) == ("UPDATE", second, first)
    # Without positions, seq decides: the first commit's entry, given the highest seq, counts as newest.
    raise_seq(db_url, prefix, commit1["uuid"])
    assert [e["uuid"] for e in store.storage.get_tx_log(None)] == [commit1["uuid"], update["uuid"], commit2["uuid"]]
    assert [e["uuid"] for e in store.plan_rollback(None, 1).entries] == [commit1["uuid"]]
    raise_seq(db_url, prefix, commit1["uuid"], by=-1_000_000)  # back in place
    assert [e["uuid"] for e in store.plan_rollback(None, 2).entries] == [update["uuid"], commit2["uuid"]]
    assert store.rollback(None, 1) == 1 and store.get(first)["payload"] == {"n": 1}
    assert all(p is None for p, _, _ in sessionless(db_url, prefix))  # the rollback's record too
    assert fetch(db_url, f"SELECT COUNT(*) FROM {prefix}_sessions") == [(0,)]
    assert store.storage.verify().ok


def test_a_sessionless_entry_with_a_position_fails_verify(storage: ms.SQLStorage, db_url: str, prefix: str) -> None:
    store = ms.MemoryStore(storage)
    store.commit(Fact(type="note", payload={}), session_id="s")
    store.commit(Fact(type="note", payload={}), session_id="s")
    store.commit(Fact(type="note", payload={}))
    assert storage.verify().ok
    execute(db_url, f"UPDATE {prefix}_tx SET session_seq = 1 WHERE session_id IS NULL")
    execute(db_url, f"UPDATE {prefix}_tx SET session_seq = 1 WHERE session_id = 's'")
    problems = storage.verify().problems
    assert any("has a session position but no session" in p for p in problems), problems
    assert any("session 's': log position 1 is used 2 times" in p for p in problems), problems


# ---------------------------------------------------------------------------- real commit order


@pytest.mark.parametrize("second_op", ["commit", "update", "delete"])
def test_writers_without_a_session_are_not_serialised(db: str, db_url: str, prefix: str, second_op: str) -> None:
    """Two transactions without a session both append their log entry before either commits: the first
    holds its transaction open (a hook after its entry) until the second has committed. If the second
    waited for the first (a shared positions row), the first's wait would time out and the test fail."""
    if db == "sqlite":
        pytest.skip("SQLite has one writer at a time (BEGIN IMMEDIATE): every writer is serialised there")
    second_done = threading.Event()
    logged = threading.Event()
    waited: list[bool] = []

    def hold(op: ms.Operation, fact_id: str, fact: Any) -> None:
        if fact is not None and fact.payload.get("hold"):
            logged.set()  # the entry is inserted, the transaction still open
            waited.append(second_done.wait(timeout=15))

    first = ms.MemoryStore(ms.SQLStorage(db_url, table_prefix=prefix), [hold])
    second = ms.MemoryStore(ms.SQLStorage(db_url, table_prefix=prefix))
    try:
        global_fact = second.commit(Fact(type="note", payload={"n": 0}))
        errors: list[BaseException] = []

        def run_first() -> None:
            try:
                first.commit(Fact(type="note", payload={"hold": True}))
            except BaseException as err:  # reported below
                errors.append(err)

        t = threading.Thread(target=run_first)
        t.start()
        assert logged.wait(10)
        if second_op == "commit":
            second.commit(Fact(type="note", payload={"n": 1}))
        elif second_op == "update":
            second.update(global_fact, {"payload": {"n": 2}})
        else:
            second.delete(None, global_fact)
        second_done.set()
        t.join(30)
        assert not errors and waited == [True], "the second writer waited for the first one's COMMIT"
        rows = sessionless(db_url, prefix)
        assert len(rows) == 3 and all(p is None for p, _, _ in rows)
        # One server: the caller's consecutive operations (global_fact's commit, then the second
        # operation) have increasing seq; the held commit took its seq in between.
        ops = [o for _, _, o in rows]
        assert ops[0] == "COMMIT" and ops[-1] == {"commit": "COMMIT", "update": "UPDATE", "delete": "DELETE"}[second_op]
        assert second.storage.verify().ok
    finally:
        first.storage.close()
        second.storage.close()


def test_a_lower_seq_that_commits_last(db: str, db_url: str, prefix: str, tmp_path: Any) -> None:
    """Two connections: the one whose entry got the lower seq commits after the other. PostgreSQL and
    MariaDB allow it (the seq is assigned at INSERT); SQLite's single writer makes the other wait."""
    release = threading.Event()
    logged = threading.Event()

    def hold(op: ms.Operation, fact_id: str, fact: Any) -> None:
        logged.set()  # the entry is inserted (its seq assigned), the transaction still open
        release.wait(timeout=3)

    slow = ms.MemoryStore(ms.SQLStorage(db_url, table_prefix=prefix), [hold])
    fast = ms.MemoryStore(ms.SQLStorage(db_url, table_prefix=prefix))
    fast.storage.load("warm-up")
    done: list[str] = []
    slow_thread = threading.Thread(
        target=lambda: done.append(slow.commit(Fact(type="note", payload={"who": "slow"}), session_id="a"))
    )
    slow_thread.start()
    assert logged.wait(10)
    fast_thread = threading.Thread(
        target=lambda: done.append(fast.commit(Fact(type="note", payload={"who": "fast"}), session_id="b"))
    )
    fast_thread.start()
    fast_thread.join(timeout=2)
    committed_first = "fast" if not fast_thread.is_alive() else "slow"
    release.set()
    slow_thread.join(10)
    fast_thread.join(10)
    assert len(done) == 2
    seq_slow = fast.storage.get_tx_log("a")[0]["seq"]
    seq_fast = fast.storage.get_tx_log("b")[0]["seq"]
    if db == "sqlite":
        assert committed_first == "slow" and seq_slow < seq_fast  # commit order
    else:
        assert committed_first == "fast" and seq_slow < seq_fast  # the lower seq committed last
    # Whatever the commit order, an export (one snapshot) has every entry, and an import keeps them.
    out = io.StringIO()
    assert write_export(fast.storage, out).log == 2
    out.seek(0)
    with ms.SQLStorage(f"sqlite:///{tmp_path}/copy.db") as copy:
        assert load_export(copy, out).log == 2
        cstore = ms.MemoryStore(copy)
        slow_id = done[0] if committed_first == "slow" else done[1]  # `done` is in completion order
        assert [e["fact_id"] for e in cstore.plan_rollback("a", 5).entries] == [slow_id]
        assert cstore.rollback("a", 1) == 1 and cstore.get(slow_id) is None
        assert copy.verify().ok
    # And on the source: each session's rollback undoes its own entry, whichever committed first.
    assert fast.rollback("b", 1) == 1 and fast.rollback("a", 1) == 1
    assert fast.storage.get_tx_log("a") == [] and fast.storage.get_tx_log("b") == []
    slow.storage.close()
    fast.storage.close()


def test_a_rollback_waits_for_the_sessions_writer_and_undoes_its_entry(db: str, db_url: str, prefix: str) -> None:
    """A rollback that starts while an operation of its session is about to commit undoes that
    operation (it takes the session's row before reading the log), not the one before it."""
    release = threading.Event()
    logged = threading.Event()

    def hold(op: ms.Operation, fact_id: str, fact: Any) -> None:
        if fact is not None and fact.payload.get("hold"):
            logged.set()
            release.wait(timeout=10)

    writer = ms.MemoryStore(ms.SQLStorage(db_url, table_prefix=prefix), [hold])
    undoer = ms.MemoryStore(ms.SQLStorage(db_url, table_prefix=prefix))
    older = writer.commit(Fact(type="note", payload={"n": 0}), session_id="s")
    newest: list[str] = []
    t = threading.Thread(
        target=lambda: newest.append(writer.commit(Fact(type="note", payload={"hold": True}), session_id="s"))
    )
    t.start()
    assert logged.wait(10)
    result: list[int] = []
    r = threading.Thread(target=lambda: result.append(undoer.rollback("s", 1)))
    r.start()
    time.sleep(0.5)
    assert r.is_alive()  # waiting for the session's writer
    release.set()
    t.join(10)
    r.join(20)
    assert result == [1]
    assert undoer.get(newest[0]) is None and undoer.get(older) is not None
    writer.storage.close()
    undoer.storage.close()


# ---------------------------------------------------------------------------- many processes


@pytest.mark.parametrize("aio", [False, True], ids=["sync", "async"])
def test_concurrent_writers_of_one_session_get_dense_unique_positions(db_url: str, prefix: str, aio: bool) -> None:
    with ms.SQLStorage(db_url, table_prefix=prefix) as storage:
        storage.load("create-schema")
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=4, mp_context=ctx) as executor:
            barrier = ctx.Manager().Barrier(4)
            futures = [
                executor.submit(
                    workers.log_writer, db_url, prefix, f"w{i}", 8, barrier, "shared" if i < 2 else None, aio
                )
                for i in range(4)
            ]
            assert [f.result(timeout=180) for f in futures] == [8] * 4
        rows = positions(db_url, prefix, "shared")
        assert [p for p, _, _ in rows] == list(range(1, 33))  # 2 writers x 8 x (commit + update)
        # One server: a session's entries also take their seq in position order (docs/log-order.md).
        assert [s for _, s, _ in rows] == sorted(s for _, s, _ in rows)
        # The writers without a session took no position (and so did not wait for each other).
        none = sessionless(db_url, prefix)
        assert len(none) == 32 and all(p is None for p, _, _ in none)
        last = dict(fetch(db_url, f"SELECT session_id, last_seq FROM {prefix}_sessions WHERE namespace = ''"))
        assert last == {"shared": 32}
        assert storage.verify().ok
        assert ms.MemoryStore(storage).rollback("shared", 3) == 3


# ---------------------------------------------------------------------------- the migration


def test_upgrade_from_ms_0002_numbers_existing_entries_and_downgrade_refuses_crossed_ones(
    db_url: str, prefix: str
) -> None:
    with ms.SQLStorage(db_url, table_prefix=prefix) as storage:
        store = ms.MemoryStore(storage)
        ids = [store.commit(Fact(type="note", payload={"n": i}), session_id="s" if i % 2 else None) for i in range(6)]
        store.update(ids[1], {"payload": {"n": 100}})
        store.rollback("s", 1)
        ms.MemoryStore(storage.for_namespace("other")).commit(Fact(type="note", payload={}), session_id="s")
        log_before = {s: storage.get_tx_log(s) for s in ("s", None)}
    assert migrations.downgrade(db_url, "ms_0002_namespaces_expiry", table_prefix=prefix) == "ms_0002_namespaces_expiry"
    assert "session_seq" not in fetch_columns(db_url, f"{prefix}_tx")
    assert f"{prefix}_sessions" not in table_names(db_url)
    # ms_0002 data (as the previous release wrote it) upgrades: positions in seq order per session.
    assert ms.migrate(db_url, table_prefix=prefix) == migrations.head_revision()
    rows = positions(db_url, prefix, "s")
    assert [s for _, s, _ in rows] == sorted(s for _, s, _ in rows)
    assert [p for p, _, _ in rows] == list(range(1, len(rows) + 1))
    none = sessionless(db_url, prefix)
    assert len(none) == 3 and all(p is None for p, _, _ in none)  # no positions without a session
    by_ns = fetch(
        db_url,
        f"SELECT namespace, session_id, session_seq FROM {prefix}_tx WHERE session_id = 's' ORDER BY namespace, seq",
    )
    assert [p for ns, _, p in by_ns if ns == ""] == [1, 2, 3, 4, 5]  # 3 commits, the update, the rollback
    assert [p for ns, _, p in by_ns if ns == "other"] == [1]
    last = sorted(fetch(db_url, f"SELECT namespace, session_id, without_session, last_seq FROM {prefix}_sessions"))
    assert [(ns, sid, bool(w), n) for ns, sid, w, n in last] == [
        ("", "s", False, 5),
        ("other", "s", False, 1),
    ]
    with ms.SQLStorage(db_url, table_prefix=prefix) as storage:
        store = ms.MemoryStore(storage)
        assert {s: storage.get_tx_log(s) for s in ("s", None)} == log_before
        assert storage.verify().ok
        newest = store.commit(Fact(type="note", payload={"n": 7}), session_id="s")
        assert positions(db_url, prefix, "s")[-1][0] == 6
        assert store.rollback("s", 1) == 1 and store.get(newest) is None
        # A session whose order is not its seq order cannot go back to ms_0002 (which orders by seq).
        older = storage.get_tx_log("s")[-1]
        raise_seq(db_url, prefix, older["uuid"])
    with pytest.raises(ms.SchemaVersionError, match="committed in another order than their seq"):
        migrations.downgrade(db_url, "ms_0002_namespaces_expiry", table_prefix=prefix)
    assert migrations.current_revision(db_url, table_prefix=prefix) == migrations.head_revision()
    assert "session_seq" in fetch_columns(db_url, f"{prefix}_tx")


def test_a_refused_downgrade_changes_nothing_and_modules_without_a_check_are_not_pre_checked(
    db_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ms.SQLStorage(db_url, table_prefix=prefix) as storage:
        ms.MemoryStore(storage.for_namespace("other")).commit(Fact(type="note", payload={}), session_id="s")
    with temporary_engine(db_url) as engine, engine.connect() as conn:
        refusal = migrations.downgrade_refusals(conn, "ms_0001_initial", table_prefix=prefix)
        assert refusal is not None and "outside the default namespace" in refusal
        assert migrations.downgrade_refusals(conn, "ms_0002_namespaces_expiry", table_prefix=prefix) is None
        assert not conn.in_transaction()  # the check leaves no transaction of its own open
    with pytest.raises(ms.SchemaVersionError, match="outside the default namespace"):
        migrations.downgrade(db_url, "ms_0001_initial", table_prefix=prefix)
    assert migrations.current_revision(db_url, table_prefix=prefix) == migrations.head_revision()
    assert "session_seq" in fetch_columns(db_url, f"{prefix}_tx")
    # A revision module without `downgrade_refusal` (a revision written before the convention) is simply
    # not pre-checked: only its own downgrade() can refuse then.
    module = migrations._scripts().get_revision("ms_0002_namespaces_expiry").module
    monkeypatch.delattr(module, "downgrade_refusal")
    with temporary_engine(db_url) as engine, engine.connect() as conn:
        assert migrations.downgrade_refusals(conn, "ms_0001_initial", table_prefix=prefix) is None
