"""Vector search computed inside SQLite by sqlite-vec (docs/search.md, "Modes").

The stores here run SQLite through a sqlite3 module that can load extensions (pysqlite3 where CPython's
cannot, `sqlitevec.loadable_module`) with ``VectorIndex(in_database="required")``: every search below is
computed by sqlite-vec, or the test fails. Its answer must equal the independent reference of
tests/test_search.py and the exact scan of the same storage, ids, scores and order, with filters,
thresholds, exact ties and near-ties that float32 orders differently; and the vectors must follow the
facts through failed hooks, rollbacks, discards and expiry as in the exact mode.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import memstate_sql as ms
from memstate_sql.dialects import sqlitevec
from memstate_sql.facts import Fact
from tests.conftest import REQUIRE
from tests.test_search import (
    DIM,
    PAST,
    TableEmbedder,
    assert_same,
    hits,
    index_for,
    load,
    make_corpus,
    random_vector,
    reference,
)

MODULE = sqlitevec.loadable_module()


def _missing() -> str | None:
    try:
        import sqlite_vec  # noqa: F401
    except ImportError:
        return "the sqlite-vec package is not installed (pip install 'memstate-sql[sqlite-vec]')"
    if MODULE is None:
        return "no sqlite3 module that can load extensions (pip install pysqlite3-binary, Linux x86-64)"
    return None


@pytest.fixture
def vec_url(tmp_path: Path) -> str:
    """A fresh SQLite file; the test fails (CI, MEMSTATE_SQL_REQUIRE_DATABASES=1) or skips without sqlite-vec."""
    reason = _missing()
    if reason is not None:
        if REQUIRE or os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return f"sqlite:///{tmp_path / 'vec.db'}"


@pytest.fixture
def open_storage(vec_url: str) -> Iterator[Any]:
    """Factory of storages on `vec_url` (through the loadable module unless told otherwise), closed afterwards."""
    made: list[ms.SQLStorage] = []

    def factory(index: ms.VectorIndex, *, loadable: bool = True) -> ms.SQLStorage:
        # CPython's sqlite3 gets a file of its own (never two copies of SQLite on one file: `count_vectors`)
        url, options = (vec_url, {"module": MODULE}) if loadable else (vec_url[:-3] + "-cpython.db", None)
        st = ms.SQLStorage(url, table_prefix="v", engine_options=options, vector_index=index)
        made.append(st)
        return st

    yield factory
    for st in made:
        st.close()


def count_vectors(url: str) -> int:
    """The vectors stored, read through the same sqlite3 module as the stores: two copies of SQLite in one
    process must not open one database file (closing it in one drops the other's POSIX locks: a reader
    then misses commits; SQLite's "How To Corrupt An SQLite Database File", 2.2)."""
    engine = sa.create_engine(url, module=MODULE)
    try:
        with engine.connect() as conn:
            return int(conn.exec_driver_sql("SELECT COUNT(*) FROM v_vectors").scalar_one())
    finally:
        engine.dispose()


def in_database(embed: TableEmbedder, dim: int = DIM) -> ms.VectorIndex:
    return ms.VectorIndex(embed=embed, dim=dim, fields={"doc": ["text"]}, in_database="required")


def exact(embed: TableEmbedder, dim: int = DIM) -> ms.VectorIndex:
    return ms.VectorIndex(embed=embed, dim=dim, fields={"doc": ["text"]}, in_database="off")


def searches_in_sql(storage: ms.SQLStorage) -> list[str]:
    """Records the statements that rank with sqlite-vec on this storage's engine."""
    seen: list[str] = []

    @sa.event.listens_for(storage.engine, "before_cursor_execute")
    def _record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "vec_distance_cosine" in statement:
            seen.append(statement)

    return seen


def test_the_plan_says_sqlite_vec_computes_the_search(open_storage: Any) -> None:
    st = open_storage(in_database(TableEmbedder()))
    plan = st.explain_search()
    assert (plan.mode, plan.reason) == ("in-database", None)
    assert plan.engine.startswith("sqlite-vec v")
    assert open_storage(exact(TableEmbedder())).explain_search() == ms.SearchPlan(
        "exact scan", plan_engine(), "VectorIndex(in_database='off')"
    )


def plan_engine() -> str:
    return "numpy" if ms.vectors._numpy() is not None else "python"


def test_top_k_equals_the_exact_reference_with_filters(open_storage: Any) -> None:
    embed = TableEmbedder()
    docs = make_corpus(embed)
    st = open_storage(in_database(embed))
    store = ms.MemoryStore(st)
    scan = ms.MemoryStore(open_storage(exact(embed)))
    seen = searches_in_sql(st)
    load(store, docs)
    store.commit(Fact(id="other", type="note", payload={"text": "text 3"}))  # not an indexed type
    for j in range(5):
        query = f"query {j}"
        cases: list[tuple[dict[str, Any], Any, int, float | None]] = [
            ({}, lambda p: True, 10, None),
            ({"filters": {"payload.group": 1}}, lambda p: p["group"] == 1, 7, None),
            ({"filters": {"payload.n": {"$gte": 60}, "type": "doc"}}, lambda p: p["n"] >= 60, 5, None),
            ({}, lambda p: True, 200, None),  # more than there are: every candidate, exactly ranked
        ]
        cut = reference(docs, embed, query, 20)[12][1]
        cases.append(({"score_threshold": cut}, lambda p: True, 50, cut))
        cases.append(({"score_threshold": cut, "filters": {"payload.group": 0}}, lambda p: p["group"] == 0, 3, cut))
        for kwargs, keep, limit, threshold in cases:
            want = reference(docs, embed, query, limit, keep, threshold)
            got = hits(store.search(query, limit=limit, **kwargs))
            assert_same(got, want)
            assert_same(got, hits(scan.search(query, limit=limit, **kwargs)))  # and the exact scan's
    assert len(seen) >= 30
    # exact ties (every 10th fact shares its predecessor's vector) come in id order
    embed.table["twin query"] = list(embed.table["text 8"])
    top = hits(store.search("twin query", limit=2))
    assert [fid for fid, _ in top] == ["f0008", "f0009"] and top[0][1] == top[1][1]
    assert store.search("query 0", limit=3, filters={"payload.group": 99}) == []


def test_near_ties_float32_blurs_are_ranked_exactly(open_storage: Any) -> None:
    """Clusters of vectors a few float32 units apart: sqlite-vec's order among them is noise, so the
    boundary must be settled by the exact re-rank (a second, bounded query), equal to the exact scan."""
    dim = 48
    rng = random.Random(11)
    embed = TableEmbedder(dim=dim)
    centres = [random_vector(rng, dim) for _ in range(4)]
    docs: dict[str, dict[str, Any]] = {}
    for i in range(240):
        centre = centres[i % 4]
        text = f"near {i}"
        embed.table[text] = [x * (1 + rng.uniform(-3e-7, 3e-7)) for x in centre]
        docs[f"n{i:04d}"] = {"text": text, "group": i % 3, "n": i}
    for j, centre in enumerate(centres):
        embed.table[f"probe {j}"] = [x + rng.uniform(-1e-3, 1e-3) for x in centre]
    st = open_storage(in_database(embed, dim))
    store = ms.MemoryStore(st)
    scan = ms.MemoryStore(open_storage(exact(embed, dim)))
    load(store, docs)
    seen = searches_in_sql(st)
    for j in range(4):
        for limit, filters in [(5, None), (17, {"payload.group": 2}), (40, None)]:
            got = hits(store.search(f"probe {j}", limit=limit, filters=filters))
            keep = (lambda p: True) if filters is None else (lambda p: p["group"] == 2)
            assert_same(got, reference(docs, embed, f"probe {j}", limit, keep))
            assert_same(got, hits(scan.search(f"probe {j}", limit=limit, filters=filters)))
    assert len(seen) > 12  # some searches needed the second, exact pass over the blurred boundary


def test_a_commit_whose_hook_fails_leaves_no_vector(open_storage: Any, vec_url: str) -> None:
    def failing(op: Any, fact_id: str, fact: Any) -> None:
        raise RuntimeError("vector hook down")

    embed = TableEmbedder()
    store = ms.MemoryStore(open_storage(in_database(embed)), [failing])
    with pytest.raises(ms.HookError):
        store.commit(Fact(type="doc", payload={"text": "alpha"}))
    with pytest.raises(ms.HookError):
        store.commit_many([Fact(type="doc", payload={"text": f"t{i}"}) for i in range(3)])
    assert count_vectors(vec_url) == 0
    assert store.search("alpha") == []


def test_rollback_restores_the_previous_vector(open_storage: Any, vec_url: str) -> None:
    embed = TableEmbedder()
    store = ms.MemoryStore(open_storage(in_database(embed)))
    fid = store.commit(Fact(type="doc", payload={"text": "alpha"}), session_id="s")
    store.commit(Fact(type="doc", payload={"text": "unrelated"}), session_id="s2")
    store.update(fid, {"payload": {"text": "beta"}})
    assert hits(store.search("beta", limit=1))[0] == (fid, pytest.approx(1.0))
    assert all(s < 0.999 for f, s in hits(store.search("alpha", limit=5)) if f == fid)
    assert store.rollback("s", steps=1) == 1
    assert hits(store.search("alpha", limit=1))[0] == (fid, pytest.approx(1.0))
    assert count_vectors(vec_url) == 2
    assert store.rollback("s", steps=1) == 1  # the creation: fact and vector gone
    assert count_vectors(vec_url) == 1
    assert fid not in [f for f, _ in hits(store.search("alpha", limit=5))]


def test_discard_session_and_expiry_remove_vectors(open_storage: Any, vec_url: str) -> None:
    embed = TableEmbedder()
    store = ms.MemoryStore(open_storage(in_database(embed)))
    keep = store.commit(Fact(type="doc", payload={"text": "keep"}))
    for i in range(3):
        store.commit(Fact(type="doc", payload={"text": f"session {i}"}), session_id="chat")
    old = store.commit(Fact(type="doc", payload={"text": "expired"}), expires_at=PAST)
    assert count_vectors(vec_url) == 5
    assert old not in [f for f, _ in hits(store.search("expired", limit=10))]  # expired: never found
    assert store.discard_session("chat") == 3
    assert store.sweep() == 1
    assert count_vectors(vec_url) == 1
    assert [f for f, _ in hits(store.search("session 1", limit=10))] == [keep]


def test_required_fails_clearly_where_the_extension_cannot_load(
    open_storage: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    embed = TableEmbedder()
    cpython = ms.MemoryStore(open_storage(in_database(embed), loadable=False))
    if hasattr(__import__("sqlite3").Connection, "enable_load_extension"):
        pytest.skip("this Python's sqlite3 can load extensions: nothing to refuse")
    cpython.commit(Fact(type="doc", payload={"text": "alpha"}))
    with pytest.raises(ms.StorageError, match=r"in_database='required'.*enable_load_extension.*pysqlite3"):
        cpython.search("alpha")
    with pytest.raises(ms.StorageError, match="enable_load_extension"):
        cpython.storage.explain_search()
    # without the package at all (a loadable sqlite3 module, but no sqlite-vec to load)
    monkeypatch.setitem(sys.modules, "sqlite_vec", None)
    bare = ms.MemoryStore(open_storage(in_database(embed)))
    with pytest.raises(ms.StorageError, match=r"sqlite-vec package is not installed.*memstate-sql\[sqlite-vec\]"):
        bare.search("alpha")


def test_auto_falls_back_to_the_exact_scan(open_storage: Any) -> None:
    embed = TableEmbedder()
    docs = make_corpus(embed, 50)
    auto = ms.VectorIndex(embed=embed, dim=DIM, fields={"doc": ["text"]})
    assert auto.in_database == "auto"
    st = open_storage(auto, loadable=False)
    plan = st.explain_search()
    if plan.mode == "in-database":
        pytest.skip("this Python's sqlite3 loads sqlite-vec: no fallback to see")
    assert plan.mode == "exact scan" and "pysqlite3" in (plan.reason or "")
    store = ms.MemoryStore(st)
    seen = searches_in_sql(st)
    load(store, docs)
    assert_same(hits(store.search("query 2", limit=6)), reference(docs, embed, "query 2", 6))
    assert seen == []
    # the same index through a loadable module uses the extension, with the same answer
    loaded = open_storage(auto)
    assert loaded.explain_search().mode == "in-database"
    load(ms.MemoryStore(loaded), docs)
    assert_same(hits(ms.MemoryStore(loaded).search("query 2", limit=6)), reference(docs, embed, "query 2", 6))


def test_off_never_loads_the_extension(open_storage: Any) -> None:
    st = open_storage(exact(TableEmbedder()))
    ms.MemoryStore(st).commit(Fact(type="doc", payload={"text": "alpha"}))
    assert [f for f, _ in hits(ms.MemoryStore(st).search("alpha"))] != []
    with st.engine.connect() as conn, pytest.raises(sa.exc.OperationalError, match="vec_version"):
        conn.exec_driver_sql("SELECT vec_version()")


def test_async_storage_explains_its_plan(vec_url: str) -> None:
    async def run() -> tuple[ms.SearchPlan, ms.SearchPlan]:
        async with ms.AsyncSQLStorage(vec_url, vector_index=index_for(TableEmbedder())) as auto:
            auto_plan = await auto.explain_search()
        async with ms.AsyncSQLStorage(vec_url) as no_index:
            hooks_plan = await no_index.explain_search()
        return auto_plan, hooks_plan

    auto_plan, hooks_plan = asyncio.run(run())
    assert hooks_plan.mode == "hooks"
    if auto_plan.mode == "exact scan":  # aiosqlite drives CPython's sqlite3: loadable only if it is
        assert "asyncio driver" in (auto_plan.reason or "")
    else:
        assert auto_plan.engine.startswith("sqlite-vec")


def test_in_database_is_checked() -> None:
    with pytest.raises(ms.ValidationFailed, match=r"in_database=.*'auto', 'off' or 'required'"):
        ms.VectorIndex(embed=TableEmbedder(), dim=DIM, fields={"doc": ["text"]}, in_database="yes")


def test_the_asyncio_driver_loads_it_where_its_sqlite3_can(vec_url: str) -> None:
    """aiosqlite wraps CPython's sqlite3; here it is handed pysqlite3 connections (``async_creator``) to
    reach the loading path of an aiosqlite connection whose module can load extensions."""
    import aiosqlite

    path = vec_url.removeprefix("sqlite:///")[:-3] + "-async.db"

    def creator() -> Any:
        return aiosqlite.Connection(lambda: MODULE.connect(path, check_same_thread=False), 64)

    embed = TableEmbedder()
    docs = make_corpus(embed, 40)

    async def run() -> tuple[ms.SearchPlan, list[tuple[str, float]]]:
        options = {"async_creator": creator}
        async with ms.AsyncSQLStorage(
            f"sqlite:///{path}", engine_options=options, vector_index=in_database(embed)
        ) as st:
            store = ms.AsyncMemoryStore(st)
            await store.commit_many([Fact(id=fid, type="doc", payload=p) for fid, p in docs.items()])
            found = await store.search("query 1", limit=8, filters={"payload.group": 2})
            return await st.explain_search(), hits(found)

    plan, got = asyncio.run(run())
    assert plan.mode == "in-database" and plan.engine.startswith("sqlite-vec")
    assert_same(got, reference(docs, embed, "query 1", 8, lambda p: p["group"] == 2))
