"""Filter operators, validation, and result control (order, limit/offset, count, streaming)."""

from __future__ import annotations

import asyncio
import math
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

import memstate_sql as ms
from memstate_sql import Fact, ValidationFailed, jsondoc, reference
from memstate_sql import filters as flt

TS = datetime(2026, 1, 1, tzinfo=timezone.utc)


def seed(store: Any) -> list[str]:
    payloads: list[dict[str, Any]] = [
        {"n": 3, "s": "b", "tags": ["x", "y"], "deep": {"k": 1}},
        {"n": 10, "s": "B", "tags": ["y"], "a.b": 1},
        {"n": 9.5, "s": "a ", "tags": [["x"]], "deep": {"k": "1"}},
        {"n": True, "s": None},
        {"s": "é", "tags": "x"},
        {"n": "10", "deep": {"k": None}},
    ]
    ids = []
    for i, payload in enumerate(payloads):
        ids.append(
            store.commit(
                Fact(
                    id=f"f{i}", type="t", payload=payload, source=["a", None][i % 2], ts=TS + timedelta(seconds=i % 3)
                ),
                session_id=["s1", "s2", None][i % 3],
            )
        )
    return ids


def ids(docs: list[dict[str, Any]]) -> list[str]:
    return [d["id"] for d in docs]


@pytest.mark.parametrize(
    "flt_,expected",
    [
        ({"payload.n": {"$gt": 9}}, ["f1", "f2"]),  # numbers compare as numbers: 9 < 10, "10" is a string
        ({"payload.n": {"$gte": 3, "$lt": 10}}, ["f0", "f2"]),
        ({"payload.n": {"$lte": "2"}}, ["f5"]),  # "10" < "2" by code point
        ({"payload.n": {"$ne": 3}}, ["f1", "f2", "f3", "f4", "f5"]),
        ({"payload.n": {"$nin": [3, 10]}}, ["f2", "f3", "f4", "f5"]),
        ({"payload.n": {"$in": [True, "10"]}}, ["f3", "f5"]),
        ({"payload.s": {"$exists": True}}, ["f0", "f1", "f2", "f3", "f4"]),
        ({"payload.s": {"$exists": False}}, ["f5"]),
        ({"payload.s": {"$gt": "a"}}, ["f0", "f2", "f4"]),  # 'B' < 'a' < 'a ' < 'b' < 'é'
        ({"payload.tags": {"$contains": "x"}}, ["f0"]),  # not [["x"]], not the string "x"
        ({"payload.tags": {"$contains": ["x"]}}, ["f2"]),
        ({"payload.deep.k": 1}, ["f0"]),
        ({"payload.deep.k": None}, ["f5"]),
        ({"payload.a\\.b": 1}, ["f1"]),
        ({("payload", "a.b"): 1}, ["f1"]),
        ({"payload.n": {"$not": {"$gt": 5}}}, ["f0", "f3", "f4", "f5"]),
        ({"$or": [{"payload.n": 3}, {"payload.s": "é"}]}, ["f0", "f4"]),
        ({"$and": [{"payload.tags": {"$exists": True}}, {"$not": {"payload.tags": {"$contains": "y"}}}]}, ["f2", "f4"]),
        ({"source": None}, ["f1", "f3", "f5"]),
        ({"source": {"$ne": "a"}}, ["f1", "f3", "f5"]),
        ({"id": {"$gte": "f4"}}, ["f4", "f5"]),
        ({"ts": {"$gt": TS}}, ["f1", "f2", "f4", "f5"]),
        ({"ts": {"$lte": (TS + timedelta(seconds=1)).isoformat()}}, ["f0", "f1", "f3", "f4"]),
        ({"session_id": {"$in": ["s1", None]}}, ["f0", "f2", "f3", "f5"]),
        ({"$or": []}, []),
        ({}, ["f0", "f1", "f2", "f3", "f4", "f5"]),
    ],
)
def test_operators(store: Any, flt_: dict[Any, Any], expected: list[str]) -> None:
    seed(store)
    assert sorted(ids(store.query("t", flt_))) == expected
    assert store.count("t", flt_) == len(expected)
    docs = store.query("t")
    assert sorted(ids(reference.run(docs, flt_))) == expected


