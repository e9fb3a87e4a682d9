"""Equality filters with type fidelity: the same answer on every database."""

from __future__ import annotations

from typing import Any

import pytest

import memstate_sql as ms
from memstate_sql import ValidationFailed

DOCS: dict[str, Any] = {
    "true": True,
    "false": False,
    "one": 1,
    "one_float": 1.0,
    "zero": 0,
    "str_one": "1",
    "str_true": "true",
    "str_null": "null",
    "null": None,
    "abc": "abc",
    "ABC": "ABC",
    "abc_space": "abc ",
    "e_nfc": "\u00e9",
    "e_nfd": "e\u0301",
    "emoji": "🧠",
    "quote": 'it\'s "quoted"',
    "obj": {"a": 1, "b": [1, 2]},
    "obj_swapped": {"b": [1, 2], "a": 1.0},
    "obj_bigger": {"a": 1, "b": [1, 2], "c": None},
    "list": [1, "1", True],
    "list_reordered": [True, "1", 1],
    "nested_list": [[1]],
    "empty_obj": {},
    "empty_list": [],
}


@pytest.fixture
def loaded(storage: ms.SQLStorage) -> ms.SQLStorage:
    for name, value in DOCS.items():
        storage.save({"id": name, "type": "t", "payload": {"v": value, "deep": {"x": {"v": value}}}})
    storage.save({"id": "missing", "type": "t", "payload": {"deep": {"x": {}}}})
    storage.save({"id": "scalar_parent", "type": "t", "payload": {"deep": "not an object"}})
    return storage


def ids(storage: ms.SQLStorage, path: str, value: Any) -> list[str]:
    return sorted(d["id"] for d in storage.query("t", {path: value}))


CASES = [
    (True, ["true"]),
    (False, ["false"]),
    (1, ["one", "one_float"]),
    (1.0, ["one", "one_float"]),
    (0, ["zero"]),
    ("1", ["str_one"]),
    ("true", ["str_true"]),
    ("null", ["str_null"]),
    (None, ["null"]),
    ("abc", ["abc"]),
    ("ABC", ["ABC"]),
    ("abc ", ["abc_space"]),
    ("\u00e9", ["e_nfc"]),
    ("e\u0301", ["e_nfd"]),
    ("🧠", ["emoji"]),
    ('it\'s "quoted"', ["quote"]),
    ({"a": 1, "b": [1, 2]}, ["obj", "obj_swapped"]),
    ([1, "1", True], ["list"]),
    ([[1]], ["nested_list"]),
    ({}, ["empty_obj"]),
    ([], ["empty_list"]),
]


@pytest.mark.parametrize(("value", "expected"), CASES, ids=[repr(c[0]) for c in CASES])
@pytest.mark.parametrize("path", ["payload.v", "payload.deep.x.v"])
def test_typed_equality(loaded: ms.SQLStorage, path: str, value: Any, expected: list[str]) -> None:
    assert ids(loaded, path, value) == sorted(expected)


def test_missing_key_never_matches_none(loaded: ms.SQLStorage) -> None:
    assert "missing" not in ids(loaded, "payload.v", None)
    assert "scalar_parent" not in ids(loaded, "payload.deep.x.v", None)


def test_negation_and_existence(loaded: ms.SQLStorage) -> None:
    everything = sorted([*DOCS, "missing", "scalar_parent"])
    assert ids(loaded, "payload.v", {"$ne": True}) == [i for i in everything if i != "true"]
    assert ids(loaded, "payload.v", {"$exists": False}) == ["missing", "scalar_parent"]
    assert ids(loaded, "payload.v", {"$in": [True, "1"]}) == ["str_one", "true"]
    assert "missing" in ids(loaded, "payload.v", {"$nin": [None]})


def test_keys_with_dots_and_hostile_keys(storage: ms.SQLStorage) -> None:
    hostile = "x'); DROP TABLE users; --"
    storage.save({"id": "a", "type": "t", "payload": {"a.b": 1, "a": {"b": 2}, hostile: 3, "$.x": 4}})
    assert [d["id"] for d in storage.query("t", {"payload.a\\.b": 1})] == ["a"]
    assert [d["id"] for d in storage.query("t", {("payload", "a.b"): 1})] == ["a"]
    assert [d["id"] for d in storage.query("t", {"payload.a.b": 2})] == ["a"]
    assert storage.query("t", {"payload.a.b": 1}) == []
    assert [d["id"] for d in storage.query("t", {("payload", hostile): 3})] == ["a"]
    assert [d["id"] for d in storage.query("t", {("payload", "$.x"): 4})] == ["a"]
    assert storage.query("t", {("payload", "$.x"): 3}) == []


@pytest.mark.parametrize(
    "bad",
    [
        {"payload.v": {"$regex": "x"}},
        {"payload.v": {"$eq": 1, "plain": 2}},
        {"nonsense": 1},
        {"payload..v": 1},
        {"payload.v": float("nan")},
        {"payload.v": {1, 2}},
        {"payload.v": b"bytes"},
        {"$where": "1"},
        {"payload.v": {"$in": 1}},
        {"payload.v": {"$exists": "yes"}},
    ],
)
def test_malformed_filters_raise_validation_failed(storage: ms.SQLStorage, bad: dict[Any, Any]) -> None:
    with pytest.raises(ValidationFailed):
        storage.query("t", bad)


def test_envelope_filters(storage: ms.SQLStorage) -> None:
    storage.save({"id": "a", "type": "t", "payload": {}, "session_id": "S", "source": "src"})
    storage.save({"id": "b", "type": "t", "payload": {}, "session_id": "s"})
    assert [d["id"] for d in storage.query(None, {"session_id": "S"})] == ["a"]
    assert [d["id"] for d in storage.query(None, {"session_id": None})] == []
    assert [d["id"] for d in storage.query(None, {"source": None})] == ["b"]
    assert storage.query(None, {"session_id": 1}) == []
    assert [d["id"] for d in storage.query(None, {"id": "a"})] == ["a"]
