"""The filter language: parsing to a small AST, and SQL elements that each dialect compiles.

A filter is a mapping of paths to conditions, all of which must hold::

    {"type": "user", "payload.settings.ui.dark_mode": True, "payload.age": {"$ne": None}}

Paths: the envelope fields (``id``, ``type``, ``session_id``, ``source``,
``ts``) or ``payload`` followed by dot-separated object keys. A key containing
a dot is written with a backslash (``"payload.a\\.b"``) or the path is given
as a tuple of keys (``("payload", "a.b")``). Path segments are object keys
only (never array indexes); resolving through a non-object is "missing".

Values are matched with type fidelity, identically on every database (the
contract is in docs/filters.md and in `memstate_sql.reference`): ``True``
never equals ``1``; ``1`` equals ``1.0``; ``None`` matches JSON null, never a
missing key; strings compare code point by code point.

This module is dialect-free: it builds `JsonPredicate` elements, and the
modules in `memstate_sql.dialects` compile them for their database.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import ColumnElement, and_, false, or_, true
from sqlalchemy.sql.elements import Grouping
from sqlalchemy.types import Boolean

from memstate_sql import jsondoc
from memstate_sql.errors import ValidationFailed

ENVELOPE_FIELDS = ("id", "type", "session_id", "source", "ts")
JsonKind = Literal["null", "bool", "number", "string", "object", "array"]


def kind_of(value: Any) -> JsonKind:
    """The JSON kind of a Python value (bool is tested before int: ``True == 1`` in Python)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    raise ValidationFailed(f"{type(value).__name__} is not a JSON value")


# ---------------------------------------------------------------------------- paths


def parse_path(raw: str | Sequence[str]) -> tuple[str, ...]:
    """Split a filter path into segments; `\\.` escapes a dot, `\\\\` a backslash."""
    if isinstance(raw, tuple | list):
        if not raw or not all(isinstance(part, str) for part in raw):
            raise ValidationFailed(f"filter path {raw!r}: a tuple path must be non-empty and hold strings")
        return tuple(raw)
    if not isinstance(raw, str) or not raw:
        raise ValidationFailed(f"filter path {raw!r} must be a non-empty string or a tuple of keys")
    parts: list[str] = []
    current: list[str] = []
    chars = iter(raw)
    for ch in chars:
        if ch == "\\":
            nxt = next(chars, None)
            if nxt not in (".", "\\"):
                raise ValidationFailed(f"filter path {raw!r}: '\\' must be followed by '.' or '\\'")
            current.append(nxt)
        elif ch == ".":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    if any(part == "" for part in parts):
        raise ValidationFailed(f"filter path {raw!r} has an empty segment (use a tuple path for empty keys)")
    return tuple(parts)


# ---------------------------------------------------------------------------- AST


@dataclass(frozen=True)
class Cmp:
    """A comparison of the value at `keys` (payload keys) or an envelope `field`."""

    field: str  # "payload" or an envelope field
    keys: tuple[str, ...]
    op: str
    value: Any
    raw_path: str


@dataclass(frozen=True)
class All:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Any_:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Not:
    item: Node


Node = Cmp | All | Any_ | Not

_VALUE_OPS = {"$eq", "$ne", "$in", "$nin", "$exists"}


def parse(filters: Mapping[Any, Any] | None) -> Node:
    """Validate a filter mapping and return its AST (``All(())`` for no filter)."""
    if filters is None:
        return All(())
    if not isinstance(filters, Mapping):
        raise ValidationFailed(f"filters must be a mapping, got {type(filters).__name__}")
    return All(tuple(_parse_entry(key, value) for key, value in filters.items()))


def _parse_entry(key: Any, value: Any) -> Node:
    if isinstance(key, str) and key.startswith("$"):
        if key in ("$and", "$or"):
            if not isinstance(value, list | tuple) or not all(isinstance(v, Mapping) for v in value):
                raise ValidationFailed(f"{key} takes a list of filter mappings")
            items = tuple(parse(v) for v in value)
            return All(items) if key == "$and" else Any_(items)
        if key == "$not":
            if not isinstance(value, Mapping):
                raise ValidationFailed("$not takes a filter mapping")
            return Not(parse(value))
        raise ValidationFailed(f"unknown logical operator {key!r} at the top of a filter")
    segments = parse_path(key)
    raw = key if isinstance(key, str) else ".".join(segments)
    head, keys = segments[0], segments[1:]
    if head == "payload":
        field = "payload"
    elif head in ENVELOPE_FIELDS and not keys:
        field = head
    else:
        raise ValidationFailed(
            f"filter key {raw!r}: a path starts with 'payload.' or is one of {', '.join(ENVELOPE_FIELDS)}"
        )
    if isinstance(value, Mapping) and value and all(isinstance(k, str) and k.startswith("$") for k in value):
        return All(tuple(_parse_op(field, keys, raw, op, arg) for op, arg in value.items()))
    if isinstance(value, Mapping) and any(isinstance(k, str) and k.startswith("$") for k in value):
        raise ValidationFailed(f"filter key {raw!r}: operators cannot be mixed with plain keys in one object")
    return _parse_op(field, keys, raw, "$eq", value)


