"""Differential test: every database returns exactly the ids (and the order) of the reference evaluator.

Hypothesis generates small sets of documents from a pool of awkward values
and keys, and filters over them; each example is loaded into the database
under test and every filter's result is compared with `memstate_sql.reference`.

SQLite 3.40 (what CI runs) cannot address object keys containing ``"`` in a
JSON path; the SQLite compiler finds such keys with ``json_each`` instead, and
the pool has such keys so that this fallback is checked too.

Examples per database: ``MEMSTATE_SQL_DIFF_EXAMPLES`` (default 500; each
example checks several filters and one ordering).
"""

from __future__ import annotations

import os
import unicodedata
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete

import memstate_sql as ms
from memstate_sql import filters as flt
from memstate_sql import jsondoc, reference
from memstate_sql.records import FactState
from memstate_sql.repository import Repository

EXAMPLES = int(os.environ.get("MEMSTATE_SQL_DIFF_EXAMPLES", "500"))
NFC_E = unicodedata.normalize("NFC", "é")
NFD_E = unicodedata.normalize("NFD", "é")
assert NFC_E != NFD_E

SCALARS: list[Any] = [
    True, False, 0, 1, 1.0, -0.0, 2.5, -1, 10, 9, 2**53 - 1, -(2**53 - 1), 1e-7,
    "1", "10", "9", "true", "false", "null", "", "a", "a ", "A", "b", NFC_E, NFD_E, "e",
    'q"uote', "back\\slash", "dot.ted", "😀", "ß", "\t", None,
]  # fmt: skip
CONTAINERS: list[Any] = [
    [], {}, [1], [1.0], [[1]], [1, "1"], ["a", "b"], [True], [None], [{"a": 1}], [[1], [2]],
    {"a": 1, "b": 2}, {"b": 2, "a": 1}, {"a": None}, {"a": [1]}, {"a": {"b": 1}},
]  # fmt: skip
KEYS = ["a", "b", "A", "a.b", NFC_E, NFD_E, "😀", " ", "0", "x y", 'q"', "$x"]

values = st.sampled_from(SCALARS + CONTAINERS)
keys = st.sampled_from(KEYS)


def payloads() -> st.SearchStrategy[dict[str, Any]]:
    inner = st.dictionaries(keys, values, max_size=3)
    return st.dictionaries(keys, st.one_of(values, values, inner), max_size=5)


TS0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
envelopes = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["t", "T", "t "]),
        "session_id": st.sampled_from([None, "s1", "S1"]),
        "source": st.sampled_from([None, "a", NFC_E, NFD_E]),
        "ts": st.sampled_from([TS0 + timedelta(seconds=s) for s in (0, 1, 60)] + [TS0 + timedelta(microseconds=1)]),
    }
)
documents = st.lists(st.tuples(envelopes, payloads()), min_size=1, max_size=8)


def path_strategy() -> st.SearchStrategy[Any]:
    segs = st.lists(keys, min_size=1, max_size=2)

    def spell(parts: list[str]) -> Any:
        return ("payload", *parts)

    def dotted(parts: list[str]) -> str:
        return ".".join(["payload", *(p.replace("\\", "\\\\").replace(".", "\\.") for p in parts)])

    return st.one_of(segs.map(spell), segs.map(dotted))


range_operands = st.sampled_from([s for s in SCALARS if flt.kind_of(s) in ("number", "string")])


@st.composite
def conditions(draw: st.DrawFn) -> dict[Any, Any]:
    path = draw(path_strategy())
    op = draw(st.sampled_from(["plain", "$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists",
                               "$contains", "$not"]))  # fmt: skip
    if op == "plain":
        value = draw(values)
        if isinstance(value, dict) and any(k.startswith("$") for k in value):
            value = {"$eq": value}
        return {path: value}
    if op in ("$gt", "$gte", "$lt", "$lte"):
        return {path: {op: draw(range_operands)}}
    if op in ("$in", "$nin"):
        return {path: {op: draw(st.lists(values, max_size=3))}}
    if op == "$exists":
        return {path: {op: draw(st.booleans())}}
    if op == "$not":
        return {path: {"$not": {draw(st.sampled_from(["$gt", "$lte"])): draw(range_operands)}}}
    return {path: {op: draw(values)}}


