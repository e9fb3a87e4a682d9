"""The hot statements on the DB-API cursor (`Repository._send`) behave exactly as SQLAlchemy's execution.

Without event listeners the point reads, versioned writes and single-row inserts skip `Connection.execute`;
with a listener they take SQLAlchemy's path so that the listener sees them. Both paths must give the same
documents, versions, expiry handling and errors, on every database.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

import memstate_sql as ms
from memstate_sql import operations
from memstate_sql.errors import ConflictError


def _workload(store: ms.MemoryStore) -> list[Any]:
    """A fixed sequence of operations over the hot statements; everything observable it produces."""
    seen: list[Any] = []
    store.storage.register_constraint("pinned", ms.Constraint(immutable=True))
    store.storage.register_constraint("single", ms.Constraint(singleton_key="k"))
    fid = store.commit(
        ms.Fact(id="h1", type="note", payload={"n": 1, "nested": {"a": [1, 2.5, None, "x"]}, "t": True}),
        session_id="s",
    )
    seen.append(store.get(fid))
    seen.append(store.get_with_version(fid))
    store.update(fid, {"payload": {"n": 2}})
    seen.append(store.get_with_version(fid))
    store.commit(ms.Fact(id="h2", type="note", payload={"n": 3}), session_id="s")
    store.commit(ms.Fact(id="h2", type="note", payload={"n": 4}), session_id="s")  # replaces: versioned UPDATE
    seen.append(store.get_with_version("h2"))
    store.commit(ms.Fact(id="h3", type="pinned", payload={"n": 5}), session_id="s")
    with pytest.raises(ConflictError):
        store.update("h3", {"payload": {"n": 6}})
    seen.append(store.get_with_version("h3"))
    store.commit(ms.Fact(id="k1", type="single", payload={"k": "a", "v": 1}), session_id="s")
    store.commit(ms.Fact(id="k2", type="single", payload={"k": "a", "v": 2}), session_id="s")  # by singleton key
    seen.append([store.get("k1"), store.get_with_version("k2")])
    past = (datetime.now(timezone.utc) - timedelta(seconds=5)).isoformat()
    store.storage.save({"id": "h4", "type": "note", "payload": {}, "ts": "2026-01-01T00:00:00Z", "expires_at": past})
    seen.append(store.get("h4"))  # expired: invisible to the point read
    store.commit(ms.Fact(id="h4", type="note", payload={"n": 7}), session_id="s")  # over the unswept row
    seen.append(store.get_with_version("h4"))
    fresh = ms.Fact(type="note", payload={"n": 8})  # a generated id: the one-INSERT commit
    seen.append(store.get_with_version(store.commit(fresh, session_id="s"))[1])
    seen.append(store.get_with_version(store.commit(fresh.model_copy(), session_id="s"))[1])  # same id again
    store.delete("s", "h2", expected_version=store.get_version("h2"))
    seen.append(store.get("h2"))
    seen.append([e["op"] for e in store.storage.get_tx_log("s")])
    store.rollback("s", 2)
    seen.append(store.get_with_version("h2"))
    seen.append(store.get("h3"))
    seen.append(sorted((e["op"], e["fact_id"]) for e in store.storage.get_tx_log("s")))
    seen.append(store.get("missing"))
    return [_strip(x, {fresh.id: "fresh"}) for x in seen]


def _strip(value: Any, ids: dict[str, str]) -> Any:
    """Timestamps and generated ids (`ids`: their stand-ins) differ between two runs; nothing else may."""
    if isinstance(value, dict):
        return {k: _strip(v, ids) for k, v in value.items() if k not in ("ts",)}
    if isinstance(value, list | tuple):
        return type(value)(_strip(v, ids) for v in value)
    return ids.get(value, value) if isinstance(value, str) else value


def test_hot_path_and_sqlalchemy_path_agree(db_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    executed: list[str] = []
    real = Connection.execute

    def counting(self: Connection, statement: Any, *args: Any, **kwargs: Any) -> Any:
        executed.append(type(statement).__name__)
        return real(self, statement, *args, **kwargs)

    monkeypatch.setattr(Connection, "execute", counting)
    fast = ms.SQLStorage(db_url, table_prefix=prefix)
    try:
        fast_store = ms.MemoryStore(fast)
        fast_store.count()
        executed.clear()
        fast_store.get("nothing")
        assert executed == [], "a point read without listeners runs on the DB-API cursor"
        fast_result = _workload(fast_store)
    finally:
        fast.close()

    slow = ms.SQLStorage(db_url, table_prefix=prefix + "b")
    sent: list[str] = []

    def listener(*args: Any) -> None:
        sent.append(args[2])

    sa.event.listen(slow.engine, "before_cursor_execute", listener)
    try:
        slow_store = ms.MemoryStore(slow)
        slow_store.count()
        sent.clear()
        executed.clear()
        slow_store.get("nothing")
        assert len(sent) == 1 and executed == ["Select"], "with a listener the read takes SQLAlchemy's path"
        assert _workload(slow_store) == fast_result
        sa.event.remove(slow.engine, "before_cursor_execute", listener)
        executed.clear()
        slow_store.get("nothing")
        assert executed == [], "the listener removed, point reads are back on the DB-API cursor"
    finally:
        with slow.engine.begin() as conn:
            for table in (f"{prefix}b_tx", f"{prefix}b_facts", f"{prefix}b_version"):
                conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table}")
        slow.close()


def test_hot_path_database_errors_are_translated(db_url: str, prefix: str) -> None:
    """A failing hot statement is wrapped by SQLAlchemy's error handling and reported by the unit of work
    as a storage error; the operation leaves nothing behind."""
    storage = ms.SQLStorage(db_url, table_prefix=prefix)
    try:
        store = ms.MemoryStore(storage)
        store.commit(ms.Fact(id="e1", type="note", payload={"n": 1}))
        with storage.engine.begin() as conn:
            conn.exec_driver_sql(f"DROP TABLE {prefix}_tx")
        with pytest.raises(ms.errors.StorageError):
            store.commit(ms.Fact(id="e2", type="note", payload={"n": 2}))
        assert store.get("e2") is None
        assert store.get("e1") is not None
    finally:
        storage.close()


def test_echo_takes_sqlalchemys_path(db_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``echo`` on (or the sqlalchemy.engine logger at INFO) the statements are logged: the hot ones too."""
    executed: list[str] = []
    real = Connection.execute

    def counting(self: Connection, statement: Any, *args: Any, **kwargs: Any) -> Any:
        executed.append(type(statement).__name__)
        return real(self, statement, *args, **kwargs)

    monkeypatch.setattr(Connection, "execute", counting)
    storage = ms.SQLStorage(db_url, table_prefix=prefix, engine_options={"echo": True})
    try:
        store = ms.MemoryStore(storage)
        store.count()
        executed.clear()
        assert store.get("nothing") is None
        assert executed == ["Select"]
    finally:
        storage.close()