@pytest.mark.parametrize(
    "flt_,message",
    [
        ({"payload.n": {"$gt": True}}, "payload.n"),
        ({"payload.n": {"$lt": None}}, "payload.n"),
        ({"payload.n": {"$gte": [1]}}, "payload.n"),
        ({"payload.n": {"$lte": {"a": 1}}}, "payload.n"),
        ({"payload.n": {"$regex": "x"}}, "unknown operator"),
        ({"payload.n": {"$gt": 1, "x": 2}}, "mixed"),
        ({"payload.n": {"$in": 3}}, "takes a list"),
        ({"payload.n": {"$exists": 1}}, "true or false"),
        ({"payload.n": {"$eq": float("nan")}}, "payload.n"),
        ({"payload.n": 2**53}, "2\\*\\*53"),
        ({"payload.n": "a\x00b"}, "U\\+0000"),
        ({"payload.n": {"$not": 3}}, "\\$not"),
        ({"$nor": []}, "unknown logical operator"),
        ({"$and": {"a": 1}}, "list"),
        ({"nope": 1}, "nope"),
        ({"type.x": 1}, "type.x"),
        ({"payload..x": 1}, "empty segment"),
        ({"payload.a\\x": 1}, "must be followed"),
        ({"type": {"$gt": 3}}, "takes a string"),
        ({"ts": {"$gt": "yesterday"}}, "ISO 8601"),
        ({"ts": {"$contains": 1}}, "\\$contains"),
        ({"source": {"$contains": "a"}}, "\\$contains"),
    ],
)
def test_invalid_filters_raise_validation_failed_naming_the_key(store: Any, flt_: Any, message: str) -> None:
    with pytest.raises(ValidationFailed, match=message):
        store.query("t", flt_)
    with pytest.raises(ValidationFailed, match=message):
        store.count("t", flt_)


def test_filters_must_be_a_mapping(store: Any) -> None:
    with pytest.raises(ValidationFailed, match="mapping"):
        store.query("t", [("payload.a", 1)])


def test_order_limit_offset(store: Any) -> None:
    seed(store)
    docs = store.query("t")
    assert ids(store.query("t", order_by="payload.n")) == ["f4", "f3", "f0", "f2", "f1", "f5"]
    assert ids(store.query("t", order_by="-payload.n")) == ["f5", "f1", "f2", "f0", "f3", "f4"]
    assert ids(store.query("t", order_by="payload.s")) == ["f5", "f3", "f1", "f2", "f0", "f4"]
    # ts has ties (f0,f3 / f1,f4 / f2,f5): broken by id, in the first entry's direction
    assert ids(store.query("t", order_by="-ts")) == ["f5", "f2", "f4", "f1", "f3", "f0"]
    assert ids(store.query("t", order_by=["source", "-id"])) == ["f5", "f3", "f1", "f4", "f2", "f0"]
    assert ids(store.query("t", order_by="payload.n", limit=2, offset=1)) == ["f3", "f0"]
    assert ids(store.query("t", order_by="payload.n", offset=5)) == ["f5"]
    assert ids(store.query("t", limit=0)) == []
    for order in ("payload.n", "-payload.s", ["-source", "payload.deep.k"], "session_id", ["type", "-ts"]):
        assert ids(store.query("t", order_by=order)) == ids(reference.run(docs, order_by=order)), order
    # the default order (ts, then id) and the existing signatures still work
    assert ids(store.query("t")) == ["f0", "f3", "f1", "f4", "f2", "f5"]
    assert ids(store.query("t", {"payload.n": {"$exists": True}}, "s1")) == ["f0", "f3"]


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"limit": -1}, "limit"),
        ({"limit": True}, "limit"),
        ({"offset": -2}, "offset"),
        ({"offset": 1.5}, "offset"),
        ({"order_by": "payload"}, "payload path"),
        ({"order_by": "color"}, "color"),
        ({"order_by": 3}, "order_by"),
        ({"order_by": ["ts", 5]}, "order_by"),
    ],
)
def test_invalid_result_control(store: Any, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationFailed, match=message):
        store.query("t", **kwargs)


def test_count_with_session(store: Any) -> None:
    seed(store)
    assert store.count() == 6
    assert store.count("t", session_id="s2") == 2
    assert store.count("other") == 0
    assert store.count("t", {"session_id": "s1"}, session_id="s2") == 0  # both conditions hold


