"""One definition of what a log entry does, seen from every reader: history, rollback, verify.

Regression tests for issue 10's bugs: a fact's history shows the session discard that
deleted it; a rollback is recorded (who, why, when, what it restored); `iter_query`
checks its arguments like `query`; facts stored before their constraint was
registered obey it; `commit_model` says what it expected.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

import memstate_sql as ms
from memstate_sql import ConflictError, Constraint, Fact, ValidationFailed


def test_history_shows_the_session_discard_that_deleted_the_fact(store: Any) -> None:
    kept = store.commit(Fact(type="t", payload={"v": 0}), session_id="other")
    fid = store.commit(Fact(type="t", payload={"v": 1}), session_id="s")
    store.commit(Fact(type="t", payload={"v": 2}), session_id="s")
    assert store.discard_session("s") == 2
    history = store.storage.history(fid)
    assert [h["op"] for h in history] == ["COMMIT", "DISCARD_SESSION"]
    assert history[-1]["session_id"] == "s"
    assert [h["op"] for h in store.storage.history(kept)] == ["COMMIT"]


def test_history_of_a_single_discarded_fact_names_it(store: Any) -> None:
    fid = store.commit(Fact(type="t", payload={"v": 1}), session_id="s")
    store.discard_session("s")
    assert [h["op"] for h in store.storage.history(fid)] == ["COMMIT", "DISCARD_SESSION"]


def test_rollback_is_recorded_with_actor_reason_and_the_restored_state(store: Any, db_url: str, prefix: str) -> None:
    fid = store.commit(Fact(type="t", payload={"v": 1}), session_id="s")
    store.update(fid, {"payload": {"v": 2}})
    assert store.rollback("s", actor="ops", reason="wrong value") == 1
    history = store.storage.history(fid)
    assert [h["op"] for h in history] == ["COMMIT", "UPDATE", "ROLLBACK"]
    update, record = history[1], history[2]
    # The undone entry points at the rollback's own record.
    assert update["reverted_by"] == record["uuid"]
    assert record["actor"] == "ops" and record["reason"] == "wrong value" and record["session_id"] == "s"
    assert record["fact_before"]["payload"] == {"v": 2} and record["fact_after"]["payload"] == {"v": 1}
    assert store.get_version(fid) == 3
    # The record is audit only: not part of the session's log, not itself undone by the next rollback.
    assert [e["op"] for e in store.storage.get_tx_log("s")] == ["COMMIT"]
    assert store.rollback("s") == 1 and store.get(fid) is None
    assert ms.verify(db_url, table_prefix=prefix).ok


def test_rollback_of_a_session_without_entries_says_so(store: Any) -> None:
    assert store.rollback("no-such-session", 1) == 0


def test_rollback_default_reason_names_the_session(store: Any) -> None:
    a = store.commit(Fact(type="t", payload={"v": 1}), session_id="s")
    b = store.commit(Fact(type="t", payload={"v": 2}), session_id="s")
    store.rollback("s", 2)
    records = [h for h in store.storage.history(a) if h["op"] == "ROLLBACK"]
    assert len(records) == 1 and "session s" in records[0]["reason"] and records[0]["actor"] is None
    # One record lists every fact the rollback changed.
    assert records[0]["uuid"] in {h["uuid"] for h in store.storage.history(b)}


@pytest.mark.parametrize("bad", [123, ["t"], b"t"])
def test_iter_query_checks_its_arguments_like_query(store: Any, bad: Any) -> None:
    with pytest.raises(ValidationFailed):
        store.query(bad)
    with pytest.raises(ValidationFailed):
        store.iter_query(bad)
    with pytest.raises(ValidationFailed):
        store.iter_query("t", batch_size=0)
    with pytest.raises(ValidationFailed):
        store.storage.iter_query(bad)
    with pytest.raises(ValidationFailed):
        store.iter_query("t", filters="not a mapping")


class User(BaseModel):
    email: str
    name: str


class Card(BaseModel):
    n: int


def test_facts_stored_before_their_constraint_obey_it(make_store: Any) -> None:
    # Facts written without the constraint (as `import-memstate` and memstate's own code write them).
    before = make_store()
    before.storage.save({"id": "u1", "type": "user", "payload": {"email": "a@x", "name": "A"}})
    before.storage.save({"id": "c1", "type": "card", "payload": {"n": 1}})
    store = make_store()
    store.register_schema("user", User, Constraint(singleton_key="email"))
    store.register_schema("card", Card, Constraint(immutable=True))
    fid = store.commit(Fact(type="user", payload={"email": "a@x", "name": "A2"}))
    assert fid == "u1" and store.count("user") == 1
    assert store.get("u1")["payload"]["name"] == "A2"
    with pytest.raises(ConflictError, match="Immutable"):
        store.update("c1", {"payload": {"n": 2}})


def test_existing_facts_sharing_a_new_singleton_key_are_refused_clearly(make_store: Any) -> None:
    before = make_store()
    before.storage.save({"id": "u1", "type": "user", "payload": {"email": "a@x", "name": "A"}})
    before.storage.save({"id": "u2", "type": "user", "payload": {"email": "a@x", "name": "B"}})
    store = make_store()
    store.register_schema("user", User, Constraint(singleton_key="email"))
    with pytest.raises(ConflictError, match="u1 and u2"):
        store.commit(Fact(type="user", payload={"email": "b@x", "name": "C"}))


def test_commit_model_says_it_expected_a_model_instance(store: Any) -> None:
    store.register_schema("user", User)
    with pytest.raises(ValidationFailed, match="expected a pydantic model instance, got str"):
        store.commit_model("user", User(email="a@x", name="A"))
