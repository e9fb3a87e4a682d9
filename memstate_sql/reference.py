"""The filter contract, executable: a pure-Python evaluator of parsed filters and sort orders.

This is the specification the SQL compilers are tested against (the
differential tests run the same filters on every database and compare the ids
with `matches`); docs/filters.md is its prose form. It works on fact documents
as `MemoryStore.query` returns them, or on any mapping with the envelope
fields and a ``payload``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from memstate_sql import filters as flt
from memstate_sql.timeutil import as_utc, parse_iso


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


def resolve(doc: Any, keys: Sequence[str]) -> Any:
    """The value at `keys` (object keys only); `MISSING` when a step is not an object or lacks the key."""
    for key in keys:
        if not isinstance(doc, dict) or key not in doc:
            return MISSING
        doc = doc[key]
    return doc


def json_eq(a: Any, b: Any) -> bool:
    """Typed JSON equality: same kind; numbers numerically; objects order-free; arrays in order."""
    kind = flt.kind_of(a)
    if kind != flt.kind_of(b):
        return False
    if kind == "object":
        return a.keys() == b.keys() and all(json_eq(a[k], b[k]) for k in a)
    if kind == "array":
        return len(a) == len(b) and all(json_eq(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _compare(left: Any, op: str, right: Any) -> bool:
    if op == "$gt":
        return bool(left > right)
    if op == "$gte":
        return bool(left >= right)
    if op == "$lt":
        return bool(left < right)
    return bool(left <= right)


def _ts(value: Any) -> datetime:
    if isinstance(value, datetime):
        return as_utc(value)
    return parse_iso(str(value))


def _envelope(doc: Mapping[str, Any], field: str) -> Any:
    value = doc.get(field)
    return _ts(value) if field == "ts" and value is not None else value


def _positive(doc: Mapping[str, Any], cmp: flt.Cmp) -> bool:
    """The un-negated operators ($eq $in $gt.. $exists $contains)."""
    if cmp.op == "$in":
        return any(_positive(doc, flt.Cmp(cmp.field, cmp.keys, "$eq", v, cmp.raw_path)) for v in cmp.value)
    if cmp.field != "payload":
        value = _envelope(doc, cmp.field)
        if cmp.op == "$exists":
            return bool(cmp.value)
        if cmp.op == "$eq":
            if cmp.value is None:
                return value is None
            if cmp.field == "ts":
                return bool(value == cmp.value)
            return isinstance(cmp.value, str) and bool(value == cmp.value)
        return value is not None and _compare(value, cmp.op, cmp.value)
    value = resolve(doc.get("payload"), cmp.keys)
    if cmp.op == "$exists":
        return (value is not MISSING) is bool(cmp.value)
    if value is MISSING:
        return False
    if cmp.op == "$eq":
        return json_eq(value, cmp.value)
    if cmp.op == "$contains":
        return isinstance(value, list) and any(json_eq(item, cmp.value) for item in value)
    if flt.kind_of(value) != flt.kind_of(cmp.value):
        return False
    return _compare(value, cmp.op, cmp.value)


def evaluate(doc: Mapping[str, Any], node: flt.Node) -> bool:
    if isinstance(node, flt.All):
        return all(evaluate(doc, item) for item in node.items)
    if isinstance(node, flt.Any_):
        return any(evaluate(doc, item) for item in node.items)
    if isinstance(node, flt.Not):
        return not evaluate(doc, node.item)
    if node.op == "$ne":
        return not _positive(doc, flt.Cmp(node.field, node.keys, "$eq", node.value, node.raw_path))
    if node.op == "$nin":
        return not _positive(doc, flt.Cmp(node.field, node.keys, "$in", node.value, node.raw_path))
    return _positive(doc, node)


def matches(doc: Mapping[str, Any], filters: Mapping[Any, Any] | flt.Node | None) -> bool:
    """Whether `doc` matches `filters` (a filter mapping or a parsed AST)."""
    node = filters if isinstance(filters, flt.All | flt.Any_ | flt.Not | flt.Cmp) else flt.parse(filters)
    return evaluate(doc, node)


# ---------------------------------------------------------------------------- ordering


class _Desc:
    """Inverts the order of a sort-key component."""

    __slots__ = ("key",)

    def __init__(self, key: Any) -> None:
        self.key = key

    def __lt__(self, other: _Desc) -> bool:
        return bool(other.key < self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Desc) and bool(self.key == other.key)

    def __hash__(self) -> int:  # pragma: no cover - not hashed
        return hash(self.key)


def value_key(value: Any) -> tuple[int, float | int, str]:
    """(kind rank, number, string) of a payload value, as the databases sort it (`filters.KIND_RANK`)."""
    if value is MISSING:
        return (flt.KIND_RANK["missing"], 0, "")
    kind = flt.kind_of(value)
    if kind == "bool":
        return (flt.KIND_RANK["true" if value else "false"], 0, "")
    if kind == "number":
        return (flt.KIND_RANK["number"], value, "")
    if kind == "string":
        return (flt.KIND_RANK["string"], 0, value)
    return (flt.KIND_RANK[kind], 0, "")


def sort_key(doc: Mapping[str, Any], specs: Sequence[flt.OrderSpec]) -> tuple[Any, ...]:
    """The key `sorted` needs to order documents as `query(order_by=...)` does."""
    if not specs:
        specs = (flt.OrderSpec("ts", (), False, "ts"),)
    parts: list[Any] = []
    for spec in specs:
        if spec.field == "payload":
            key: Any = value_key(resolve(doc.get("payload"), spec.keys))
        elif spec.field in flt.NULLABLE_FIELDS:
            value = doc.get(spec.field)
            key = (0, "") if value is None else (1, value)
        else:
            key = _envelope(doc, spec.field)
        parts.append(_Desc(key) if spec.descending else key)
    if not any(spec.field == "id" for spec in specs):
        parts.append(_Desc(doc["id"]) if specs[0].descending else doc["id"])
    return tuple(parts)


def run(
    docs: Sequence[Mapping[str, Any]],
    filters: Mapping[Any, Any] | None = None,
    order_by: Any = None,
    limit: int | None = None,
    offset: int = 0,
) -> list[Mapping[str, Any]]:
    """`query` over an in-memory list of documents."""
    node = flt.parse(filters)
    specs = flt.parse_order(order_by)
    found = sorted((d for d in docs if evaluate(d, node)), key=lambda d: sort_key(d, specs))
    end = None if limit is None else offset + limit
    return found[offset:end]
