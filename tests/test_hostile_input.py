"""Hostile and malformed input gets a documented exception (a `MemoryStoreError`) and changes nothing.

Explicit cases (SQL and JSON-path injection, unknown operators, non-JSON values, out-of-range
integers, 10 MB payloads, 1,000-deep nesting, bad type names, table prefixes and ids) on every
database, sync and async; then a hypothesis fuzz of the public API with hostile values, after
which the tables still hold exactly what the successful calls wrote (the log replays to the facts).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import memstate_sql as ms
from memstate_sql import ConflictError, Fact, MemoryStoreError, ValidationFailed
from tests.dbutil import fetch
from tests.invariants import check_tables

CANARY = {"a": 1, "s": "x", "nested": {"k": [1, "two", None]}}


def raw(**fields: Any) -> Fact:
    """A Fact that skips pydantic's checks, as a caller's own object might."""
    base: dict[str, Any] = {
        "id": "hostile",
        "type": "t",
        "payload": {},
        "source": None,
        "session_id": None,
        "ts": datetime.now(timezone.utc),
    }
    return Fact.model_construct(**{**base, **fields})


def deep(levels: int) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for _ in range(levels):
        doc = {"k": doc}
    return doc


def snapshot(url: str, prefix: str) -> tuple[list[Any], list[Any]]:
    return fetch(url, f"SELECT * FROM {prefix}_facts ORDER BY id"), fetch(
        url, f"SELECT * FROM {prefix}_tx ORDER BY seq"
    )


Case = Callable[[Any, str], Any]

#: name -> (call, expected exception). Every expected class is a MemoryStoreError.
RAISES: dict[str, tuple[Case, type[MemoryStoreError]]] = {
    "unknown operator": (lambda s, f: s.query("t", {"payload.a": {"$regex": ".*"}}), ValidationFailed),
    "unknown top-level operator": (lambda s, f: s.query("t", {"$where": "1=1"}), ValidationFailed),
    "unknown envelope field": (lambda s, f: s.query("t", {"version": 1}), ValidationFailed),
    "non-string filter key": (lambda s, f: s.query("t", {1: 1}), ValidationFailed),
    "filters not a mapping": (lambda s, f: s.query("t", "payload.a = 1"), ValidationFailed),
    "NaN filter value": (lambda s, f: s.query("t", {"payload.a": math.nan}), ValidationFailed),
    "infinite filter value": (lambda s, f: s.query("t", {"payload.a": math.inf}), ValidationFailed),
    "bytes filter value": (lambda s, f: s.query("t", {"payload.a": b"1"}), ValidationFailed),
    "set filter value": (lambda s, f: s.query("t", {"payload.a": {1}}), ValidationFailed),
    "huge integer filter value": (lambda s, f: s.query("t", {"payload.a": 2**70}), ValidationFailed),
    "1000-deep filter value": (lambda s, f: s.query("t", {"payload.a": deep(1000)}), ValidationFailed),
    "ts filter injection": (lambda s, f: s.query("t", {"ts": "2020' OR 1=1 --"}), ValidationFailed),
    "session_id of the wrong type in query": (lambda s, f: s.query("t", None, 5), ValidationFailed),
    "NaN payload": (lambda s, f: s.commit(Fact(type="t", payload={"a": math.nan})), ValidationFailed),
    "bytes payload": (lambda s, f: s.commit(raw(payload={"a": b"x"})), ValidationFailed),
    "set payload": (lambda s, f: s.commit(raw(payload={"a": {1, 2}})), ValidationFailed),
    "non-string payload key": (lambda s, f: s.commit(raw(payload={1: "x"})), ValidationFailed),
    "tuple payload key": (lambda s, f: s.commit(raw(payload={("a",): "x"})), ValidationFailed),
    "payload not a dict": (lambda s, f: s.commit(raw(payload=["a"])), ValidationFailed),
    "integer beyond 2**53": (lambda s, f: s.commit(Fact(type="t", payload={"a": 2**53})), ValidationFailed),
    "integer beyond 64 bits": (lambda s, f: s.commit(Fact(type="t", payload={"a": -(2**64)})), ValidationFailed),
    "10 MB payload": (lambda s, f: s.commit(Fact(type="t", payload={"a": "x" * 10_000_000})), ValidationFailed),
    "1000-deep payload": (lambda s, f: s.commit(Fact(type="t", payload=deep(1000))), ValidationFailed),
    "NUL in a payload string": (lambda s, f: s.commit(Fact(type="t", payload={"a": "x\x00"})), ValidationFailed),
    "update with NaN": (lambda s, f: s.update(f, {"payload": {"a": math.nan}}), ValidationFailed),
    "update with a 1000-deep value": (lambda s, f: s.update(f, {"payload": {"a": deep(1000)}}), ValidationFailed),
    "update patch not a mapping": (lambda s, f: s.update(f, "payload"), ValidationFailed),
    "update of envelope fields": (lambda s, f: s.update(f, {"type": "other"}), ValidationFailed),
    "empty type name": (lambda s, f: s.commit(Fact(type="", payload={})), ValidationFailed),
    "type name of 5000 chars": (lambda s, f: s.commit(Fact(type="x" * 5000, payload={})), ValidationFailed),
    "type name not a string": (lambda s, f: s.commit(raw(type=7)), ValidationFailed),
    "NUL in a type name": (lambda s, f: s.commit(Fact(type="a\x00b", payload={})), ValidationFailed),
    "type filter not a string": (lambda s, f: s.query(["t"]), ValidationFailed),
    "id of the wrong type (get)": (lambda s, f: s.get(5), ValidationFailed),
    "id of the wrong type (commit)": (lambda s, f: s.commit(raw(id=5)), ValidationFailed),
    "id of 1000 chars (get)": (lambda s, f: s.get("x" * 1000), ValidationFailed),
    "id of 1000 chars (commit)": (lambda s, f: s.commit(Fact(id="x" * 1000, type="t", payload={})), ValidationFailed),
    "id of 1000 chars (delete)": (lambda s, f: s.delete(None, "x" * 1000), ValidationFailed),
    "empty id (update)": (lambda s, f: s.update("", {"payload": {}}), ValidationFailed),
    "id list (get)": (lambda s, f: s.get([f]), ValidationFailed),
    "session of the wrong type (commit)": (
        lambda s, f: s.commit(Fact(type="t", payload={}), session_id=3),
        ValidationFailed,
    ),
    "session of 1000 chars (rollback)": (lambda s, f: s.rollback("s" * 1000), ValidationFailed),
    "steps of the wrong type": (lambda s, f: s.rollback("s", "1; DROP TABLE x"), ValidationFailed),
    "expected_version of the wrong type": (
        lambda s, f: s.update(f, {"payload": {}}, expected_version="1"),
        ValidationFailed,
    ),
    "expected_version out of range": (lambda s, f: s.update(f, {"payload": {}}, expected_version=2**70), ConflictError),
    "storage save of a non-document": (lambda s, f: s.storage.save([1, 2]), ValidationFailed),
    "storage save with unknown fields": (
        lambda s, f: s.storage.save({"id": "x", "type": "t", "payload": {}, "version": 9}),
        ValidationFailed,
    ),
    "append_tx with an unknown op": (
        lambda s, f: s.storage.append_tx({"op": "DROP TABLE", "session_id": None, "fact_id": None}),
        ValidationFailed,
    ),
    "get_tx_log with a negative limit": (lambda s, f: s.storage.get_tx_log(None, -1), ValidationFailed),
    "delete_txs with a string": (lambda s, f: s.storage.delete_txs("abc"), ValidationFailed),
}

#: Calls that are valid (the hostile text is data) and must match nothing.
MATCH_NOTHING: dict[str, Case] = {
    "quote injection in a key": lambda s, f: s.query("t", {"payload.a') OR 1=1 --": 1}),
    "json path syntax in a key": lambda s, f: s.query("t", {"payload.$.a": 1}),
    "array index syntax in a key": lambda s, f: s.query("t", {"payload.nested[0]": 1}),
    "wildcard key": lambda s, f: s.query("t", {"payload.*": 1}),
    "double-dollar key": lambda s, f: s.query("t", {"payload.$$": 1}),
    "quote injection in a value": lambda s, f: s.query("t", {"payload.s": "x' OR '1'='1"}),
    "json text as a value": lambda s, f: s.query("t", {"payload.a": "1 OR 1=1"}),
    "quote injection in the type": lambda s, f: s.query("t' OR '1'='1"),
    "injection in the id": lambda s, f: [s.get(f + "' OR '1'='1")] if s.get(f + "' OR '1'='1") else [],
    "injection in a session": lambda s, f: s.query("t", None, "s' OR 1=1 --"),
    "backslash and quote key": lambda s, f: s.query("t", {("payload", "\\'\"]"): 1}),
}


def quoted_keys_supported(db: str) -> bool:
    import sqlite3

    return db != "sqlite" or sqlite3.sqlite_version_info >= (3, 45, 0)


def test_malformed_input_raises_a_documented_error_and_changes_nothing(store: Any, db_url: str, prefix: str) -> None:
    fid = store.commit(Fact(type="t", payload=CANARY), session_id="s")
    before = snapshot(db_url, prefix)
    failures = []
    for case, (call, expected) in sorted(RAISES.items()):
        try:
            call(store, fid)
        except expected:
            pass
        except BaseException as exc:
            failures.append(f"{case}: {type(exc).__name__}: {exc}"[:300])
        else:
            failures.append(f"{case}: no exception")
    assert not failures, failures
    assert snapshot(db_url, prefix) == before


def test_injection_is_data(store: Any, db: str, db_url: str, prefix: str) -> None:
    fid = store.commit(Fact(type="t", payload=CANARY), session_id="s")
    before = snapshot(db_url, prefix)
    failures = []
    for case, call in sorted(MATCH_NOTHING.items()):
        try:
            found = call(store, fid)
        except ValidationFailed:
            # SQLite before 3.45 cannot address keys that contain '"' and says so.
            if quoted_keys_supported(db):
                failures.append(f"{case}: refused")
        else:
            if found != []:
                failures.append(f"{case}: matched {found}")
    assert not failures, failures
    assert snapshot(db_url, prefix) == before
    assert store.query("t", {"payload.s": "x"})[0]["id"] == fid  # the canary is still found


def test_invalid_table_prefixes_are_refused(db_url: str) -> None:
    for bad in ["", "x; DROP TABLE y", "Upper", "1abc", "a" * 31, "a-b", "a b", 5, None]:
        with pytest.raises(ValidationFailed):
            ms.SQLStorage(db_url, table_prefix=bad)  # type: ignore[arg-type]


def test_hostile_strings_round_trip_as_data(store: Any) -> None:
    nasty = {
        "'); DROP TABLE memstate_facts; --": "\"}]' OR 1=1",
        "$.a[0]": "\\\\'\"",
        "emoji 🎉": "ünïcødé \u2028 \ufeff",
        "a.b": {"c\\d": ["x", {"$in": [1]}]},
    }
    fid = store.commit(Fact(type="t'); --", payload=nasty, source="' OR 1=1"), session_id="s'--")
    assert store.get(fid)["payload"] == nasty
    assert [d["id"] for d in store.query("t'); --", {("payload", "a.b"): nasty["a.b"]})] == [fid]
    assert [d["id"] for d in store.query(None, None, "s'--")] == [fid]


def test_hostile_types_are_matched_exactly(store: Any) -> None:
    """A query's type is part of its cached statement (on PostgreSQL a literal of its SQL, which the
    planner sees): every spelling is data, matched exactly, with the statement's own parameters beside it
    ('t%(w_ns)s' in a SQLite literal was once taken for a parameter)."""
    types = ["t\\", "t\\'", "\\'; --", "t''", "t%", "t%s", "t%(w_ns)s", "t?", "t:x", "ünï 🎉", "T", "t "]
    ids = {t: store.commit(Fact(type=t, payload={"k": 1})) for t in types}
    store.commit(Fact(type="t", payload={"k": 1}))
    for t, fid in ids.items():
        assert [d["id"] for d in store.query(t, {"payload.k": 1})] == [fid], t
        assert store.count(t, {"payload.k": 1}) == 1, t
    # Keys are literals of the SQL on every database, next to the statement's named parameters.
    for key in ["%(q0)s", "%(w_ns)s", "%(param_1)s", "%", "%%", "?"]:
        fid = store.commit(Fact(type="k", payload={key: [key]}))
        assert [d["id"] for d in store.query("k", {("payload", key): [key]})] == [fid], key
        assert [d["id"] for d in store.query("k", {("payload", key): {"$contains": key}})] == [fid], key


# ---------------------------------------------------------------------------- fuzz

hostile_text = st.one_of(
    st.sampled_from(["'", '"', "\\", "--", ";", "$", "$.a", "a.b", "*", "[0]", "%", "_", "\x00", "", " ", "NULL", "é"]),
    st.text(max_size=12),
    st.text(alphabet="'\"\\.$[]*;-% \x00", max_size=8),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    hostile_text,
    st.binary(max_size=4),
    st.frozensets(st.integers(), max_size=2),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.one_of(hostile_text, st.integers(), st.none()), inner, max_size=3),
    ),
    max_leaves=8,
)
ids = st.one_of(
    hostile_text, st.integers(), st.none(), st.text(min_size=190, max_size=200), st.sampled_from(["f0", "f1"])
)
filter_keys = st.one_of(
    hostile_text.map(lambda t: "payload." + t),
    st.sampled_from(["id", "type", "session_id", "source", "ts", "$and", "$or", "$not", "payload"]),
    hostile_text,
    st.integers(),
)
operators = st.sampled_from(["$eq", "$ne", "$in", "$nin", "$exists", "$gt", "$lt", "$regex", "$where", "$"])
filter_values = st.one_of(values, st.dictionaries(operators, values, min_size=1, max_size=2))
filters = st.one_of(st.none(), st.dictionaries(filter_keys, filter_values, max_size=3), hostile_text, st.integers())

calls = st.one_of(
    st.tuples(st.just("commit"), ids, ids, values, st.one_of(st.none(), hostile_text)),
    st.tuples(st.just("update"), ids, values, st.one_of(st.none(), st.integers(-3, 2**64), hostile_text)),
    st.tuples(st.just("delete"), st.one_of(st.none(), hostile_text), ids),
    st.tuples(st.just("query"), st.one_of(st.none(), ids), filters, st.one_of(st.none(), hostile_text)),
    st.tuples(st.just("get"), ids),
    st.tuples(st.just("rollback"), st.one_of(st.none(), ids), st.one_of(st.integers(-2, 3), hostile_text, st.none())),
    st.tuples(st.just("plan_rollback"), st.one_of(st.none(), ids), st.integers(-2, 3)),
    st.tuples(st.just("get_tx_log"), st.one_of(st.none(), ids), st.integers(-2, 2**80), st.integers(-2, 2**80)),
    st.tuples(st.just("promote_session"), ids),
    st.tuples(st.just("discard_session"), ids),
)


def perform(store: ms.MemoryStore, call: tuple[Any, ...]) -> Any:
    name, *args = call
    if name == "commit":
        fid, ftype, payload, session = args
        return store.commit(raw(id=fid, type=ftype, payload=payload), session_id=session)
    if name == "update":
        fid, payload, version = args
        return store.update(fid, {"payload": payload}, expected_version=version)
    if name == "get_tx_log":
        return store.storage.get_tx_log(*args)
    return getattr(store, name)(*args)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(calls, min_size=1, max_size=4))
def test_fuzz_the_public_api_with_hostile_input(storage: ms.SQLStorage, db_url: str, prefix: str, batch: Any) -> None:
    store = ms.MemoryStore(storage)
    if store.get("f0") is None:
        store.commit(Fact(id="f0", type="t", payload=CANARY), session_id="s")
    for call in batch:
        with contextlib.suppress(MemoryStoreError):  # documented; anything else fails the test
            perform(store, call)
    # Nothing escaped into SQL: the tables exist and the log still replays to the facts.
    check_tables(db_url, prefix)


def test_fuzz_left_the_tables_intact_for_a_fresh_store(storage: ms.SQLStorage, db_url: str, prefix: str) -> None:
    """A control for the fuzz: a store on the same prefix works normally afterwards."""
    store = ms.MemoryStore(storage)
    fid = store.commit(Fact(type="t", payload=CANARY))
    assert store.query("t", {"payload.nested.k": [1, "two", None]})[0]["id"] == fid
    check_tables(db_url, prefix)


_JSONISH = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**60), max_value=2**60)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(alphabet=st.sampled_from("ab\x00é"), max_size=3),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(alphabet=st.sampled_from("k\x00"), max_size=2) | st.integers(0, 2), inner, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(_JSONISH)
def test_check_value_fast_path_agrees_with_the_checks_that_name_paths(value: Any) -> None:
    """`jsondoc.check_value` walks a valid document without building paths; it must accept and canonicalise
    exactly what the path-naming checks (`_check_value`) do, and refuse with their message."""
    from memstate_sql import jsondoc

    def outcome(check: Callable[[], Any]) -> tuple[str, str]:
        try:
            return "ok", jsondoc.dumps(check())
        except ValidationFailed as err:
            return "refused", str(err)

    assert outcome(lambda: jsondoc.check_value(value)) == outcome(lambda: jsondoc._check_value(value, "payload", 0))
