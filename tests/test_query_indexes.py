"""Declared payload paths get a real index on every database, and declared filters use it (EXPLAIN)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

import pytest
from sqlalchemy import event, inspect

import memstate_sql as ms
from memstate_sql import jsondoc, reference
from memstate_sql.indexes import IndexedPath
from memstate_sql.records import FactState
from memstate_sql.repository import Repository

TS = datetime(2026, 1, 1, tzinfo=timezone.utc)
DECLARED = [
    IndexedPath("payload.score", "number"),
    IndexedPath("payload.name", "string"),
    IndexedPath(("payload", "a.b", "c"), "number"),
]


@contextmanager
def explained(storage: ms.SQLStorage) -> Iterator[list[str]]:
    """Run the storage's next queries as EXPLAIN and collect the plan text."""
    plans: list[str] = []
    engine = storage.engine

    def before(conn: Any, cursor: Any, statement: str, params: Any, context: Any, executemany: bool) -> Any:
        if statement.lstrip().upper().startswith("SELECT"):
            if engine.dialect.name == "postgresql":
                # A few hundred rows: the planner would rightly prefer a seq scan. Forbid it to prove
                # that the index can serve the compiled predicate (session-level: single-statement reads
                # run in autocommit, where SET LOCAL does nothing; the pool is emptied afterwards).
                cursor.execute("SET enable_seqscan = off")
            prefix = "EXPLAIN QUERY PLAN " if engine.dialect.name == "sqlite" else "EXPLAIN "
            statement = prefix + statement
        return statement, params

    def after(conn: Any, cursor: Any, statement: str, params: Any, context: Any, executemany: bool) -> None:
        if statement.startswith("EXPLAIN"):
            plans.append("\n".join(" | ".join(str(c) for c in row) for row in cursor.fetchall()))

    event.listen(engine, "before_cursor_execute", before, retval=True)
    event.listen(engine, "after_cursor_execute", after)
    try:
        yield plans
    finally:
        event.remove(engine, "before_cursor_execute", before)
        event.remove(engine, "after_cursor_execute", after)
        if engine.dialect.name == "postgresql":
            engine.dispose()  # no pooled connection keeps enable_seqscan = off


def populate(storage: ms.SQLStorage, n: int = 400) -> list[dict[str, Any]]:
    states = []
    for i in range(n):
        payload: dict[str, Any] = {"score": i if i % 7 else float(i), "name": f"n{i:04d}", "a.b": {"c": i % 50}}
        if i % 11 == 0:
            payload["score"] = str(i)  # a string where numbers are declared: never matched by a number filter
        if i % 13 == 0:
            payload["name"] = i % 2 == 0
        states.append(FactState(id=f"f{i:04d}", type="t", payload=jsondoc.check_payload(payload)[0], session_id=None,
                                source=None, ts=TS))  # fmt: skip

    def work(repo: Repository) -> None:
        for state in states:
            repo.insert(state)
        repo.conn.exec_driver_sql(
            {"postgresql": "ANALYZE {t}", "sqlite": "ANALYZE", "mysql": "ANALYZE TABLE {t}"}.get(
                repo.conn.dialect.name, "ANALYZE TABLE {t}"
            ).format(t=repo.facts.name)
        )

    storage.transaction(work, name="populate")
    return [s.doc() for s in states]


@pytest.fixture
def indexed(db_url: str, prefix: str) -> Iterator[ms.SQLStorage]:
    st = ms.SQLStorage(db_url, table_prefix=prefix, indexed_paths=DECLARED)
    yield st
    st.close()


FILTERS: list[tuple[dict[Any, Any], str]] = [
    ({"payload.score": 42}, "score"),
    ({"payload.score": 49.0}, "score"),
    ({"payload.score": {"$in": [5, 6]}}, "score"),
    ({"payload.score": {"$gt": 390}}, "score"),
    ({"payload.score": {"$gte": 2, "$lt": 4}}, "score"),
    ({"payload.name": "n0042"}, "name"),
    ({"payload.name": {"$lt": "n0003"}}, "name"),
    ({"payload.name": {"$in": ["n0001", "n0400"]}}, "name"),
    ({("payload", "a.b", "c"): 7, "payload.score": {"$lt": 100}}, "a.b"),
]


def _index_of(spec_key: str, storage: ms.SQLStorage) -> str:
    spec = {"score": DECLARED[0], "name": DECLARED[1], "a.b": DECLARED[2]}[spec_key]
    return spec.index_name(f"{storage.table_prefix}_facts")


