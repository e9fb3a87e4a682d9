"""PostgreSQL plans at 20k facts: a selective filter on an undeclared payload path is served by the GIN
index alone, with the planner's own choice (no enable_seqscan = off), in the plan made for the values
(custom) and in the plan made for any values (generic: what a prepared statement gets after five runs,
psycopg preparing statements it sees often)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from psycopg.sql import Literal

import memstate_sql as ms
from memstate_sql.records import singleton_slot
from tests.conftest import database_url, drop_prefix

TS = datetime(2026, 1, 1, tzinfo=timezone.utc)
N = 20_000
OTHER_TYPES = 1000  # a store with many types, one of which ("note") holds most of the rows


@pytest.fixture(scope="module")
def loaded(db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ms.SQLStorage]:
    """One store of 20k notes and 4k facts of 1000 other types, analyzed, for the module's tests."""
    if db != "postgresql":
        pytest.skip("plans of PostgreSQL's GIN index")
    url = database_url(db, tmp_path_factory)
    prefix = "t" + uuid.uuid4().hex[:10]
    storage = ms.SQLStorage(url, table_prefix=prefix)
    storage.count()  # creates the schema

    def work(repo: Any) -> None:
        rows = []
        for i in range(N + 4 * OTHER_TYPES):
            fid = f"f{i:06d}"
            note = {"group": i // 50, "score": i % 997, "name": f"user-{i}", "tags": [f"k{i % 1000}", "all"]}
            rows.append({
                "namespace": "", "id": fid, "type": "note" if i < N else f"t{i % OTHER_TYPES}",
                "payload": note if i < N else {"group": -1, "name": f"other-{i}", "tags": ["all"]},
                "source": None, "session_id": None, "ts": TS, "version": 1, "immutable": False, "singleton": None,
                "singleton_slot": singleton_slot(fid, None),
            })  # fmt: skip
        repo.conn.execute(sa.insert(repo.facts), rows)

    try:
        storage.transaction(work, name="load")
        with storage.engine.begin() as conn:  # the statistics autovacuum gathers
            conn.exec_driver_sql(f"ANALYZE {prefix}_facts")
        yield storage
    finally:
        storage.close()
        drop_prefix(url, prefix)


def _statement(storage: ms.SQLStorage, call: Any) -> tuple[str, dict[str, Any]]:
    """The SQL text and parameters the storage sends for `call` (the last SELECT)."""
    seen: list[tuple[str, dict[str, Any]]] = []

    def before(conn: Any, cursor: Any, statement: str, params: Any, context: Any, executemany: bool) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            seen.append((statement, dict(params)))

    sa.event.listen(storage.engine, "before_cursor_execute", before)
    try:
        call()
    finally:
        sa.event.remove(storage.engine, "before_cursor_execute", before)
    return seen[-1]


def _plans(storage: ms.SQLStorage, sql: str, params: dict[str, Any]) -> dict[str, str]:
    """EXPLAIN ANALYZE of the statement prepared with $n parameters, planned for its values (custom)
    and for any values (generic)."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        names.append(match.group(1))
        return f"${len(names)}"

    prepared = re.sub(r"%\((\w+)\)s", number, sql)
    kinds = {bool: "boolean", int: "bigint", float: "float8", str: "text", datetime: "timestamptz"}
    types = ", ".join(kinds[type(params[n])] for n in names)
    found: dict[str, str] = {}
    with storage.engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        assert raw is not None
        cur = raw.cursor()
        cur.execute(f"PREPARE planned ({types}) AS {prepared}")
        try:
            for mode in ("force_custom_plan", "force_generic_plan"):
                cur.execute(f"SET plan_cache_mode = {mode}")
                values = ", ".join(Literal(params[n]).as_string(raw) for n in names)
                cur.execute(f"EXPLAIN ANALYZE EXECUTE planned({values})")
                found[mode] = "\n".join(row[0] for row in cur.fetchall())
        finally:
            cur.execute("DEALLOCATE planned")
            cur.execute("RESET plan_cache_mode")
            raw.commit()
    return found


def _indexes_used(plan: str) -> set[str]:
    return set(re.findall(r"Index (?:Only )?Scan (?:Backward )?(?:using|on) (\w+)", plan))


SELECTIVE = [
    pytest.param({"payload.group": 7}, 50, id="eq-number"),
    pytest.param({"payload.name": "user-77"}, 1, id="eq-string"),
    pytest.param({"payload.group": {"$in": [7, 8, 9]}}, 150, id="in"),
    pytest.param({"payload.tags": {"$contains": "k3"}}, 20, id="contains"),
]


@pytest.mark.parametrize("typename", ["note", None])
@pytest.mark.parametrize(("filters", "expected"), SELECTIVE)
def test_selective_undeclared_filter_uses_only_the_gin_index(
    loaded: ms.SQLStorage, filters: dict[str, Any], expected: int, typename: str | None
) -> None:
    store = ms.MemoryStore(loaded)
    gin = f"ix_{loaded.table_prefix}_facts_payload_gin"
    for call in (
        lambda: store.query(typename, filters),
        lambda: store.count(typename, filters),
        lambda: list(store.iter_query(typename, filters, batch_size=500)),
    ):
        sql, params = _statement(loaded, call)
        for mode, plan in _plans(loaded, sql, params).items():
            assert "Seq Scan" not in plan, (mode, plan)
            assert _indexes_used(plan) == {gin}, (mode, plan)  # the GIN index alone, no BitmapAnd with a btree
    assert len(store.query(typename, filters)) == expected
    assert store.count(typename, filters) == expected


def test_the_plan_check_can_fail(loaded: ms.SQLStorage) -> None:
    """Control: a range on an undeclared path has no index to use, and the check above says so."""
    store = ms.MemoryStore(loaded)
    sql, params = _statement(loaded, lambda: store.query("note", {"payload.score": {"$gt": 990}}))
    for plan in _plans(loaded, sql, params).values():
        assert f"ix_{loaded.table_prefix}_facts_payload_gin" not in _indexes_used(plan), plan
