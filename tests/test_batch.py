"""`MemoryStore.commit_many`: many facts in one transaction, each committed as `commit` would, all or none."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

import memstate_sql as ms
from memstate_sql import ConflictError, Fact, HookError, ValidationFailed
from tests.invariants import check_tables


class User(BaseModel):
    email: str
    name: str


def log_of(store: Any, session: str | None) -> list[tuple[str, str]]:
    return [(e["op"], e["fact_id"]) for e in reversed(store.storage.get_tx_log(session, limit=1000))]


def test_a_batch_commits_every_fact_with_its_log_entry(store: Any, db_url: str, prefix: str) -> None:
    calls: list[tuple[str, str]] = []
    store.add_hook(lambda op, fid, fact: calls.append((op.value, fid)))
    ids = store.commit_many([Fact(id=f"f{i}", type="note", payload={"i": i}) for i in range(50)], session_id="s")
    assert ids == [f"f{i}" for i in range(50)]
    assert store.get("f7")["payload"] == {"i": 7} and store.get("f7")["session_id"] == "s"
    assert store.count("note") == 50
    assert log_of(store, "s") == [("COMMIT", f"f{i}") for i in range(50)]
    assert calls == [("COMMIT", f"f{i}") for i in range(50)]  # every hook call, before COMMIT
    assert store.commit_many([]) == []
    # Existing facts are updated (version bumped, one UPDATE entry each), new ones inserted.
    ids = store.commit_many([Fact(id="f1", type="note", payload={"i": -1}), Fact(id="g", type="note", payload={})])
    assert ids == ["f1", "g"] and store.get_version("f1") == 2 and store.get("f1")["payload"] == {"i": -1}
    assert store.storage.history("f1")[-1]["op"] == "UPDATE"
    store.rollback(None)  # the batch's entries are ordinary entries: roll back the last one
    assert store.get("g") is None and store.get("f1")["payload"] == {"i": -1}
    check_tables(db_url, prefix)


def test_a_failing_hook_rolls_back_the_whole_batch(store: Any, db_url: str, prefix: str) -> None:
    store.commit(Fact(id="keep", type="note", payload={"v": 1}), session_id="s")

    def hook(op: ms.Operation, fact_id: str, fact: Fact | None) -> None:
        if fact_id == "b7":
            raise RuntimeError("index down")

    store.add_hook(hook)
    batch = [Fact(id=f"b{i}", type="note", payload={"i": i}) for i in range(10)]
    batch.append(Fact(id="keep", type="note", payload={"v": 2}))
    with pytest.raises(HookError, match="index down"):
        store.commit_many(batch, session_id="s")
    assert store.count() == 1 and store.get("keep")["payload"] == {"v": 1}
    assert log_of(store, "s") == [("COMMIT", "keep")]
    check_tables(db_url, prefix)


def test_a_singleton_key_repeated_inside_one_batch_updates_the_first(store: Any, db_url: str, prefix: str) -> None:
    store.register_schema("user", User, ms.Constraint(singleton_key="email"))
    first = store.commit(Fact(type="user", payload={"email": "a@x", "name": "A0"}))
    ids = store.commit_many(
        [
            Fact(type="user", payload={"email": "b@x", "name": "B1"}),
            Fact(type="user", payload={"email": "a@x", "name": "A1"}),  # the existing fact
            Fact(type="user", payload={"email": "b@x", "name": "B2"}),  # the batch's own first fact
        ],
        session_id="s",
    )
    assert ids[1] == first and ids[2] == ids[0] != first
    assert sorted((d["payload"]["email"], d["payload"]["name"]) for d in store.query("user")) == [
        ("a@x", "A1"),
        ("b@x", "B2"),
    ]
    assert [op for op, _ in log_of(store, "s")] == ["COMMIT", "UPDATE", "UPDATE"]
    # The same id twice in one batch: the second write updates the first.
    assert store.commit_many([Fact(id="n", type="note", payload={"v": 1}), Fact(id="n", type="note", payload={"v": 2})])
    assert store.get("n")["payload"] == {"v": 2} and store.get_version("n") == 2
    check_tables(db_url, prefix)


def test_constraints_hold_inside_a_batch_and_refusals_roll_it_back(store: Any, db_url: str, prefix: str) -> None:
    store.register_schema("user", User, ms.Constraint(singleton_key="email"))
    store.register_schema("fixed", User, ms.Constraint(immutable=True))
    store.commit(Fact(id="frozen", type="fixed", payload={"email": "f@x", "name": "F"}))
    with pytest.raises(ConflictError):
        store.commit_many(
            [
                Fact(id="u1", type="user", payload={"email": "u@x", "name": "U"}),
                Fact(id="frozen", type="fixed", payload={"email": "f@x", "name": "G"}),
            ]
        )
    with pytest.raises(ValidationFailed):
        store.commit_many(
            [Fact(id="u2", type="user", payload={"email": "v@x", "name": "V"}), Fact(type="user", payload={"email": 3})]
        )
    with pytest.raises(ValidationFailed):
        store.commit_many(Fact(type="note", payload={}))  # a Fact, not a batch of them
    assert store.get("u1") is None and store.get("u2") is None and store.count() == 1
    assert store.get("frozen")["payload"]["name"] == "F"
    check_tables(db_url, prefix)


def test_a_large_batch_uses_multi_row_statements(store: Any, db_url: str, prefix: str) -> None:
    ids = store.commit_many((Fact(id=f"x{i:05d}", type="note", payload={"i": i}) for i in range(3000)), session_id="s")
    assert len(ids) == 3000 and store.count("note") == 3000
    assert store.count("note", {"payload.i": {"$gte": 2990}}) == 10
    assert len(store.storage.get_tx_log("s", limit=5000)) == 3000
    check_tables(db_url, prefix)


def test_a_batch_whose_facts_meet_through_the_table_is_committed_in_order(store: Any, db_url: str, prefix: str) -> None:
    """Facts that the batch's own ids and keys do not tie, but the stored rows do (a fact takes over the row
    that holds another fact's singleton key): the same result as committing them one by one, including the
    rows of the other facts, written once."""
    store.register_schema("user", User, ms.Constraint(singleton_key="email"))
    store.commit(Fact(id="held", type="user", payload={"email": "a@x", "name": "A0"}))
    calls: list[tuple[str, str]] = []
    store.add_hook(lambda op, fid, fact: calls.append((op.value, fid)))
    batch = [
        Fact(id="n1", type="note", payload={"i": 1}),
        Fact(id="held", type="note", payload={"i": 2}),  # over the user row: it leaves the key a@x
        Fact(type="user", payload={"email": "a@x", "name": "A1"}),  # a@x is free again: a new row
        Fact(id="n2", type="note", payload={"i": 3}),
    ]
    ids = store.commit_many(batch, session_id="s")
    assert ids[:2] == ["n1", "held"] and ids[3] == "n2" and ids[2] not in ("held", "n1", "n2")
    assert store.get("held")["type"] == "note" and store.get_version("held") == 2
    assert [d["id"] for d in store.query("user")] == [ids[2]]
    assert store.count("note") == 3 and store.get_version("n1") == 1
    assert log_of(store, "s") == [("COMMIT", "n1"), ("UPDATE", "held"), ("COMMIT", ids[2]), ("COMMIT", "n2")]
    assert calls == [("COMMIT", "n1"), ("UPDATE", "held"), ("COMMIT", ids[2]), ("COMMIT", "n2")]
    check_tables(db_url, prefix)


def test_an_expired_row_under_a_new_id_of_a_batch_is_replaced(store: Any, db_url: str, prefix: str) -> None:
    import datetime as dt

    past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    store.commit(Fact(id="old", type="note", payload={"v": 1}), expires_at=past)
    ids = store.commit_many([Fact(id="old", type="note", payload={"v": 2}), Fact(id="x", type="note", payload={})])
    assert ids == ["old", "x"] and store.get("old")["payload"] == {"v": 2} and store.count() == 2
    check_tables(db_url, prefix)