@pytest.mark.parametrize("in_session", [True, False])
def test_a_stale_versioned_write_writes_no_log_entry_and_takes_no_position(
    db_url: str, prefix: str, in_session: bool
) -> None:
    """`Repository.update_logged` (on PostgreSQL one statement: UPDATE, session position, entry): a row no
    longer at the expected version (or immutable) leaves the row, the log and the session's positions as
    they were, and says so."""
    storage = ms.SQLStorage(db_url, table_prefix=prefix)
    store = ms.MemoryStore(storage)
    session = "s" if in_session else None
    fid = store.commit(ms.Fact(id="v1", type="note", payload={"n": 1}), session_id=session)
    store.update(fid, {"payload": {"n": 2}})  # now at version 2
    store.commit(ms.Fact(id="v2", type="note", payload={"n": 1}), session_id=session)

    def stale(repo: Any) -> bool:
        current = repo.get(fid, lock=True)
        assert current is not None and current.version == 2
        entry = operations.entry(ms.Operation.UPDATE, session, fid, current, current, None, None)
        fact = current.evolve(version=3, payload={"n": 99})
        return bool(repo.update_logged(fact, entry, expected_version=1))

    before = storage.get_tx_log(session, limit=100)
    assert storage.transaction(stale) is False
    assert store.get_with_version(fid) == (store.get(fid), 2)
    assert store.get(fid)["payload"] == {"n": 2}
    assert storage.get_tx_log(session, limit=100) == before
    store.update(fid, {"payload": {"n": 3}})
    if in_session:  # the next entry takes the next position: none was taken by the stale write
        positions = storage.transaction(
            lambda repo: sorted(r[0] for r in repo.conn.execute(sa.select(repo.log.c.session_seq)).all())
        )
        assert positions == list(range(1, len(before) + 2))
    storage.close()