def _parse_op(field: str, keys: tuple[str, ...], raw: str, op: str, arg: Any) -> Node:
    if op not in _VALUE_OPS:
        raise ValidationFailed(f"filter key {raw!r}: unknown operator {op!r}")
    if op == "$exists":
        if not isinstance(arg, bool):
            raise ValidationFailed(f"filter key {raw!r}: $exists takes true or false")
        return Cmp(field, keys, op, arg, raw)
    if op in ("$in", "$nin"):
        if not isinstance(arg, list | tuple):
            raise ValidationFailed(f"filter key {raw!r}: {op} takes a list")
        values = tuple(_check_operand(field, raw, v) for v in arg)
        return Cmp(field, keys, op, values, raw)
    return Cmp(field, keys, op, _check_operand(field, raw, arg), raw)


def _check_operand(field: str, raw: str, value: Any) -> Any:
    if field == "ts" and isinstance(value, datetime):
        return value
    try:
        return jsondoc.check_value(value, where=f"filter value for {raw!r}")
    except ValidationFailed:
        raise
    except Exception as exc:  # pragma: no cover - check_value raises ValidationFailed only
        raise ValidationFailed(f"filter value for {raw!r}: {exc}") from exc


# ---------------------------------------------------------------------------- SQL elements


class JsonPredicate(ColumnElement[bool]):
    """A typed predicate on a JSON document column, compiled per dialect.

    `predicate` is ``"eq"`` (JSON-typed equality with `value`) or ``"exists"`` (the
    path resolves, JSON null included). Keys and the path are part of the
    statement's cache key and are rendered as escaped SQL literals (index
    matching needs literal paths); values are bound parameters.
    """

    __visit_name__ = "memstate_json_predicate"
    inherit_cache = False
    type = Boolean()

    def __init__(self, column: ColumnElement[Any], keys: tuple[str, ...], op: str, value: Any = None):
        self.column = column
        self.keys = keys
        self.predicate = op
        self.value = value
        self.kind: JsonKind | None = kind_of(value) if op == "eq" else None

    def self_group(self, against: Any = None) -> ColumnElement[Any]:
        # Without this, SQLAlchemy wraps a Boolean element as "(...) = 1" on SQLite and MySQL,
        # which hides the expression from SQLite's index matcher.
        return Grouping(self)


def compile_filter(
    node: Node, payload: ColumnElement[Any], envelope: Mapping[str, ColumnElement[Any]]
) -> ColumnElement[bool]:
    """Compile an AST to a dialect-neutral SQLAlchemy boolean expression.

    Every negation is compiled as ``(P) IS NOT TRUE`` so that SQL's three-valued
    logic cannot turn "unknown" into "no match" for a negated filter.
    """
    if isinstance(node, All):
        if not node.items:
            return true()
        return and_(*(compile_filter(item, payload, envelope) for item in node.items))
    if isinstance(node, Any_):
        if not node.items:
            return false()
        return or_(*(compile_filter(item, payload, envelope) for item in node.items))
    if isinstance(node, Not):
        return _negate(compile_filter(node.item, payload, envelope))
    return _compile_cmp(node, payload, envelope)


def _negate(expr: ColumnElement[bool]) -> ColumnElement[bool]:
    return expr.self_group().is_not(True)


def _compile_cmp(
    node: Cmp, payload: ColumnElement[Any], envelope: Mapping[str, ColumnElement[Any]]
) -> ColumnElement[bool]:
    if node.op == "$ne":
        return _negate(_compile_cmp(Cmp(node.field, node.keys, "$eq", node.value, node.raw_path), payload, envelope))
    if node.op == "$nin":
        return _negate(_compile_cmp(Cmp(node.field, node.keys, "$in", node.value, node.raw_path), payload, envelope))
    if node.op == "$in":
        options = [Cmp(node.field, node.keys, "$eq", v, node.raw_path) for v in node.value]
        return or_(false(), *(_compile_cmp(o, payload, envelope) for o in options))
    if node.field == "payload":
        if node.op == "$exists":
            pred = JsonPredicate(payload, node.keys, "exists")
            return pred if node.value else _negate(pred)
        return JsonPredicate(payload, node.keys, "eq", node.value)
    column = envelope[node.field]
    if node.op == "$exists":
        # Envelope fields always exist; a NULL column is "present with null" like JSON null.
        return true() if node.value else false()
    return _envelope_eq(node, column)


def _envelope_eq(node: Cmp, column: ColumnElement[Any]) -> ColumnElement[bool]:
    value = node.value
    if value is None:
        return column.is_(None)
    if node.field == "ts":
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError as exc:
                raise ValidationFailed(f"filter key 'ts': {value!r} is not an ISO 8601 timestamp") from exc
        if not isinstance(value, datetime):
            return false()
        return column == value
    if not isinstance(value, str):
        return false()  # a string column never equals a number, a bool or a container
    return column == value