@pytest.mark.parametrize("flt_,spec_key", FILTERS)
def test_declared_filters_use_their_index(indexed: ms.SQLStorage, db: str, flt_: dict[Any, Any], spec_key: str) -> None:
    docs = populate(indexed)
    expected = [d["id"] for d in reference.run(docs, flt_)]
    assert [d["id"] for d in indexed.query("t", flt_)] == expected
    assert expected, "the filter should match something"
    with explained(indexed) as plans:
        indexed.query(None, flt_)
    plan = "\n".join(plans)
    name = _index_of(spec_key, indexed)
    assert name in plan, f"{name} not used:\n{plan}"
    if db == "sqlite":
        assert "SEARCH" in plan
    if db == "mysql":
        assert " ALL " not in f" {plan} ".replace("|", " "), plan


def test_undeclared_paths_scan(indexed: ms.SQLStorage, db: str) -> None:
    """Control: the EXPLAIN check can fail (a path nobody declared has no index to use)."""
    populate(indexed, 50)
    with explained(indexed) as plans:
        indexed.query(None, {"payload.other": {"$gt": 3}})
    plan = "\n".join(plans)
    if db == "mysql":
        # The (namespace, path) index may serve the namespace prefix, like any namespace index; never the
        # path: its key length stays that of the namespace column (191 utf8mb4 characters + length bytes).
        for row in plan.splitlines():
            cols = row.split(" | ")
            assert not ("_pn_" in cols[5] and int(cols[6]) > 191 * 4 + 2), row
    else:
        assert "_pn_" not in plan


def test_index_creation_is_idempotent_and_named(db_url: str, prefix: str, db: str) -> None:
    for _ in range(2):
        st = ms.SQLStorage(db_url, table_prefix=prefix, indexed_paths=DECLARED)
        st.query("t", {"payload.score": 1})
        st.close()
    st = ms.SQLStorage(db_url, table_prefix=prefix)
    try:
        with st.engine.connect() as conn:
            if db == "sqlite":
                names = {r[0] for r in conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'index'")}
            else:
                names = {ix["name"] for ix in inspect(conn).get_indexes(f"{prefix}_facts")}
        for spec in DECLARED:
            assert spec.index_name(f"{prefix}_facts") in names
        # A storage that declares nothing still answers filters on those paths (by scanning).
        st.save({"id": "x", "type": "t", "payload": {"score": 3}, "ts": TS.isoformat()})
        assert [d["id"] for d in st.query("t", {"payload.score": {"$gte": 3}})] == ["x"]
    finally:
        st.close()


def test_declarations_are_validated() -> None:
    with pytest.raises(ms.ValidationFailed, match="kind"):
        IndexedPath("payload.x", "bool")  # type: ignore[arg-type]
    with pytest.raises(ms.ValidationFailed, match="payload path"):
        IndexedPath("type", "string")
    with pytest.raises(ms.ValidationFailed, match="two kinds"):
        ms.SQLStorage("sqlite://", indexed_paths=[("payload.x", "number"), ("payload.x", "string")])


@pytest.mark.parametrize(
    "flt_",
    [
        {"payload.name": "n0042"},
        {"payload.tags": {"$contains": "t3"}},
        {"payload.name": {"$in": ["n0001", "n0002"]}},
        {"payload.a.b": True},
    ],
)
def test_postgresql_containment_uses_the_gin_index(db: str, storage: ms.SQLStorage, flt_: dict[str, Any]) -> None:
    """The compiled `payload @> CAST(:json AS JSONB)` is what a GIN jsonb_path_ops index serves.

    The index itself comes from the migrations (``ix_<prefix>_facts_payload_gin``); the test creates
    one of that shape on its own table to check the compiled form.
    """
    if db != "postgresql":
        pytest.skip("GIN containment is PostgreSQL's")
    storage.count()
    facts = f"{storage.table_prefix}_facts"
    with storage.engine.begin() as conn:
        conn.exec_driver_sql(
            f"CREATE INDEX ix_{facts}_gin_test ON {facts} USING gin (payload jsonb_path_ops) WITH (fastupdate = off)"
        )
    states = [
        FactState(id=f"g{i}", type="t", payload={"name": f"n{i:04d}", "tags": [f"t{i % 10}"], "a": {"b": i % 2 == 0}},
                  session_id=None, source=None, ts=TS)
        for i in range(300)
    ]  # fmt: skip
    storage.transaction(lambda repo: [repo.insert(s) for s in states], name="load")
    with storage.engine.begin() as conn:  # the statistics autovacuum gathers
        conn.exec_driver_sql(f"ANALYZE {facts}")
    docs = [s.doc() for s in states]
    assert [d["id"] for d in storage.query(None, flt_)] == [d["id"] for d in reference.run(docs, flt_)]
    with explained(storage) as plans:
        storage.query(None, flt_)
    assert f"ix_{facts}_gin_test" in "\n".join(plans), plans
