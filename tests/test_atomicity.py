"""One store operation = one database transaction: failures leave nothing behind, on every database."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import BaseModel

import memstate_sql as ms
from memstate_sql import Fact, HookError, Operation, StorageError
from memstate_sql.repository import Repository
from tests.conftest import count_rows


class _User(BaseModel):
    email: str
    name: str


class Boom:
    """A hook that raises for the given operations (all if None)."""

    def __init__(self, *ops: Operation) -> None:
        self.ops = set(ops)
        self.armed = True

    def __call__(self, op: Operation, fact_id: str, fact: Fact | None) -> None:
        if self.armed and (not self.ops or op in self.ops):
            raise RuntimeError(f"hook refuses {op.value}")


def snapshot(store: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    facts = sorted(store.query(), key=lambda d: d["id"])
    log = store.storage.get_tx_log("s", limit=1000) + store.storage.get_tx_log(None, limit=1000)
    return facts, log


def test_a_raising_hook_leaves_no_fact_and_no_log_entry(make_store: Any, db_url: str, prefix: str) -> None:
    store = make_store([Boom()])
    with pytest.raises(HookError, match="hook refuses COMMIT"):
        store.commit(Fact(id="f1", type="t", payload={"v": 1}), session_id="s")
    assert store.get("f1") is None
    assert count_rows(db_url, prefix, "facts") == 0
    assert count_rows(db_url, prefix, "tx") == 0


@pytest.mark.parametrize("failing", ["update", "delete", "promote", "discard", "rollback", "singleton"])
def test_every_operation_is_all_or_nothing_under_a_failing_hook(make_store: Any, failing: str) -> None:
    hook = Boom()
    hook.armed = False
    store = make_store([hook])
    store.register_schema("user", _User, ms.Constraint(singleton_key="email"))
    a = store.commit(Fact(type="t", payload={"v": 1}), session_id="s")
    b = store.commit(Fact(type="t", payload={"v": 2}), session_id="s")
    store.update(a, {"payload": {"v": 10}})
    store.commit(Fact(type="user", payload={"email": "x@y", "name": "first"}), session_id="s")
    before = snapshot(store)
    hook.armed = True
    action = {
        "update": lambda: store.update(b, {"payload": {"v": 3}}),
        "delete": lambda: store.delete("s", b),
        "promote": lambda: store.promote_session("s"),
        "discard": lambda: store.discard_session("s"),
        "rollback": lambda: store.rollback("s", 3),
        "singleton": lambda: store.commit(Fact(type="user", payload={"email": "x@y", "name": "second"})),
    }[failing]
    with pytest.raises(HookError):
        action()
    assert snapshot(store) == before


def test_a_database_error_between_fact_and_log_write_leaves_neither(
    store: Any, db_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_append(self: Repository, **entry: Any) -> None:
        # A real error raised by the database, after the fact row was written in this transaction.
        self.conn.execute(sa.insert(self.log).values(uuid=None, op="COMMIT", ts=sa.func.now()))

    monkeypatch.setattr(Repository, "append", broken_append)
    # The transaction's route (PostgreSQL would send fact and entry as one lone statement instead: below).
    monkeypatch.setattr(ms.operations.Operations, "writes_alone", property(lambda self: False))
    with pytest.raises(StorageError):
        store.commit(Fact(id="f1", type="t", payload={"v": 1}))
    monkeypatch.undo()
    assert store.get("f1") is None
    assert count_rows(db_url, prefix, "facts") == 0
    assert count_rows(db_url, prefix, "tx") == 0


def test_a_database_error_in_the_log_part_of_a_lone_write_leaves_neither(
    db: str, store: Any, db_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lone commit and update (tests/test_lone_writes.py): PostgreSQL's one statement (fact row, session
    position and log entry, in autocommit), MySQL's one multi-statement text (its own transaction). The
    database refusing the entry refuses the whole statement, or ends the text with nothing written."""
    if db == "sqlite":
        pytest.skip("SQLite writes are transactions: no lone writes")
    fid = store.commit(Fact(type="t", payload={"v": 1}), session_id="s")
    logged = Repository._logged_params

    def broken_entry(self: Repository, params: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
        return {**logged(self, params, entry), "uuid": None}  # NOT NULL: refused by the database

    before = snapshot(store)
    monkeypatch.setattr(Repository, "_logged_params", broken_entry)
    with pytest.raises(StorageError):
        store.commit(Fact(type="t", payload={"v": 2}), session_id="s")
    with pytest.raises(StorageError):
        store.update(fid, {"payload": {"v": 3}})
    monkeypatch.undo()
    assert snapshot(store) == before
    assert count_rows(db_url, prefix, "facts") == 1 and count_rows(db_url, prefix, "tx") == 1


def test_other_connections_never_see_a_fact_before_commit(mode: str, make_store: Any, db_url: str, prefix: str) -> None:
    seen: dict[str, Any] = {}

    def outside_count(fact_id: str) -> int:
        engine = sa.create_engine(db_url)
        try:
            with engine.connect() as conn:
                query = sa.text(f"SELECT COUNT(*) FROM {prefix}_facts WHERE id = :i")
                return int(conn.execute(query, {"i": fact_id}).scalar_one())
        finally:
            engine.dispose()

    if mode == "sync":
        store = make_store()

        def peek(op: Operation, fact_id: str, fact: Fact | None) -> None:
            # Inside the transaction the store's own storage joins it and sees the write...
            seen["inside"] = store.storage.load(fact_id)
            # ...while another connection does not.
            seen["outside"] = outside_count(fact_id)
            raise RuntimeError("abort after looking")

        store.add_hook(peek)
    else:
        store = make_store()
        async_storage = store._target.storage

        class AsyncPeek:
            async def __call__(self, op: Operation, fact_id: str, fact: Fact | None) -> None:
                seen["inside"] = await async_storage.load(fact_id)
                seen["outside"] = outside_count(fact_id)
                raise RuntimeError("abort after looking")

        store._target.add_hook(AsyncPeek())
    with pytest.raises(HookError):
        store.commit(Fact(id="f1", type="t", payload={"v": 1}))
    assert seen["inside"] is not None and seen["inside"]["payload"] == {"v": 1}
    assert seen["outside"] == 0
    assert store.get("f1") is None


def test_rollback_with_a_failing_hook_changes_nothing(make_store: Any) -> None:
    hook = Boom(Operation.DELETE)
    hook.armed = False
    store = make_store([hook])
    a = store.commit(Fact(type="t", payload={"v": 1}), session_id="s")
    store.update(a, {"payload": {"v": 2}})
    b = store.commit(Fact(type="t", payload={"v": 3}), session_id="s")
    before = snapshot(store)
    hook.armed = True  # undoing b's COMMIT notifies DELETE: fails after a's UPDATE was undone
    with pytest.raises(HookError):
        store.rollback("s", 3)
    assert snapshot(store) == before
    assert store.get(b) is not None