@st.composite
def envelope_conditions(draw: st.DrawFn) -> dict[Any, Any]:
    field = draw(st.sampled_from(["type", "session_id", "source", "id", "ts"]))
    op = draw(st.sampled_from(["$eq", "$ne", "$gt", "$lte", "$in", "$nin"]))
    if field == "ts":
        pool: list[Any] = [TS0, TS0 + timedelta(seconds=1), (TS0 + timedelta(microseconds=1)).isoformat()]
    else:
        pool = ["t", "T", "t ", "s1", "S1", "a", NFC_E, NFD_E, "d1", "d3"]
        if op in ("$eq", "$ne", "$in", "$nin"):
            pool += [None, 1]
    if op in ("$in", "$nin"):
        return {field: {op: draw(st.lists(st.sampled_from(pool), max_size=3))}}
    if op in ("$gt", "$lte") and field != "ts":
        pool = [p for p in pool if isinstance(p, str)]
    if op in ("$gt", "$lte") and field == "ts":
        pool = [p for p in pool if p is not None]
    return {field: {op: draw(st.sampled_from(pool))}}


filters = st.recursive(
    st.one_of(conditions(), conditions(), envelope_conditions()),
    lambda children: st.one_of(
        st.lists(children, min_size=1, max_size=3).map(lambda items: {"$and": items}),
        st.lists(children, min_size=0, max_size=3).map(lambda items: {"$or": items}),
        children.map(lambda item: {"$not": item}),
        st.tuples(children, children).map(lambda pair: {**pair[0], **pair[1]}),
    ),
    max_leaves=4,
)
order_paths = st.one_of(path_strategy(), st.sampled_from(["ts", "type", "session_id", "source", "id"]))
orders = st.lists(
    st.tuples(st.booleans(), order_paths).map(lambda t: ("-" + t[1]) if t[0] and isinstance(t[1], str) else t[1]),
    max_size=2,
)


def load(storage: ms.SQLStorage, docs: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[dict[str, Any]]:
    states = [
        FactState(id=f"d{i}", payload=jsondoc.check_payload(payload)[0], **env) for i, (env, payload) in enumerate(docs)
    ]

    def work(repo: Repository) -> None:
        repo.conn.execute(delete(repo.facts))
        for state in states:
            repo.insert(state)

    storage.transaction(work, name="load")
    return [s.doc() for s in states]


def check(storage: ms.SQLStorage, db: str, docs: list[dict[str, Any]], flt_: dict[Any, Any], order: Any) -> None:
    expected = [d["id"] for d in reference.run(docs, flt_, order_by=order or None)]
    got = [d["id"] for d in storage.query(None, flt_, order_by=order or None)]
    if order:
        assert got == expected, f"filter {flt_!r} order_by {order!r}"
    else:
        assert sorted(got) == sorted(expected), f"filter {flt_!r}"


def test_databases_agree_with_the_reference(db: str, storage: ms.SQLStorage) -> None:
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(docs=documents, flts=st.lists(filters, min_size=1, max_size=5), order=orders, order_flt=filters)
    def run(docs: Any, flts: list[dict[Any, Any]], order: list[Any], order_flt: dict[Any, Any]) -> None:
        loaded = load(storage, docs)
        for f in flts:
            check(storage, db, loaded, f, None)
        check(storage, db, loaded, order_flt, order)

    run()


@pytest.mark.parametrize(
    "flt_,expected",
    [
        ({"payload.v": 1}, {"int", "float"}),
        ({"payload.v": True}, {"true"}),
        ({"payload.v": "1"}, {"str1"}),
        ({"payload.v": None}, {"null"}),
        ({"payload.v": {"$ne": 1}}, {"true", "str1", "null", "missing", "nfd", "nfc", "pad", "arr"}),
        ({"payload.v": {"$gt": 0.5}}, {"int", "float"}),
        ({"payload.v": {"$exists": False}}, {"missing"}),
        ({"payload.v": NFC_E}, {"nfc"}),
        ({"payload.v": {"$gte": "a"}}, {"nfd", "nfc", "pad"}),
        ({"payload.v": "a"}, set()),
        ({"payload.v": {"$contains": 1}}, {"arr"}),
        ({"payload.v": {"$in": [None, "1"]}}, {"null", "str1"}),
        ({"payload.v": {"$nin": []}}, {"int", "float", "true", "str1", "null", "missing", "nfd", "nfc", "pad", "arr"}),
    ],
)
def test_fixed_traps(db: str, storage: ms.SQLStorage, flt_: dict[str, Any], expected: set[str]) -> None:
    """The classic conflations, named (a failure here reads better than a shrunk example)."""
    rows = {
        "int": 1, "float": 1.0, "true": True, "str1": "1", "null": None, "nfd": NFD_E, "nfc": NFC_E,
        "pad": "a ", "arr": [[1], 1],
    }  # fmt: skip
    docs = [({"type": "t", "session_id": None, "source": None, "ts": TS0}, {"v": v}) for v in rows.values()]
    docs.append(({"type": "t", "session_id": None, "source": None, "ts": TS0}, {}))
    loaded = load(storage, docs)
    names = [*rows, "missing"]
    got = {names[int(d["id"][1:])] for d in storage.query(None, flt_)}
    assert got == expected
    assert got == {names[int(d["id"][1:])] for d in reference.run(loaded, flt_)}
