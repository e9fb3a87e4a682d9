"""The invariant checker finds each kind of inconsistency (so the stress and crash tests can fail)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from memstate_sql import Fact, verify
from memstate_sql.verify import VerifyReport


def report(store: Any, db_url: str, prefix: str) -> VerifyReport:
    return verify(db_url, table_prefix=prefix)


def history(store: Any) -> tuple[str, str]:
    a = store.commit(Fact(type="t", payload={"v": 1}), session_id="s")
    store.update(a, {"payload": {"v": 2}})
    b = store.commit(Fact(type="t", payload={"v": "b"}))
    return a, b


def test_a_consistent_store_passes(storage: Any, db_url: str, prefix: str) -> None:
    from memstate_sql import MemoryStore

    store = MemoryStore(storage)
    _a, b = history(store)
    store.delete("s", b)
    store.discard_session("s")
    store.rollback("s")
    found = report(store, db_url, prefix)
    assert found.ok, found.problems
    assert found.counts()["rollbacks"] == 1 and found.facts == 1


def test_each_inconsistency_is_reported(storage: Any, db_url: str, prefix: str) -> None:
    from memstate_sql import MemoryStore

    store = MemoryStore(storage)
    a, _b = history(store)
    storage.save({**store.get(a), "payload": {"v": "unlogged"}})
    assert any(f"fact {a}: the row differs" in p for p in report(store, db_url, prefix).problems)
    storage.delete(a)
    assert any(f"fact {a}: log seq" in p and "missing" in p for p in report(store, db_url, prefix).problems)
    storage.save({"id": "ghost", "type": "t", "payload": {}})
    assert any("fact ghost has no active log entry" in p for p in report(store, db_url, prefix).problems)

    # Half a rollback: the middle entry of a chain marked undone, the fact left as it was.
    c = store.commit(Fact(type="t", payload={"v": 1}), session_id="h")
    store.update(c, {"payload": {"v": 2}})
    store.update(c, {"payload": {"v": 3}})
    engine = sa.create_engine(db_url)
    try:
        with engine.begin() as conn:
            seqs = [
                r[0]
                for r in conn.execute(sa.text(f"SELECT seq FROM {prefix}_tx WHERE fact_id = :f ORDER BY seq"), {"f": c})
            ]
            conn.execute(sa.text(f"UPDATE {prefix}_tx SET reverted_by = 'x' WHERE seq = :s"), {"s": seqs[1]})
    finally:
        engine.dispose()
    assert any(f"fact {c}: log seq {seqs[2]}" in p for p in report(store, db_url, prefix).problems)
