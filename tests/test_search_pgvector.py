"""Vector search computed by PostgreSQL with pgvector (memstate_sql.dialects.pgvector, docs/search.md).

Runs against a private PostgreSQL 16 that HAS pgvector: the binaries of the ``pgserver`` wheel (a test
dependency), started once for this module in a temporary directory on a free port and stopped by PID.
The shared servers of the suite (PostgreSQL 15 here) have no pgvector: the migration's no-op path is
tested there (``MEMSTATE_SQL_TEST_POSTGRES_URL`` or the suite's own server).

The reference top-k is tests/test_search.py's independent computation over the stored vectors.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

import memstate_sql as ms
from memstate_sql import migrations, vectors
from memstate_sql.dialects import NearestRequest, pgvector
from memstate_sql.facts import Fact
from memstate_sql.validation import query_spec
from tests.conftest import REQUIRE, count_rows, database_url, drop_prefix
from tests.servers import PostgresServer, pgserver_bin
from tests.test_search import DIM, PAST, TableEmbedder, assert_same, hits, load, make_corpus, reference

PREVIOUS = "ms_0005_log_order"  # the revision before ms_0008_pgvector


@pytest.fixture(scope="module")
def pgvector_url() -> Iterator[str]:
    bindir = pgserver_bin()
    if bindir is None:
        reason = "the pgserver wheel (PostgreSQL 16 with pgvector) is not installed: pip install -e '.[test]'"
        if REQUIRE:
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    server = PostgresServer(bindir=bindir)
    try:
        server.start()
        yield server.url
    finally:
        server.destroy()  # pg_ctl stop of its own data directory (its PID), then the directory


@pytest.fixture
def prefix(pgvector_url: str) -> Iterator[str]:
    name = "t" + uuid.uuid4().hex[:10]
    yield name
    drop_prefix(pgvector_url, name)
    with sa.create_engine(pgvector_url).begin() as conn:
        pgvector.uninstall(conn, f"{name}_vectors", None)


class Spy:
    """Counts the searches `DialectSupport.nearest` answered itself (not None) on a storage, among those
    that allowed the approximate index (``VectorIndex(ann=True)``); `exact_requests`: the others (which
    PostgreSQL declines before sending anything)."""

    def __init__(self, storage: ms.SQLStorage) -> None:
        self.answered = 0
        self.declined = 0
        self.exact_requests = 0
        inner = storage.dialect.nearest

        def nearest(conn: sa.Connection, request: NearestRequest) -> Any:
            found = inner(conn, request)
            if not request.approximate:
                assert found is None, "PostgreSQL answered a search that did not allow its approximate index"
                self.exact_requests += 1
            elif found is None:
                self.declined += 1
            else:
                self.answered += 1
            return found

        self.restore = lambda: storage.dialect.__dict__.pop("nearest", None)
        storage.dialect.nearest = nearest  # type: ignore[method-assign]


@pytest.fixture
def spied() -> Iterator[list[Spy]]:
    made: list[Spy] = []
    yield made
    for spy in made:
        spy.restore()


def analyze(url: str, prefix: str) -> None:
    """Fresh planner statistics (a test's tables are new): the planner then picks the HNSW index."""
    with sa.create_engine(url).begin() as conn:
        conn.execute(sa.text(f"ANALYZE {prefix}_vectors"))
        conn.execute(sa.text(f"ANALYZE {prefix}_facts"))


def index_for(embed: Any, **kw: Any) -> ms.VectorIndex:
    return ms.VectorIndex(embed=embed, dim=DIM, fields={"doc": ["text"]}, **{"ann": True, **kw})


def ann_indexes(url: str, prefix: str) -> list[str]:
    with sa.create_engine(url).connect() as conn:
        rows = conn.execute(
            sa.text("SELECT indexname FROM pg_indexes WHERE tablename = :t AND indexdef LIKE '%USING hnsw%'"),
            {"t": f"{prefix}_vectors"},
        )
        return sorted(row[0] for row in rows)


def function_exists(url: str, prefix: str) -> bool:
    with sa.create_engine(url).connect() as conn:
        return bool(conn.execute(sa.text("SELECT to_regproc(:f) IS NOT NULL"), {"f": f"{prefix}_vector_of"}).scalar())


def test_top_k_equals_the_exact_reference_with_filters(pgvector_url: str, prefix: str, spied: list[Spy]) -> None:
    embed = TableEmbedder()
    docs = make_corpus(embed, 600)
    st = ms.SQLStorage(pgvector_url, table_prefix=prefix, vector_index=index_for(embed))
    exact = ms.SQLStorage(pgvector_url, table_prefix=prefix, vector_index=index_for(embed, ann=False))
    try:
        store = ms.MemoryStore(st)
        load(store, docs)
        assert ann_indexes(pgvector_url, prefix) == [f"ix_{prefix}_vectors_ann_{DIM}"]
        analyze(pgvector_url, prefix)
        spy = Spy(st)
        spied.append(spy)
        cases: list[tuple[int, dict[str, Any] | None, Any, float | None]] = [
            (10, None, lambda p: True, None),
            (7, {"payload.group": 1}, lambda p: p["group"] == 1, None),
            (5, {"payload.n": {"$gte": 300}, "type": "doc"}, lambda p: p["n"] >= 300, None),
        ]
        for j in range(5):
            query = f"query {j}"
            for limit, filters, keep, threshold in cases:
                want = reference(docs, embed, query, limit, keep, threshold)
                assert_same(hits(store.search(query, limit=limit, filters=filters)), want)
                assert_same(hits(ms.MemoryStore(exact).search(query, limit=limit, filters=filters)), want)
            cut = reference(docs, embed, query, 20)[12][1]
            assert_same(
                hits(store.search(query, limit=30, score_threshold=cut)),
                reference(docs, embed, query, 30, threshold=cut),
            )
        # the database answered (HNSW candidates, re-ranked), it did not fall back to the exact scan
        assert spy.answered == 5 * 4 and spy.declined == 0
        # a filter that leaves too few candidates: the exact scan answers, and it is exact
        rare = {"payload.n": {"$in": [3, 77, 500]}}
        want = reference(docs, embed, "query 0", 10, lambda p: p["n"] in (3, 77, 500))
        assert_same(hits(store.search("query 0", limit=10, filters=rare)), want)
        assert spy.declined == 1
        # a tie: the fact sharing the query's vector and its twin come first, in id order
        embed.table["twin query"] = list(embed.table["text 8"])
        top = hits(store.search("twin query", limit=2))
        assert [fid for fid, _ in top] == ["f0008", "f0009"] and top[0][1] == top[1][1]
    finally:
        st.close()
        exact.close()


def test_the_candidates_come_from_the_hnsw_index(pgvector_url: str, prefix: str) -> None:
    embed = TableEmbedder()
    docs = make_corpus(embed, 300)
    with ms.SQLStorage(pgvector_url, table_prefix=prefix, vector_index=index_for(embed)) as st:
        load(ms.MemoryStore(st), docs)
        analyze(pgvector_url, prefix)
        q = vectors.unpack(vectors.pack(embed.table["query 1"], DIM), DIM)

        def plan(repo: Any) -> str:
            table = vectors.table_of(repo.models)
            facts = repo.facts
            joined = table.join(
                facts,
                sa.and_(
                    facts.c.namespace == table.c.namespace,
                    facts.c.id == table.c.fact_id,
                    facts.c.version == table.c.version,
                ),
            )
            where = (table.c.namespace == repo.namespace) & (table.c.dim == DIM)
            where = where & repo.filter_where(query_spec(None, {"payload.group": 2}, None), None)
            request = NearestRequest(table, joined, where, q, DIM, 10, None)
            compiled = pgvector.candidates(repo.conn, request, 40, "public").compile(repo.conn)
            rows = repo.conn.exec_driver_sql("EXPLAIN " + str(compiled), compiled.params)
            return "\n".join(row[0] for row in rows)

        assert f"Index Scan using ix_{prefix}_vectors_ann_{DIM}" in st.transaction(plan, write=False)


def test_ann_false_never_uses_the_approximate_index(pgvector_url: str, prefix: str, spied: list[Spy]) -> None:
    embed = TableEmbedder()
    docs = make_corpus(embed, 60)
    with ms.SQLStorage(pgvector_url, table_prefix=prefix, vector_index=index_for(embed, ann=False)) as st:
        load(ms.MemoryStore(st), docs)
        assert ann_indexes(pgvector_url, prefix) == []  # no index is built (no write cost) without ANN
        spy = Spy(st)
        spied.append(spy)
        assert_same(hits(ms.MemoryStore(st).search("query 2", limit=4)), reference(docs, embed, "query 2", 4))
        assert spy.answered == spy.declined == 0 and spy.exact_requests == 1


@pytest.fixture
def ann_store(pgvector_url: str, prefix: str, spied: list[Spy]) -> Iterator[tuple[Any, Spy]]:
    """A store with the HNSW index over enough other facts (fillers) that the index answers searches."""
    embed = TableEmbedder()
    st = ms.SQLStorage(pgvector_url, table_prefix=prefix, vector_index=index_for(embed))
    store = ms.MemoryStore(st)
    store.commit_many([Fact(id=f"filler{i:03d}", type="doc", payload={"text": f"filler {i}"}) for i in range(200)])
    analyze(pgvector_url, prefix)
    spy = Spy(st)
    spied.append(spy)
    try:
        yield store, spy
    finally:
        st.close()


def test_a_commit_whose_hook_fails_leaves_no_vector(pgvector_url: str, prefix: str, ann_store: Any) -> None:
    store, spy = ann_store

    def failing(op: Any, fact_id: str, fact: Any) -> None:
        raise RuntimeError("vector hook down")

    store.add_hook(failing)
    with pytest.raises(ms.HookError):
        store.commit(Fact(id="ghost", type="doc", payload={"text": "alpha"}))
    with pytest.raises(ms.HookError):
        store.commit_many([Fact(id=f"ghost{i}", type="doc", payload={"text": f"g{i}"}) for i in range(3)])
    assert count_rows(pgvector_url, prefix, "vectors") == 200
    found = [f for f, _ in hits(store.search("alpha", limit=10))] + [f for f, _ in hits(store.search("g1", limit=10))]
    assert not [f for f in found if f.startswith("ghost")]
    assert spy.answered == 2


def test_rollback_restores_the_previous_vector(pgvector_url: str, prefix: str, ann_store: Any) -> None:
    store, spy = ann_store
    fid = store.commit(Fact(type="doc", payload={"text": "alpha"}), session_id="s")
    store.update(fid, {"payload": {"text": "beta"}})
    assert hits(store.search("beta", limit=1))[0] == (fid, pytest.approx(1.0))
    assert fid not in [f for f, s in hits(store.search("alpha", limit=10)) if s > 0.999]
    assert store.rollback("s", steps=1) == 1
    assert hits(store.search("alpha", limit=1))[0] == (fid, pytest.approx(1.0))
    assert fid not in [f for f, s in hits(store.search("beta", limit=10)) if s > 0.999]
    assert store.rollback("s", steps=1) == 1  # its creation: the fact and its vector go
    assert fid not in [f for f, _ in hits(store.search("alpha", limit=10))]
    assert count_rows(pgvector_url, prefix, "vectors") == 200
    assert spy.answered == 5 and spy.declined == 0


def test_discard_session_expiry_and_sweep_remove_vectors(pgvector_url: str, prefix: str, ann_store: Any) -> None:
    store, spy = ann_store
    session = [store.commit(Fact(type="doc", payload={"text": f"session {i}"}), session_id="chat") for i in range(3)]
    old = store.commit(Fact(type="doc", payload={"text": "expired"}), expires_at=PAST)
    gone = store.commit(Fact(type="doc", payload={"text": "delete me"}))
    assert hits(store.search("session 1", limit=1))[0] == (session[1], pytest.approx(1.0))
    assert old not in [f for f, _ in hits(store.search("expired", limit=10))]  # expired: never found, unswept
    store.delete(None, gone)
    assert store.discard_session("chat") == 3
    assert store.sweep() == 1
    assert count_rows(pgvector_url, prefix, "vectors") == 200
    for text in ("session 0", "session 1", "session 2", "expired", "delete me"):
        assert all(f.startswith("filler") for f, _ in hits(store.search(text, limit=10)))
    assert store.rollback("chat", steps=1) == 1  # the discard undone: the session's vectors are back
    assert hits(store.search("session 2", limit=1))[0] == (session[2], pytest.approx(1.0))
    assert spy.answered >= 8 and spy.declined == 0


def test_migration_up_and_down_on_a_pgvector_server(pgvector_url: str, prefix: str) -> None:
    from tests.test_migrations import autogenerate_check

    assert ms.migrate(pgvector_url, table_prefix=prefix) == "ms_0008_pgvector"
    assert function_exists(pgvector_url, prefix)
    embed = TableEmbedder()
    with ms.SQLStorage(pgvector_url, table_prefix=prefix, vector_index=index_for(embed)) as st:
        ms.MemoryStore(st).commit(Fact(id="a", type="doc", payload={"text": "alpha"}))
    assert ann_indexes(pgvector_url, prefix) == [f"ix_{prefix}_vectors_ann_{DIM}"]
    autogenerate_check(pgvector_url, prefix)  # the run-time HNSW index is not a difference from the models
    migrations.downgrade(pgvector_url, PREVIOUS, table_prefix=prefix)
    assert not function_exists(pgvector_url, prefix) and ann_indexes(pgvector_url, prefix) == []
    assert count_rows(pgvector_url, prefix, "vectors") == 1  # the packed vectors are untouched
    assert ms.migrate(pgvector_url, table_prefix=prefix) == "ms_0008_pgvector"
    with ms.SQLStorage(pgvector_url, table_prefix=prefix, vector_index=index_for(embed)) as st:
        assert hits(ms.MemoryStore(st).search("alpha", limit=1)) == [("a", pytest.approx(1.0))]
    assert ann_indexes(pgvector_url, prefix) == [f"ix_{prefix}_vectors_ann_{DIM}"]  # rebuilt over the rows
    with sa.create_engine(pgvector_url).begin() as conn:
        conn.execute(sa.text(f"DELETE FROM {prefix}_vectors"))  # ms_0006 refuses to drop stored embeddings
    migrations.downgrade(pgvector_url, "base", table_prefix=prefix)
    assert not function_exists(pgvector_url, prefix)


@pytest.fixture
def plain_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """The suite's PostgreSQL (``MEMSTATE_SQL_TEST_POSTGRES_URL`` or its private server) without pgvector."""
    url = os.environ.get("MEMSTATE_SQL_TEST_POSTGRES_URL") or database_url("postgresql", tmp_path_factory)
    with sa.create_engine(url).connect() as conn:
        if pgvector.available(conn):
            pytest.skip("this PostgreSQL has pgvector: the no-op path needs a server without it")
    name = "t" + uuid.uuid4().hex[:10]
    yield url, name
    drop_prefix(url, name)


def test_migration_is_a_no_op_without_pgvector(plain_postgres: tuple[str, str], spied: list[Spy]) -> None:
    url, prefix = plain_postgres
    assert ms.migrate(url, table_prefix=prefix) == "ms_0008_pgvector"
    assert not function_exists(url, prefix)
    embed = TableEmbedder()
    docs = make_corpus(embed, 30)
    with ms.SQLStorage(url, table_prefix=prefix, vector_index=index_for(embed)) as st:
        load(ms.MemoryStore(st), docs)
        spy = Spy(st)
        spied.append(spy)
        assert_same(hits(ms.MemoryStore(st).search("query 3", limit=5)), reference(docs, embed, "query 3", 5))
        assert spy.declined == 1 and spy.answered == 0  # no index: the exact scan answered
    assert ann_indexes(url, prefix) == []
    migrations.downgrade(url, PREVIOUS, table_prefix=prefix)
    assert migrations.current_revision(url, table_prefix=prefix) == PREVIOUS
    assert ms.migrate(url, table_prefix=prefix) == "ms_0008_pgvector"
