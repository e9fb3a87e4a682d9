"""MemStateStore / AsyncMemStateStore agree with LangGraph's InMemoryStore on generated operation sequences.

Every example works under a root label of its own, so one database serves all examples. Where InMemoryStore's
behaviour is an artefact of its dicts, the comparison says so:

* search order is insertion order there and (namespace, key) here: results are compared as sets, and a
  window (limit/offset) by its size;
* InMemoryStore lists namespaces that have no items left (deleted, or only read): the expectation is computed
  from its non-empty namespaces with its own matching function.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("langgraph")

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langgraph.store.base import MatchCondition
from langgraph.store.memory import InMemoryStore, _does_match

import memstate_sql as ms
from memstate_sql.integrations.langgraph import AsyncMemStateStore, MemStateStore

LABELS = ["a", "b", "ab", "a-b", "z", "é", "\x01", "a\x01", "*x"]
KEYS = ["k1", "k2", "k3", "k.4"]

labels = st.sampled_from(LABELS)
namespaces = st.lists(labels, min_size=1, max_size=3).map(tuple)
numbers = st.one_of(st.integers(-3, 3), st.sampled_from([0.0, 1.0, 1.5, -2.5]))
values = st.fixed_dictionaries(
    {"n": numbers, "s": st.sampled_from(["x", "y", "", "é"])},
    optional={
        "t": st.one_of(st.none(), st.booleans()),
        "m": st.fixed_dictionaries({"k": st.integers(0, 2)}, optional={"j": st.sampled_from(["p", "q"])}),
        "l": st.lists(st.integers(0, 2), max_size=2),
    },
)
filters = st.sets(st.sampled_from(["n", "s", "t", "m", "l"]), max_size=2).flatmap(
    lambda keys: st.fixed_dictionaries({k: FILTER_VALUES[k] for k in sorted(keys)}),
)
FILTER_VALUES: dict[str, Any] = {
    "n": st.one_of(
        numbers,
        st.booleans(),
        st.dictionaries(st.sampled_from(["$gt", "$gte", "$lt", "$lte", "$eq", "$ne"]), numbers, min_size=1),
    ),
    "s": st.one_of(st.sampled_from(["x", "y", "é"]), st.fixed_dictionaries({"$ne": st.sampled_from(["x", "y"])})),
    "t": st.one_of(st.none(), st.booleans(), st.fixed_dictionaries({"$ne": st.one_of(st.none(), st.booleans())})),
    "m": st.one_of(st.fixed_dictionaries({"k": st.integers(0, 2)}), st.fixed_dictionaries({"j": st.just("p")})),
    "l": st.lists(st.integers(0, 2), max_size=2),
}
paths = st.lists(st.one_of(labels, st.just("*")), min_size=0, max_size=2).map(tuple)
suffixes = st.lists(st.one_of(labels, st.just("*")), min_size=1, max_size=2).map(tuple)

operations = st.one_of(
    st.tuples(st.just("put"), namespaces, st.sampled_from(KEYS), values),
    st.tuples(st.just("delete"), namespaces, st.sampled_from(KEYS)),
    st.tuples(st.just("get"), namespaces, st.sampled_from(KEYS)),
    st.tuples(
        st.just("search"), st.lists(labels, max_size=2).map(tuple), filters, st.integers(0, 4), st.integers(0, 3)
    ),
    st.tuples(
        st.just("list"),
        paths,
        st.one_of(st.none(), suffixes),
        st.one_of(st.none(), st.integers(1, 3)),
        st.integers(1, 5),
        st.integers(0, 2),
    ),
)


def expected_namespaces(
    reference: InMemoryStore,
    conditions: list[MatchCondition],
    max_depth: int | None,
    limit: int,
    offset: int,
) -> list[tuple[str, ...]]:
    live = [ns for ns, items in reference._data.items() if items]
    matched = [ns for ns in live if all(_does_match(c, ns) for c in conditions)]
    found = sorted({ns[:max_depth] for ns in matched} if max_depth is not None else set(matched))
    return found[offset : offset + limit]


def check(store: Any, ops: list[tuple[Any, ...]]) -> None:
    root = "r" + uuid.uuid4().hex[:12]
    reference = InMemoryStore()
    for op in ops:
        kind = op[0]
        if kind == "put":
            _, ns, key, value = op
            store.put((root, *ns), key, value)
            reference.put((root, *ns), key, value)
        elif kind == "delete":
            _, ns, key = op
            store.delete((root, *ns), key)
            reference.delete((root, *ns), key)
        elif kind == "get":
            _, ns, key = op
            got, want = store.get((root, *ns), key), reference.get((root, *ns), key)
            assert (got is None) == (want is None), op
            if got is not None:
                assert (got.namespace, got.key, got.value) == (want.namespace, want.key, want.value), op
        elif kind == "search":
            _, prefix, flt, limit, offset = op
            everything = store.search((root, *prefix), filter=flt, limit=1000)
            wanted = reference.search((root, *prefix), filter=flt, limit=1000)

            def seen(items: list[Any]) -> list[Any]:
                return sorted((i.namespace, i.key, json.dumps(i.value, sort_keys=True)) for i in items)

            assert seen(everything) == seen(wanted), op
            window = store.search((root, *prefix), filter=flt, limit=limit, offset=offset)
            assert len(window) == max(0, min(limit, len(wanted) - offset)), op
            assert [(i.namespace, i.key) for i in window] == [
                (i.namespace, i.key) for i in everything[offset : offset + limit]
            ]
        else:
            _, prefix, suffix, max_depth, limit, offset = op
            full_prefix = (root, *prefix)
            depth = None if max_depth is None else max_depth + 1  # the root label is one level more
            got = store.list_namespaces(prefix=full_prefix, suffix=suffix, max_depth=depth, limit=limit, offset=offset)
            conditions = [MatchCondition("prefix", full_prefix)]
            if suffix:
                conditions.append(MatchCondition("suffix", suffix))
            want = expected_namespaces(reference, conditions, depth, limit, offset)
            assert got == want, op


@pytest.fixture
def lg_store(mode: str, db_url: str, prefix: str) -> Iterator[Any]:
    if mode == "sync":
        storage = ms.SQLStorage(db_url, table_prefix=prefix)
        yield MemStateStore(storage)
        storage.close()
        return
    loop = asyncio.new_event_loop()
    astorage = ms.AsyncSQLStorage(db_url, table_prefix=prefix)
    store = AsyncMemStateStore(astorage)

    class Driver:
        def __getattr__(self, name: str) -> Any:
            method = getattr(store, "a" + name)
            return lambda *a, **k: loop.run_until_complete(method(*a, **k))

    yield Driver()
    loop.run_until_complete(astorage.close())
    loop.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(operations, min_size=1, max_size=30))
def test_store_agrees_with_in_memory_store(lg_store: Any, ops: list[tuple[Any, ...]]) -> None:
    check(lg_store, ops)


def test_namespace_order_and_wildcards(lg_store: Any) -> None:
    """Tuple order (not the order of joined strings), U+0001 in labels, wildcards at both ends."""
    names = [("a", "b"), ("a-b",), ("a",), ("a", "b", "c"), ("a\x01",), ("a\x01", "x"), ("b", "b"), ("aa",)]
    reference = InMemoryStore()
    for ns in names:
        lg_store.put(ns, "k", {"v": 1})
        reference.put(ns, "k", {"v": 1})
    assert lg_store.list_namespaces() == reference.list_namespaces() == sorted(names)
    for kwargs in [
        {"prefix": ("a",)},
        {"prefix": ("a", "*")},
        {"prefix": ("*", "b")},
        {"suffix": ("b",)},
        {"suffix": ("*", "b")},
        {"prefix": ("a",), "max_depth": 1},
        {"max_depth": 1},
        {"max_depth": 2, "limit": 3, "offset": 1},
        {"prefix": ("a\x01",)},
    ]:
        assert lg_store.list_namespaces(**kwargs) == reference.list_namespaces(**kwargs), kwargs
    assert {(i.namespace, i.key) for i in lg_store.search(("a",))} == {
        (i.namespace, i.key) for i in reference.search(("a",))
    }
