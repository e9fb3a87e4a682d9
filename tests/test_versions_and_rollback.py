"""Optimistic concurrency (fact versions) and conflict-aware rollback, on every database, sync and async."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

import memstate_sql as ms
from memstate_sql import ConflictError, Fact, FactNotFound, RollbackConflictError, ValidationFailed
from tests.invariants import check_store


class AnyUser(BaseModel):
    model_config = ConfigDict(extra="allow")
    email: str


def test_versions_start_at_one_and_count_writes(store: Any) -> None:
    fid = store.commit(Fact(type="t", payload={"v": 1}))
    assert store.get_version(fid) == 1
    doc, version = store.get_with_version(fid)
    assert doc == store.get(fid) and version == 1
    assert "version" not in store.get(fid)  # memstate's document is unchanged
    store.update(fid, {"payload": {"v": 2}})
    store.commit(Fact(id=fid, type="t", payload={"v": 3}))
    assert store.get_version(fid) == 3
    assert store.get_version("missing") is None and store.get_with_version("missing") is None


def test_update_with_expected_version(store: Any) -> None:
    fid = store.commit(Fact(type="t", payload={"v": 1}))
    store.update(fid, {"payload": {"v": 2}}, expected_version=1)
    with pytest.raises(ConflictError, match="version 2, not the expected version 1"):
        store.update(fid, {"payload": {"v": 99}}, expected_version=1)
    assert store.get(fid)["payload"] == {"v": 2} and store.get_version(fid) == 2
    assert len(store.storage.get_tx_log(None)) == 2  # the refused update left no log entry


def test_delete_with_expected_version(store: Any) -> None:
    fid = store.commit(Fact(type="t", payload={"v": 1}))
    store.update(fid, {"payload": {"v": 2}})
    with pytest.raises(ConflictError):
        store.delete(None, fid, expected_version=1)
    assert store.get(fid) is not None
    store.delete(None, fid, expected_version=2)
    assert store.get(fid) is None
    with pytest.raises(FactNotFound):
        store.delete(None, fid, expected_version=2)


@pytest.mark.parametrize("bad", [0, -1, True, "1", 1.0])
def test_expected_version_must_be_a_positive_integer(store: Any, bad: Any) -> None:
    fid = store.commit(Fact(type="t", payload={"v": 1}))
    with pytest.raises(ValidationFailed):
        store.update(fid, {"payload": {"v": 2}}, expected_version=bad)
    with pytest.raises(ValidationFailed):
        store.delete(None, fid, expected_version=bad)
    assert store.get_version(fid) == 1


def test_lost_update_is_prevented_between_two_stores(make_store: Any) -> None:
    """Two writers read the same version; the second write is refused instead of lost."""
    a, b = make_store(), make_store()
    fid = a.commit(Fact(type="counter", payload={"n": 0}))
    seen_a, seen_b = a.get_with_version(fid), b.get_with_version(fid)
    a.update(fid, {"payload": {"n": seen_a[0]["payload"]["n"] + 1}}, expected_version=seen_a[1])
    with pytest.raises(ConflictError):
        b.update(fid, {"payload": {"n": seen_b[0]["payload"]["n"] + 1}}, expected_version=seen_b[1])
    assert a.get(fid)["payload"] == {"n": 1}


# ---------------------------------------------------------------------------- rollback conflicts


def test_rollback_refuses_to_override_a_later_change_by_another_session(store: Any) -> None:
    """memstate demo 10: commit in s, promote, another actor updates; rollback(s) must not restore v=1."""
    fid = store.commit(Fact(type="t", payload={"v": 1}), session_id="s")
    store.promote_session("s")
    store.update(fid, {"payload": {"v": 2}}, actor="other")  # logged without a session: not part of s
    before = (store.get(fid), store.get_version(fid), store.storage.get_tx_log("s"), store.storage.get_tx_log(None))
    with pytest.raises(RollbackConflictError) as info:
        store.rollback("s")
    assert isinstance(info.value, ConflictError)
    [conflict] = info.value.plan.conflicts
    assert conflict.fact_id == fid and conflict.later_op == "UPDATE"
    after = (store.get(fid), store.get_version(fid), store.storage.get_tx_log("s"), store.storage.get_tx_log(None))
    assert after == before  # nothing changed
    check_store(store.storage)


def test_rollback_plan_is_a_dry_run(store: Any) -> None:
    fid = store.commit(Fact(type="t", payload={"v": 1}), session_id="s")
    store.update(fid, {"payload": {"v": 2}})
    plan = store.plan_rollback("s", 2)
    assert plan.ok and [e["op"] for e in plan.entries] == ["UPDATE", "COMMIT"]
    assert [(a.op, a.action) for a in plan.actions] == [("UPDATE", "restore"), ("COMMIT", "delete")]
    assert plan.actions[0].restore_to is not None and plan.actions[0].restore_to["payload"] == {"v": 1}
    assert store.get(fid)["payload"] == {"v": 2} and len(store.storage.get_tx_log("s")) == 2
    assert store.plan_rollback("s", 0).entries == []
    store.rollback("s", 2)
    assert store.get(fid) is None
    check_store(store.storage)


def test_rollback_plan_reports_conflicts_without_changing_anything(store: Any) -> None:
    fid = store.commit(Fact(type="t", payload={"v": 1}), session_id="s")
    store.promote_session("s")
    store.delete("t", fid)
    plan = store.plan_rollback("s")
    assert not plan.ok and plan.conflicts[0].later_op == "DELETE" and plan.conflicts[0].later_session_id == "t"
    assert store.get(fid) is None


def test_forced_rollback_overrides_and_marks_the_overridden_entries(store: Any) -> None:
    fid = store.commit(Fact(type="t", payload={"v": 1}), session_id="s")
    store.promote_session("s")
    store.update(fid, {"payload": {"v": 2}}, actor="other")
    store.rollback("s", force=True)
    assert store.get(fid)["session_id"] == "s" and store.get(fid)["payload"] == {"v": 1}
    history = store.storage.history(fid)
    assert [(h["op"], h["reverted_by"] is not None) for h in history] == [
        ("COMMIT", False),
        ("PROMOTE", True),
        ("UPDATE", True),
        ("ROLLBACK", True),
    ]
    assert history[1]["reverted_by"] == history[2]["reverted_by"] == history[3]["uuid"]
    assert "forced" in history[3]["reason"]
    assert store.storage.get_tx_log(None) == []  # the overridden update left the active log
    check_store(store.storage)


def test_rollback_detects_an_unlogged_change(store: Any) -> None:
    fid = store.commit(Fact(type="t", payload={"v": 1}), session_id="s")
    doc = store.get(fid)
    store.storage.save({**doc, "payload": {"v": "raw"}})  # memstate's backend API: not logged
    with pytest.raises(RollbackConflictError, match="without a log entry"):
        store.rollback("s")
    assert store.get(fid)["payload"] == {"v": "raw"}
    store.rollback("s", force=True)
    assert store.get(fid) is None


def test_rollback_of_several_steps_of_one_fact_is_not_a_conflict(store: Any) -> None:
    fid = store.commit(Fact(type="t", payload={"v": 1}), session_id="s")
    for v in range(2, 6):
        store.update(fid, {"payload": {"v": v}})
    assert store.plan_rollback("s", 3).ok
    store.rollback("s", 3)
    assert store.get(fid)["payload"] == {"v": 2}
    check_store(store.storage)


def test_rollback_conflict_when_only_some_undone_entries_are_later_changed(store: Any) -> None:
    a = store.commit(Fact(type="t", payload={"v": "a"}), session_id="s")
    b = store.commit(Fact(type="t", payload={"v": "b"}), session_id="s")
    store.promote_session("s", selector=lambda doc: doc["id"] == b)
    store.update(b, {"payload": {"v": "b2"}})  # b is global now: logged without a session
    with pytest.raises(RollbackConflictError):
        store.rollback("s", 3)
    assert store.get(a) is not None and store.get(b)["payload"] == {"v": "b2"}  # a untouched: all or nothing
    with pytest.raises(RollbackConflictError):
        store.rollback("s", 1)  # the newest entry (b's promotion) conflicts too
    assert store.plan_rollback("s", 1).conflicts[0].fact_id == b
    check_store(store.storage)


def test_forced_rollback_never_overrides_a_later_session_discard(store: Any) -> None:
    ms_type = "user"
    store.register_schema(ms_type, AnyUser, ms.Constraint(singleton_key="email"))
    fid = store.commit(Fact(type=ms_type, payload={"email": "a@x", "name": "t"}), session_id="t")
    store.commit(Fact(type=ms_type, payload={"email": "a@x", "name": "draft"}), session_id="s")  # logged under s
    assert store.discard_session("t") == 1
    with pytest.raises(RollbackConflictError, match="discard"):
        store.rollback("s", force=True)
    assert store.get(fid) is None
    store.rollback("t")
    store.rollback("s")
    assert store.get(fid)["payload"]["name"] == "t"
    check_store(store.storage)


def test_a_fact_created_between_the_plan_and_the_writes_is_not_overwritten(
    db: str, db_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race the stress test found: the plan cannot lock an absent fact; the writes re-check it."""
    if db == "sqlite":
        pytest.skip("SQLite serialises writers (BEGIN IMMEDIATE): nothing can run between plan and writes")
    import threading

    from memstate_sql import rollback as rollback_module

    store = ms.MemoryStore(ms.SQLStorage(db_url, table_prefix=prefix))
    other = ms.MemoryStore(ms.SQLStorage(db_url, table_prefix=prefix))
    original = rollback_module.plan
    raced: list[str] = []

    def plan_then_race(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        if not raced:  # the first plan of the rollback (the only caller here), which locked what it found
            raced.append("x")
            thread = threading.Thread(
                target=lambda: other.commit(Fact(id="f", type="t", payload={"by": "other"}), session_id="s2")
            )
            thread.start()
            thread.join(30)
        return result

    try:
        store.commit(Fact(id="f", type="t", payload={"v": 1}), session_id="s1")
        store.discard_session("s1")  # f is gone; undoing the discard would re-create it
        monkeypatch.setattr(rollback_module, "plan", plan_then_race)
        with pytest.raises(RollbackConflictError) as info:
            store.rollback("s1")
        assert raced and info.value.plan.conflicts[0].later_session_id == "s2"
        assert store.get("f")["payload"] == {"by": "other"}
    finally:
        store.storage.close()
        other.storage.close()
    check_store(store.storage)
