"""memstate's documented store behaviour, on every database, for the sync and the asyncio store."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

import memstate_sql as ms
from memstate_sql import (
    ConflictError,
    Constraint,
    Fact,
    MemoryStoreError,
    Operation,
    ValidationFailed,
)


class User(BaseModel):
    email: str
    name: str
    age: int = 0


class Free(BaseModel):
    """Any payload (extra keys kept)."""

    model_config = ConfigDict(extra="allow")


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[Operation, str, Fact | None]] = []

    def __call__(self, op: Operation, fact_id: str, fact: Fact | None) -> None:
        self.calls.append((op, fact_id, fact))


class Failing:
    def __init__(self, on: set[Operation] | None = None) -> None:
        self.on = on

    def __call__(self, op: Operation, fact_id: str, fact: Fact | None) -> None:
        if self.on is None or op in self.on:
            raise RuntimeError(f"hook refuses {op.value}")


def ops(store: Any, session: str | None) -> list[str]:
    return [e["op"] for e in store.storage.get_tx_log(session)]


# ---------------------------------------------------------------------------- commit / get


def test_commit_and_get_round_trip(store: Any) -> None:
    ts = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=timezone.utc)
    fid = store.commit(Fact(type="note", payload={"text": "héllo", "n": 1.5}, source="agent", ts=ts))
    doc = store.get(fid)
    assert doc == {
        "id": fid,
        "type": "note",
        "payload": {"text": "héllo", "n": 1.5},
        "source": "agent",
        "session_id": None,
        "ts": "2026-01-02T03:04:05.678901Z",
    }
    assert store.get("missing") is None
    [entry] = store.storage.get_tx_log(None)
    assert entry["op"] == "COMMIT" and entry["fact_id"] == fid
    assert entry["fact_before"] is None and entry["fact_after"] == doc


def test_commit_does_not_mutate_the_callers_fact(store: Any) -> None:
    store.register_schema("user", User, Constraint(singleton_key="email"))
    first = store.commit(Fact(type="user", payload={"email": "a@x", "name": "A"}))
    fact = Fact(type="user", payload={"email": "a@x", "name": "B"})
    original_id = fact.id
    assert store.commit(fact, session_id="s") == first
    assert fact.id == original_id and fact.session_id is None


def test_ephemeral_commit_is_logged_as_such(store: Any) -> None:
    store.commit(Fact(type="scratch", payload={}), session_id="s", ephemeral=True)
    assert ops(store, "s") == ["COMMIT_EPHEMERAL"]


def test_commit_model_and_unregistered_model(store: Any) -> None:
    store.register_schema("user", User)
    fid = store.commit_model(User(email="a@x", name="A"), fact_id="u1", source="crm", session_id="s", actor="bot")
    assert fid == "u1"
    assert store.get("u1")["payload"] == {"email": "a@x", "name": "A", "age": 0}
    assert store.storage.get_tx_log("s")[0]["actor"] == "bot"

    class Other(BaseModel):
        x: int

    with pytest.raises(MemoryStoreError, match="is not registered"):
        store.commit_model(Other(x=1))


def test_schema_validation_failure_writes_nothing(store: Any) -> None:
    store.register_schema("user", User)
    with pytest.raises(ValidationFailed):
        store.commit(Fact(id="bad", type="user", payload={"email": "a@x"}))
    assert store.get("bad") is None
    assert store.storage.get_tx_log(None) == []


def test_schema_evolution_of_payload_models(store: Any) -> None:
    class V1(BaseModel):
        name: str

    class V2(BaseModel):
        name: str
        tags: list[str] = []

    store.register_schema("doc", V1)
    fid = store.commit(Fact(type="doc", payload={"name": "a"}))
    store.register_schema("doc", V2)
    store.update(fid, {"payload": {"name": "b"}})
    assert store.get(fid)["payload"] == {"name": "b", "tags": []}


# ---------------------------------------------------------------------------- update / delete


def test_update_merges_validates_and_logs(store: Any) -> None:
    store.register_schema("user", User)
    fid = store.commit(Fact(type="user", payload={"email": "a@x", "name": "A", "age": 1}), session_id="s")
    before = store.get(fid)
    assert store.update(fid, {"payload": {"age": 2}}, actor="me", reason="birthday") == fid
    after = store.get(fid)
    assert after["payload"] == {"email": "a@x", "name": "A", "age": 2}
    assert after["ts"] >= before["ts"]
    entry = store.storage.get_tx_log("s")[0]
    assert (entry["op"], entry["actor"], entry["reason"]) == ("UPDATE", "me", "birthday")
    assert entry["fact_before"] == before and entry["fact_after"] == after
    with pytest.raises(ValidationFailed):
        store.update(fid, {"payload": {"age": "not a number"}})
    assert store.get(fid) == after


@pytest.mark.parametrize("patch", [{"session_id": "x"}, {"payload": {"a": 1}, "type": "y"}, {}, {"payload": 3}])
def test_update_rejects_anything_but_a_payload_patch(store: Any, patch: dict[str, Any]) -> None:
    fid = store.commit(Fact(type="t", payload={"a": 0}))
    with pytest.raises(ValidationFailed):
        store.update(fid, patch)
    assert ops(store, None) == ["COMMIT"]


def test_update_and_delete_of_a_missing_fact(store: Any) -> None:
    with pytest.raises(MemoryStoreError, match="Fact not found"):
        store.update("nope", {"payload": {}})
    with pytest.raises(MemoryStoreError, match="Fact not found"):
        store.delete(None, "nope")


def test_delete_logs_the_before_image(store: Any) -> None:
    fid = store.commit(Fact(type="t", payload={"a": 1}), session_id="s")
    doc = store.get(fid)
    assert store.delete("s", fid, actor="me") == fid
    assert store.get(fid) is None
    entry = store.storage.get_tx_log("s")[0]
    assert entry["op"] == "DELETE" and entry["fact_before"] == doc and entry["fact_after"] is None


# ---------------------------------------------------------------------------- constraints


def test_singleton_commit_becomes_an_update(store: Any) -> None:
    store.register_schema("user", User, Constraint(singleton_key="email"))
    first = store.commit(Fact(type="user", payload={"email": "a@x", "name": "A"}))
    second = store.commit(Fact(type="user", payload={"email": "a@x", "name": "B"}))
    assert first == second
    assert [d["payload"]["name"] for d in store.query("user")] == ["B"]
    assert ops(store, None) == ["UPDATE", "COMMIT"]


def test_singleton_keys_are_typed(store: Any) -> None:
    store.register_schema("flag", Free, Constraint(singleton_key="k"))
    ids = {store.commit(Fact(type="flag", payload={"k": value})) for value in (1, "1", True, 1.0, None, None)}
    # 1 and 1.0 are the same key; True and "1" are other keys; a None key is no key at all.
    assert len(ids) == 5


def test_immutable_singleton_refuses_a_second_commit(store: Any) -> None:
    store.register_schema("cfg", Free, Constraint(singleton_key="name", immutable=True))
    store.commit(Fact(type="cfg", payload={"name": "x", "v": 1}))
    with pytest.raises(ConflictError, match="Immutable constraint violation"):
        store.commit(Fact(type="cfg", payload={"name": "x", "v": 2}))
    assert [d["payload"]["v"] for d in store.query("cfg")] == [1]


def test_immutable_is_enforced_by_update_and_recommit(store: Any) -> None:
    store.register_schema("rec", Free, Constraint(immutable=True))
    fid = store.commit(Fact(type="rec", payload={"v": 1}))
    with pytest.raises(ConflictError, match="Immutable constraint violation"):
        store.update(fid, {"payload": {"v": 2}})
    with pytest.raises(ConflictError, match="Immutable constraint violation"):
        store.commit(Fact(id=fid, type="rec", payload={"v": 3}))
    assert store.get(fid)["payload"] == {"v": 1}
    assert ops(store, None) == ["COMMIT"]


def test_immutability_holds_for_a_store_that_never_registered_it(make_store: Any) -> None:
    writer = make_store()
    writer.register_schema("rec", Free, Constraint(immutable=True))
    fid = writer.commit(Fact(type="rec", payload={"v": 1}))
    other = make_store()  # another process's store: no constraint registered
    with pytest.raises(ConflictError, match="Immutable constraint violation"):
        other.update(fid, {"payload": {"v": 2}})
    assert other.get(fid)["payload"] == {"v": 1}


def test_update_cannot_make_two_facts_share_a_singleton_key(store: Any) -> None:
    store.register_schema("user", User, Constraint(singleton_key="email"))
    a = store.commit(Fact(type="user", payload={"email": "a@x", "name": "A"}))
    store.commit(Fact(type="user", payload={"email": "b@x", "name": "B"}))
    with pytest.raises(ConflictError):
        store.update(a, {"payload": {"email": "b@x"}})
    assert sorted(d["payload"]["email"] for d in store.query("user")) == ["a@x", "b@x"]


# ---------------------------------------------------------------------------- sessions


def test_query_by_session_and_promote(store: Any) -> None:
    a = store.commit(Fact(type="t", payload={"k": "a"}), session_id="s")
    b = store.commit(Fact(type="t", payload={"k": "b"}), session_id="s")
    store.commit(Fact(type="t", payload={"k": "c"}))
    assert {d["id"] for d in store.query("t", session_id="s")} == {a, b}
    promoted = store.promote_session("s", selector=lambda d: d["payload"]["k"] == "a", actor="me")
    assert promoted == [a]
    assert store.get(a)["session_id"] is None and store.get(b)["session_id"] == "s"
    entry = store.storage.get_tx_log("s")[0]
    assert entry["op"] == "PROMOTE" and entry["fact_before"]["session_id"] == "s"
    assert entry["fact_after"]["session_id"] is None


def test_discard_session_deletes_logs_and_notifies(make_store: Any) -> None:
    hook = Recorder()
    store = make_store([hook])
    a = store.commit(Fact(type="t", payload={}), session_id="s")
    b = store.commit(Fact(type="t", payload={}), session_id="s")
    keep = store.commit(Fact(type="t", payload={}))
    hook.calls.clear()
    assert store.discard_session("s") == 2
    assert store.get(a) is None and store.get(b) is None and store.get(keep) is not None
    assert store.storage.get_tx_log("s")[0]["op"] == "DISCARD_SESSION"
    assert sorted((op, fid) for op, fid, _ in hook.calls) == sorted(
        [(Operation.DISCARD_SESSION, a), (Operation.DISCARD_SESSION, b)]
    )
    assert store.discard_session("s") == 0


def test_a_session_commit_never_pulls_a_global_fact_into_the_session(store: Any) -> None:
    store.register_schema("user", User, Constraint(singleton_key="email"))
    fid = store.commit(Fact(type="user", payload={"email": "a@x", "name": "global"}))
    assert store.commit(Fact(type="user", payload={"email": "a@x", "name": "draft"}), session_id="s1") == fid
    assert store.get(fid)["session_id"] is None
    assert store.discard_session("s1") == 0
    assert store.get(fid)["payload"]["name"] == "draft"
    store.rollback("s1")  # the draft change was logged under s1
    assert store.get(fid)["payload"]["name"] == "global"
    # Same rule for an id-based re-commit.
    store.commit(Fact(id=fid, type="user", payload={"email": "a@x", "name": "again"}), session_id="s2")
    assert store.get(fid)["session_id"] is None


def test_a_commit_without_session_makes_a_session_fact_global(store: Any) -> None:
    fid = store.commit(Fact(type="t", payload={"v": 1}), session_id="s")
    store.commit(Fact(id=fid, type="t", payload={"v": 2}))
    assert store.get(fid)["session_id"] is None
    assert store.discard_session("s") == 0


# ---------------------------------------------------------------------------- rollback


def test_rollback_undoes_newest_first(store: Any) -> None:
    fid = store.commit(Fact(type="t", payload={"v": 1}), session_id="s")
    store.update(fid, {"payload": {"v": 2}})
    store.update(fid, {"payload": {"v": 3}})
    store.rollback("s", 1)
    assert store.get(fid)["payload"] == {"v": 2}
    assert ops(store, "s") == ["UPDATE", "COMMIT"]
    store.rollback("s", 2)
    assert store.get(fid) is None
    assert store.storage.get_tx_log("s") == []
    store.rollback("s", 5)  # nothing left: a no-op
    store.rollback("s", 0)


def test_rollback_restores_a_deleted_fact(store: Any) -> None:
    fid = store.commit(Fact(type="t", payload={"v": 1}))
    doc = store.get(fid)
    store.delete("s", fid)
    store.rollback("s")
    assert store.get(fid) == doc


def test_rollback_of_a_promotion_and_of_a_discard(store: Any) -> None:
    a = store.commit(Fact(type="t", payload={"v": 1}), session_id="s")
    store.promote_session("s")
    store.rollback("s")
    assert store.get(a)["session_id"] == "s"
    b = store.commit(Fact(type="t", payload={"v": 2}), session_id="s")
    docs = {a: store.get(a), b: store.get(b)}
    assert store.discard_session("s") == 2
    store.rollback("s")
    assert {fid: store.get(fid) for fid in docs} == docs


def test_rollback_without_session_means_entries_without_session(store: Any) -> None:
    g = store.commit(Fact(type="t", payload={"v": "global"}))
    s = store.commit(Fact(type="t", payload={"v": "session"}), session_id="s")
    store.rollback(None)
    assert store.get(g) is None and store.get(s) is not None


def test_rollback_keeps_undone_entries_for_audit(store: Any) -> None:
    fid = store.commit(Fact(type="t", payload={"v": 1}), session_id="s")
    store.update(fid, {"payload": {"v": 2}})
    store.rollback("s")
    history = store.storage.history(fid)
    assert [(h["op"], h["reverted_by"] is not None) for h in history] == [
        ("COMMIT", False),
        ("UPDATE", True),
        ("ROLLBACK", True),
    ]


def test_rollback_rejects_bad_steps(store: Any) -> None:
    with pytest.raises(ValidationFailed):
        store.rollback("s", "1")


# ---------------------------------------------------------------------------- hooks


def test_hooks_are_called_with_op_id_and_fact(make_store: Any) -> None:
    hook = Recorder()
    store = make_store([hook])
    fid = store.commit(Fact(type="t", payload={"v": 1}))
    store.update(fid, {"payload": {"v": 2}})
    store.delete(None, fid)
    assert [(op, f) for op, f, _ in hook.calls] == [
        (Operation.COMMIT, fid),
        (Operation.UPDATE, fid),
        (Operation.DELETE, fid),
    ]
    assert hook.calls[1][2] is not None and hook.calls[1][2].payload == {"v": 2}


def test_add_hook(store: Any) -> None:
    hook = Recorder()
    store.add_hook(hook)
    store.commit(Fact(type="t", payload={}))
    assert len(hook.calls) == 1


def test_search_hydrates_from_the_database_and_drops_ghosts(make_store: Any) -> None:
    class Searcher(Recorder):
        def search(self, query: str, limit: int = 5, filters: Any = None, score_threshold: Any = None) -> Any:
            return [ms.SearchResult(fact_id=fid, score=s) for fid, s in (("a", 0.5), ("ghost", 0.9), ("b", 0.7))]

    store = make_store([Searcher()])
    store.commit(Fact(id="a", type="t", payload={"v": "a"}))
    store.commit(Fact(id="b", type="t", payload={"v": "b"}))
    results = store.search("anything")
    # memstate's order: the hooks' own (a Chroma hook's scores are distances, lower is better).
    assert [(r.fact.id, r.score) for r in results] == [("a", 0.5), ("b", 0.7)]


def test_search_without_search_hooks_is_empty(store: Any) -> None:
    assert store.search("anything") == []