def test_iter_query_streams_in_batches(storage: ms.SQLStorage, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ms.MemoryStore(storage)
    for i in range(23):
        store.commit(Fact(id=f"i{i:02d}", type="t", payload={"n": i % 5, "s": f"{i % 3}"}, ts=TS))
    pages: list[int] = []
    real = storage._rows  # the one read per batch

    def spy(*args: Any) -> Any:
        rows = real(*args)
        pages.append(len(rows))
        return rows

    monkeypatch.setattr(storage, "_rows", spy)
    stream = store.iter_query("t", {"payload.n": {"$lt": 4}}, order_by=["-payload.n", "payload.s"], batch_size=4)
    assert pages == []  # lazy
    got = ids(list(stream))
    assert got == ids(store.query("t", {"payload.n": {"$lt": 4}}, order_by=["-payload.n", "payload.s"]))
    assert len(got) == 19 and len(set(got)) == 19
    assert pages == [4, 4, 4, 4, 3]  # a page shorter than the batch is the last: no read of an empty one
    pages.clear()
    exact = ids(store.iter_query("t", {"payload.n": {"$lt": 3}}, batch_size=5))  # 15 rows: 3 full pages
    assert exact == ids(store.query("t", {"payload.n": {"$lt": 3}})) and len(exact) == 15
    assert pages == [5, 5, 5, 0]  # a full page may have followers: the next read says there are none
    assert ids(storage.iter_query("t", batch_size=7)) == ids(store.query("t"))
    with pytest.raises(ValidationFailed, match="batch_size"):
        store.iter_query("t", batch_size=0)


def test_iter_query_sees_a_stable_order_while_rows_change(storage: ms.SQLStorage) -> None:
    store = ms.MemoryStore(storage)
    for i in range(10):
        store.commit(Fact(id=f"i{i}", type="t", payload={"n": i}, ts=TS))
    seen = []
    for doc in store.iter_query("t", order_by="payload.n", batch_size=3):
        seen.append(doc["id"])
        if doc["id"] == "i4":
            store.delete(None, "i1")  # already read
            store.commit(Fact(id="i99", type="t", payload={"n": 99}, ts=TS))  # after the cursor
    assert seen == [f"i{i}" for i in range(10)] + ["i99"]


def test_async_result_control(db_url: str, prefix: str) -> None:
    async def main() -> None:
        storage = ms.AsyncSQLStorage(db_url, table_prefix=prefix)
        store = ms.AsyncMemoryStore(storage)
        try:
            for i in range(7):
                await store.commit(Fact(id=f"a{i}", type="t", payload={"n": 6 - i}, ts=TS), session_id="s")
            assert ids(await store.query("t", order_by="payload.n", limit=3)) == ["a6", "a5", "a4"]
            assert await store.count("t", {"payload.n": {"$gte": 2}}) == 5
            assert [d["id"] async for d in store.iter_query("t", session_id="s", batch_size=2)] == [
                f"a{i}" for i in range(7)
            ]
            assert ids(await storage.query("t", {"payload.n": {"$lt": 2}}, order_by="-payload.n")) == ["a5", "a6"]
            assert await storage.count("t") == 7
            assert [d["id"] async for d in storage.iter_query("t", order_by="-id", batch_size=3)] == [
                f"a{i}" for i in reversed(range(7))
            ]
            with pytest.raises(ValidationFailed):
                store.iter_query("t", {"payload.n": {"$gt": None}})
        finally:
            await storage.close()

    asyncio.run(main())


# ---------------------------------------------------------------------------- write side


@pytest.mark.parametrize(
    "payload,message",
    [
        ({"x": float("nan")}, "NaN"),
        ({"x": math.inf}, "Infinity"),
        ({"x": 2**53}, "2\\*\\*53"),
        ({"x": -(2**53)}, "2\\*\\*53"),
        ({"x": "a\x00"}, "U\\+0000"),
        ({"a\x00": 1}, "U\\+0000"),
        ({"x": {1: 2}}, "keys must be strings"),
        ({"x": {1, 2}}, "not a JSON value"),
    ],
)
def test_payloads_the_contract_cannot_compare_are_rejected(store: Any, payload: Any, message: str) -> None:
    with pytest.raises(ValidationFailed, match=message):
        store.commit(Fact(type="t", payload=payload))
    assert store.count() == 0


def test_payload_depth_limit(store: Any) -> None:
    deep: Any = 1
    for _ in range(jsondoc.MAX_DEPTH + 1):
        deep = {"d": deep}
    with pytest.raises(ValidationFailed, match="deeper"):
        store.commit(Fact(type="t", payload=deep))


def test_canonical_serialization() -> None:
    assert jsondoc.dumps({"é": "ü", "n": [1, 2.5]}) == '{"é":"ü","n":[1,2.5]}'
    assert jsondoc.check_value(2**53 - 1) == 2**53 - 1
    with pytest.raises(ValueError):
        jsondoc.dumps(float("nan"))


def test_extreme_safe_integers_compare_exactly(store: Any) -> None:
    big = 2**53 - 1
    store.commit(Fact(id="big", type="t", payload={"n": big}))
    store.commit(Fact(id="less", type="t", payload={"n": big - 1}))
    assert ids(store.query("t", {"payload.n": big})) == ["big"]
    assert ids(store.query("t", {"payload.n": {"$gt": big - 1}})) == ["big"]
    assert ids(store.query("t", order_by="-payload.n")) == ["big", "less"]


def test_parse_path_forms() -> None:
    assert flt.parse_path("payload.a\\.b.c") == ("payload", "a.b", "c")
    assert flt.parse_path("payload.a\\\\b") == ("payload", "a\\b")
    assert flt.parse_path(("payload", "")) == ("payload", "")


def test_compiled_filters_are_cached_per_shape_not_per_value() -> None:
    import sqlalchemy as sa

    facts = ms.models_for("cachekey").metadata.tables["cachekey_facts"]

    def key(f: dict[Any, Any]) -> Any:
        where = flt.compile_filter(flt.parse(f), facts.c.payload, dict(facts.c.items()))
        cache_key = sa.select(facts.c.id).where(where)._generate_cache_key()
        return None if cache_key is None else cache_key.key

    assert key({"payload.a": 1}) is not None
    assert key({"payload.a": 1}) == key({"payload.a": 7})
    assert key({"payload.a": 1.5}) == key({"payload.a": -2.5})
    assert key({"payload.a": {"x": [1, "s"]}}) == key({"payload.a": {"x": [7, "t"]}})
    assert key({"payload.a": "1"}) != key({"payload.a": 1})
    assert key({"payload.a": True}) != key({"payload.a": False})
    assert key({"payload.a": {"x": 1}}) != key({"payload.a": {"y": 1}})
    assert key({"payload.a": [1]}) != key({"payload.a": [1, 1]})
    assert key({"payload.a": 1}) != key({"payload.b": 1})
    assert key({"payload.a": {"$gt": 1}}) != key({"payload.a": {"$lt": 1}})


def test_documents_are_canonical_whatever_the_engine_serializer(db_url: str, prefix: str) -> None:
    """An engine configured with an ASCII-escaping serializer still stores canonical JSON, so filters on
    non-ASCII keys and strings (compared on stored text by SQLite 3.40 and MariaDB) keep working."""
    import json

    import sqlalchemy as sa

    engine = sa.create_engine(db_url, json_serializer=lambda v: json.dumps(v, ensure_ascii=True))
    storage = ms.SQLStorage(engine, table_prefix=prefix)
    try:
        store = ms.MemoryStore(storage)
        store.commit(Fact(id="u", type="t", payload={"clé": "été", "list": ["ü", {"ñ": 1}]}))
        assert ids(store.query("t", {"payload.clé": "été"})) == ["u"]
        assert ids(store.query("t", {"payload.list": ["ü", {"ñ": 1}]})) == ["u"]
        assert ids(store.query("t", {"payload.list": {"$contains": {"ñ": 1}}})) == ["u"]
        with engine.connect() as conn:
            stored = conn.exec_driver_sql(f"SELECT payload FROM {prefix}_facts").scalar_one()
        assert "été" in (stored if isinstance(stored, str) else json.dumps(stored, ensure_ascii=False))
    finally:
        storage.close()
        engine.dispose()


def test_keys_with_quotes_on_every_database(store: Any) -> None:
    """SQLite < 3.45 cannot spell such keys in a JSON path: its compiler finds them with json_each."""
    store.commit(Fact(id="q", type="t", payload={'a"b': {'c"': [1, {'d"': "x"}]}, "n": {'e"': 5}}))
    store.commit(Fact(id="r", type="t", payload={'a"b': {'c"': 2}, "n": {'e"': "5"}}))
    assert ids(store.query("t", {'payload.a"b.c"': {"$contains": {'d"': "x"}}})) == ["q"]
    assert ids(store.query("t", {'payload.a"b.c"': 2})) == ["r"]
    assert ids(store.query("t", {'payload.n.e"': {"$gte": 5}})) == ["q"]
    assert ids(store.query("t", {"payload.n": {'e"': "5"}})) == ["r"]
    assert ids(store.query("t", {'payload.a"b.x': {"$exists": False}}, order_by='-payload.n.e"')) == ["r", "q"]


def test_a_stream_page_seeks_the_index_to_its_start(tmp_path: Any) -> None:
    """Each `iter_query` page after the first starts at the previous page's last sort key: on SQLite the
    (namespace, ts) index is searched from there (``ts>?``), not scanned from the namespace's first row,
    which made streaming n facts read O(n^2) index entries."""
    import sqlalchemy as sa

    from memstate_sql.validation import query_spec

    storage = ms.SQLStorage(f"sqlite:///{tmp_path / 'seek.db'}")
    store = ms.MemoryStore(storage)
    for i in range(3):
        store.commit(ms.Fact(type="note", payload={"i": i}))
    sent: list[tuple[str, Any]] = []
    sa.event.listen(storage.engine, "before_cursor_execute", lambda c, cur, sql, params, *a: sent.append((sql, params)))
    assert [d["payload"]["i"] for d in storage.stream(query_spec("note", None, None), batch_size=1)] == [0, 1, 2]
    paged = [(sql, params) for sql, params in sent if " > ?" in sql and "ORDER BY" in sql]
    assert paged, sent
    with storage.engine.connect() as conn:
        plan = " ".join(
            str(row[-1]) for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + paged[-1][0], paged[-1][1])
        )
    assert "ts>?" in plan, plan
    storage.close()
