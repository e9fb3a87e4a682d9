"""The filter language: parsing to a small AST, and SQL elements that each dialect compiles.

A filter is a mapping of paths to conditions, all of which must hold::

    {"type": "user", "payload.settings.ui.dark_mode": True, "payload.age": {"$gte": 18, "$lt": 65}}

Paths: the envelope fields (``id``, ``type``, ``session_id``, ``source``,
``ts``) or ``payload`` followed by dot-separated object keys. A key containing
a dot is written with a backslash (``"payload.a\\.b"``) or the path is given
as a tuple of keys (``("payload", "a.b")``). Path segments are object keys
only (never array indexes); resolving through a non-object is "missing".

Operators: ``$eq $ne $gt $gte $lt $lte $in $nin $exists $contains`` in a
path's value, ``$and $or $not`` at any level (``$not`` also inside a path's
operator mapping). Values are matched with type fidelity, identically on every
database; the contract is in docs/filters.md and executable in
`memstate_sql.reference`.

This module is dialect-free: it builds `JsonPredicate`, `JsonSortKey` and
`CodePointText` elements, and the modules in `memstate_sql.dialects` compile
them for their database.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import ColumnElement, and_, bindparam, case, false, literal, or_, true
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import BindParameter, Grouping
from sqlalchemy.sql.visitors import InternalTraversal
from sqlalchemy.types import Boolean, Integer, NullType, String

from memstate_sql import jsondoc
from memstate_sql.errors import ValidationFailed
from memstate_sql.timeutil import as_utc, parse_iso

if TYPE_CHECKING:
    from memstate_sql.indexes import IndexedPath

ENVELOPE_FIELDS = ("id", "type", "session_id", "source", "ts")
#: Envelope fields that hold strings (``session_id`` and ``source`` may be NULL).
STRING_FIELDS = ("id", "type", "session_id", "source")
NULLABLE_FIELDS = ("session_id", "source")
JsonKind = Literal["null", "bool", "number", "string", "object", "array"]
RANGE_OPS = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
VALUE_OPS = {"$eq", "$ne", "$in", "$nin", "$exists", "$contains", "$not", *RANGE_OPS}


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
        for part in raw:
            if "\x00" in part:
                raise ValidationFailed(f"filter path {raw!r}: keys must not contain U+0000")
        return tuple(raw)
    if not isinstance(raw, str) or not raw:
        raise ValidationFailed(f"filter path {raw!r} must be a non-empty string or a tuple of keys")
    if "\x00" in raw:
        raise ValidationFailed(f"filter path {raw!r}: keys must not contain U+0000")
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


def split_field(raw: str | Sequence[str], what: str = "filter key") -> tuple[str, tuple[str, ...], str]:
    """(field, payload keys, display name) of a path: ``payload`` + keys, or an envelope field."""
    segments = parse_path(raw)
    shown = raw if isinstance(raw, str) else ".".join(segments)
    head, keys = segments[0], segments[1:]
    if head == "payload" or (head in ENVELOPE_FIELDS and not keys):
        return head, keys, shown
    raise ValidationFailed(f"{what} {shown!r}: a path starts with 'payload.' or is one of {', '.join(ENVELOPE_FIELDS)}")


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
        raise ValidationFailed(f"unknown logical operator {key!r} at the top of a filter (use $and, $or, $not)")
    if not isinstance(key, str | tuple):
        raise ValidationFailed(f"filter key {key!r} must be a string or a tuple of keys")
    field, keys, raw = split_field(key)
    return _parse_condition(field, keys, raw, value)


def _is_operator_map(value: Any, raw: str) -> bool:
    if not isinstance(value, Mapping) or not value:
        return False
    dollar = [isinstance(k, str) and k.startswith("$") for k in value]
    if all(dollar):
        return True
    if any(dollar):
        raise ValidationFailed(f"filter key {raw!r}: operators cannot be mixed with plain keys in one object")
    return False


def _parse_condition(field: str, keys: tuple[str, ...], raw: str, value: Any) -> Node:
    if _is_operator_map(value, raw):
        return All(tuple(_parse_op(field, keys, raw, op, arg) for op, arg in value.items()))
    return _parse_op(field, keys, raw, "$eq", value)


def _parse_op(field: str, keys: tuple[str, ...], raw: str, op: str, arg: Any) -> Node:
    if op not in VALUE_OPS:
        raise ValidationFailed(f"filter key {raw!r}: unknown operator {op!r}")
    if op == "$not":
        if not _is_operator_map(arg, raw):
            raise ValidationFailed(f"filter key {raw!r}: $not takes a mapping of operators, e.g. {{'$gt': 3}}")
        return Not(_parse_condition(field, keys, raw, arg))
    if op == "$exists":
        if not isinstance(arg, bool):
            raise ValidationFailed(f"filter key {raw!r}: $exists takes true or false")
        return Cmp(field, keys, op, arg, raw)
    if op in ("$in", "$nin"):
        if not isinstance(arg, list | tuple):
            raise ValidationFailed(f"filter key {raw!r}: {op} takes a list")
        return Cmp(field, keys, op, tuple(_operand(field, raw, op, v) for v in arg), raw)
    return Cmp(field, keys, op, _operand(field, raw, op, arg), raw)


def parse_ts(value: Any, raw: str) -> datetime:
    """A ``ts`` operand: an aware or naive (UTC) datetime, or an ISO 8601 string."""
    if isinstance(value, str):
        try:
            return parse_iso(value)
        except ValueError as exc:
            raise ValidationFailed(f"filter key {raw!r}: {value!r} is not an ISO 8601 timestamp") from exc
    if not isinstance(value, datetime):
        raise ValidationFailed(f"filter key {raw!r}: compare ts with a datetime or an ISO 8601 string")
    return as_utc(value)


def _operand(field: str, raw: str, op: str, value: Any) -> Any:
    if field == "ts":
        if op == "$contains":
            raise ValidationFailed(f"filter key {raw!r}: $contains applies to payload paths")
        if value is None and op in ("$eq", "$ne", "$in", "$nin"):
            return None
        return parse_ts(value, raw)
    checked = jsondoc.check_value(value, where=f"filter value for {raw!r}")
    if op in RANGE_OPS:
        kind = kind_of(checked)
        if field != "payload" and kind != "string":
            raise ValidationFailed(f"filter key {raw!r}: {op} on {field} takes a string, got {kind}")
        if kind not in ("number", "string"):
            raise ValidationFailed(f"filter key {raw!r}: {op} compares numbers or strings, not {kind}")
    if op == "$contains" and field != "payload":
        raise ValidationFailed(f"filter key {raw!r}: $contains applies to payload paths")
    return checked


# ---------------------------------------------------------------------------- SQL elements


def shape_of(value: Any) -> Any:
    """What of a value the SQL text depends on: kinds, object keys, array lengths, booleans (never other leaves)."""
    kind = kind_of(value)
    if kind == "bool":
        return ("bool", bool(value))
    if kind == "object":
        return ("object", tuple((key, shape_of(item)) for key, item in value.items()))
    if kind == "array":
        return ("array", tuple(shape_of(item) for item in value))
    return kind


def leaves_of(value: Any) -> list[Any]:
    """The number and string leaves of a value, depth first (objects in item order)."""
    kind = kind_of(value)
    if kind in ("number", "string"):
        return [value]
    if kind == "object":
        return [leaf for item in value.values() for leaf in leaves_of(item)]
    if kind == "array":
        return [leaf for item in value for leaf in leaves_of(item)]
    return []


def _nest(keys: tuple[str, ...], value: Any) -> Any:
    for key in reversed(keys):
        value = {key: value}
    return value


#: Makes the bound parameter of one value (and its type, None: inferred) of a filter.
Bind = Callable[[Any, Any], BindParameter[Any]]


def anonymous(value: Any, type_: Any = None) -> BindParameter[Any]:
    """A unique anonymous parameter (SQLAlchemy's statement cache keys it by position)."""
    return bindparam(None, value, type_=type_)


class Numbered:
    """Named parameters ``<prefix>0``, ``<prefix>1``, ... in the order they are made: a statement built
    with them once per shape (`shape_key`) is run with any filter of that shape by naming the values
    `shape_key` collects, in the same order."""

    def __init__(self, prefix: str = "q") -> None:
        self.prefix = prefix
        self.made = 0

    def __call__(self, value: Any, type_: Any = None) -> BindParameter[Any]:
        name = f"{self.prefix}{self.made}"
        self.made += 1
        return bindparam(name, value, type_=type_)


def predicate_values(
    keys: tuple[str, ...], predicate: str, value: Any, index: IndexedPath | None
) -> list[tuple[Any, Any]]:
    """The parameters of a `JsonPredicate` in binding order, with their types: the number and string
    leaves, the value's canonical JSON, the value nested at the keys, ``[value]`` nested at the keys,
    and the string prefix of a declared string index. One function for `JsonPredicate` and `shape_key`."""
    if predicate not in ("eq", "range", "contains"):
        return []
    out: list[tuple[Any, Any]] = [(leaf, None) for leaf in leaves_of(value)]
    text = String()
    out.append((jsondoc.dumps(value), text))
    out.append((jsondoc.dumps(_nest(keys, value)), text))
    out.append((jsondoc.dumps(_nest(keys, [value])), text))
    if index is not None and kind_of(value) == "string":
        out.append((value[: index.string_prefix], text))
    return out


class JsonPredicate(ColumnElement[bool]):
    """A typed predicate on a JSON document column, compiled per dialect.

    `predicate` is ``"eq"`` (JSON-typed equality with `value`), ``"exists"`` (the
    path resolves, JSON null included), ``"range"`` (`sql_op` is one of ``> >= < <=``,
    `value` a number or a string) or ``"contains"`` (the value at the path is an
    array with an element equal to `value`). `index` is the declared index of the
    path when one serves this predicate: the dialect then emits the form that
    index matches.

    Keys are rendered as escaped SQL literals (index matching needs literal
    paths). Values are bound parameters, prepared here once for every dialect
    (`leaves`, `raw`, `json`, `nested_json`, `nested_list_json`, `prefix`): they are
    part of the traversal, so statements are cached per path and value shape,
    never per value.
    """

    __visit_name__ = "memstate_json_predicate"
    inherit_cache = True
    type = Boolean()
    _traverse_internals = [
        ("column", InternalTraversal.dp_clauseelement),
        ("keys", InternalTraversal.dp_string_list),
        ("predicate", InternalTraversal.dp_string),
        ("sql_op", InternalTraversal.dp_string),
        ("shape", InternalTraversal.dp_plain_obj),
        ("index", InternalTraversal.dp_plain_obj),
        ("leaves", InternalTraversal.dp_clauseelement_tuple),
        ("raw", InternalTraversal.dp_clauseelement),
        ("json", InternalTraversal.dp_clauseelement),
        ("nested_json", InternalTraversal.dp_clauseelement),
        ("nested_list_json", InternalTraversal.dp_clauseelement),
        ("prefix", InternalTraversal.dp_clauseelement),
    ]

    def __init__(
        self,
        column: ColumnElement[Any],
        keys: tuple[str, ...],
        predicate: str,
        value: Any = None,
        *,
        op: str = "=",
        index: IndexedPath | None = None,
        bind: Bind | None = None,
    ):
        self.column = column
        self.keys = keys
        self.predicate = predicate
        self.value = value
        self.sql_op = op
        self.index = index
        valued = predicate in ("eq", "range", "contains")
        self.kind: JsonKind | None = kind_of(value) if valued else None
        self.shape: Any = shape_of(value) if valued else None
        make = bind or anonymous
        binds = [make(v, t) for v, t in predicate_values(keys, predicate, value, index)]
        n = len(binds) - (4 if self.kind == "string" and index is not None else 3) if valued else 0
        self.leaves: tuple[BindParameter[Any], ...] = tuple(binds[:n])
        self.raw = self.leaves[0] if self.kind in ("number", "string") else None
        self.json = binds[n] if valued else None
        self.nested_json = binds[n + 1] if valued else None
        self.nested_list_json = binds[n + 2] if valued else None
        self.prefix = binds[n + 3] if valued and len(binds) > n + 3 else None

    def self_group(self, against: Any = None) -> ColumnElement[Any]:
        # Without this, SQLAlchemy wraps a Boolean element as "(...) = 1" on SQLite and MySQL,
        # which hides the expression from SQLite's index matcher.
        return Grouping(self)


SortPart = Literal["rank", "num", "str"]
#: Ascending order of JSON kinds for ``order_by`` on a payload path (missing first).
KIND_RANK = {"missing": 0, "null": 1, "false": 2, "true": 3, "number": 4, "string": 5, "array": 6, "object": 7}


class JsonSortKey(ColumnElement[Any]):
    """One never-NULL component of the sort key of a payload path, compiled per dialect.

    ``rank``: `KIND_RANK` of the value's kind; ``num``: the number (0 for other
    kinds); ``str``: the string in code-point order (``''`` for other kinds).
    """

    __visit_name__ = "memstate_json_sort_key"
    inherit_cache = True
    _traverse_internals = [
        ("column", InternalTraversal.dp_clauseelement),
        ("keys", InternalTraversal.dp_string_list),
        ("part", InternalTraversal.dp_string),
    ]

    def __init__(self, column: ColumnElement[Any], keys: tuple[str, ...], part: SortPart):
        self.column = column
        self.keys = keys
        self.part = part
        self.type = Integer() if part == "rank" else String() if part == "str" else NullType()


class CodePointText(ColumnElement[str]):
    """A text expression that compares and sorts by code point on every database."""

    __visit_name__ = "memstate_code_point_text"
    inherit_cache = True
    _traverse_internals = [("expr", InternalTraversal.dp_clauseelement)]
    type = String()

    def __init__(self, expr: ColumnElement[Any]):
        self.expr = expr


class LiteralText(ColumnElement[str]):
    """A string that a dialect whose planner gains from it writes as a literal (PostgreSQL, escaped by
    the dialect's own literal renderer), elsewhere a parameter: the planner then sees the value even in
    a plan made for any parameters (PostgreSQL's generic plan of a prepared statement), so the column's
    statistics apply (a type with most of the rows is not taken for a selective one). For values of few
    distinct spellings, such as a query's type: a statement holding one is cached per value."""

    __visit_name__ = "memstate_literal_text"
    inherit_cache = True
    _traverse_internals = [("value", InternalTraversal.dp_string)]
    type = String()

    def __init__(self, value: str):
        self.value = value


@compiles(LiteralText)
def _compile_literal_text(element: LiteralText, compiler: SQLCompiler, **kw: Any) -> str:
    # Bound where the planner gains nothing from the value (a dialect renders the literal where it
    # does, e.g. PostgreSQL): SQLAlchemy finds the parameters of a qmark statement by pattern, and a
    # literal such as 't%(w_ns)s' would be taken for one. The value is the parameter's own: the
    # statement is cached per value (the type is part of the query's shape).
    return str(compiler.process(bindparam(None, element.value, type_=String()), **kw))


@compiles(CodePointText)
def _compile_code_point_text(element: CodePointText, compiler: SQLCompiler, **kw: Any) -> str:
    # SQLite's BINARY collation compares UTF-8 bytes: code-point order.
    return str(compiler.process(element.expr, **kw))


# ---------------------------------------------------------------------------- compilation


IndexLookup = Mapping[tuple[str, ...], "IndexedPath"]


def compile_filter(
    node: Node,
    payload: ColumnElement[Any],
    envelope: Mapping[str, ColumnElement[Any]],
    indexed: IndexLookup | None = None,
    bind: Bind | None = None,
) -> ColumnElement[bool]:
    """Compile an AST to a dialect-neutral SQLAlchemy boolean expression.

    Every negation is compiled as ``(P) IS NOT TRUE`` so that SQL's three-valued
    logic cannot turn "unknown" into "no match" for a negated filter.
    `indexed` maps declared payload paths (keys) to their `IndexedPath`. `bind` makes each value's
    parameter (default: anonymous ones; `Numbered`: the names `shape_key`'s values go with).
    """
    return _Compiler(payload, envelope, indexed or {}, bind or anonymous).node(node)


def _negate(expr: ColumnElement[bool]) -> ColumnElement[bool]:
    return expr.self_group().is_not(True)


@dataclass
class _Compiler:
    payload: ColumnElement[Any]
    envelope: Mapping[str, ColumnElement[Any]]
    indexed: IndexLookup
    bind: Bind

    def node(self, node: Node) -> ColumnElement[bool]:
        if isinstance(node, All):
            if not node.items:
                return true()
            return and_(*(self.node(item) for item in node.items))
        if isinstance(node, Any_):
            if not node.items:
                return false()
            return or_(*(self.node(item) for item in node.items))
        if isinstance(node, Not):
            return _negate(self.node(node.item))
        return self.cmp(node)

    def cmp(self, node: Cmp) -> ColumnElement[bool]:
        if node.op == "$ne":
            return _negate(self.cmp(Cmp(node.field, node.keys, "$eq", node.value, node.raw_path)))
        if node.op == "$nin":
            return _negate(self.cmp(Cmp(node.field, node.keys, "$in", node.value, node.raw_path)))
        if node.op == "$in":
            options = [Cmp(node.field, node.keys, "$eq", v, node.raw_path) for v in node.value]
            return or_(false(), *(self.cmp(o) for o in options))
        if node.field == "payload":
            return self.payload_cmp(node)
        return self.envelope_cmp(node)

    def payload_cmp(self, node: Cmp) -> ColumnElement[bool]:
        if node.op == "$exists":
            pred = JsonPredicate(self.payload, node.keys, "exists")
            return pred if node.value else _negate(pred)
        if node.op == "$contains":
            return JsonPredicate(self.payload, node.keys, "contains", node.value, bind=self.bind)
        spec = self.indexed.get(node.keys)
        if spec is not None and spec.kind != kind_of(node.value):
            spec = None
        if node.op == "$eq":
            return JsonPredicate(self.payload, node.keys, "eq", node.value, index=spec, bind=self.bind)
        op = RANGE_OPS[node.op]
        return JsonPredicate(self.payload, node.keys, "range", node.value, op=op, index=spec, bind=self.bind)

    def envelope_cmp(self, node: Cmp) -> ColumnElement[bool]:
        column = self.envelope[node.field]
        value = node.value
        if node.op == "$exists":
            # Envelope fields always exist; a NULL column is "present with null" like JSON null.
            return true() if value else false()
        if node.op == "$eq":
            if value is None:
                return column.is_(None)
            if node.field == "ts" or isinstance(value, str):
                return column == self.bind(value, column.type)
            return false()  # a string column never equals a number, a bool or a container
        operator = RANGE_OPS[node.op]
        if node.field == "ts":
            return column.op(operator, is_comparison=True)(self.bind(value, column.type))
        return CodePointText(column).op(operator, is_comparison=True)(self.bind(value, String()))


# ---------------------------------------------------------------------------- shapes


def shape_key(node: Node, indexed: IndexLookup | None, values: list[Any]) -> Hashable:
    """What of a filter the SQL of `compile_filter` depends on (operators, paths, value shapes, the
    declared index each comparison uses), hashable; appends the filter's parameter values to `values`
    in the order `compile_filter` makes their parameters. Two filters of one shape compile to one SQL
    text: a statement built once with `Numbered` parameters runs either, given its own `values`."""
    return _Shaper(indexed or {}, values).node(node)


@dataclass
class _Shaper:
    """`_Compiler`'s walk, without building SQL: each branch mirrors the `_Compiler` one."""

    indexed: IndexLookup
    values: list[Any]

    def node(self, node: Node) -> Hashable:
        if isinstance(node, All):
            return ("and", *(self.node(item) for item in node.items))
        if isinstance(node, Any_):
            return ("or", *(self.node(item) for item in node.items))
        if isinstance(node, Not):
            return ("not", self.node(node.item))
        return self.cmp(node.field, node.keys, node.op, node.value)

    def cmp(self, field: str, keys: tuple[str, ...], op: str, value: Any) -> Hashable:
        if op == "$ne":
            return ("not", self.cmp(field, keys, "$eq", value))
        if op == "$nin":
            return ("not", self.cmp(field, keys, "$in", value))
        if op == "$in":
            return ("in", *(self.cmp(field, keys, "$eq", v) for v in value))
        if field == "payload":
            return self.payload_cmp(keys, op, value)
        if op == "$exists":
            return (field, op, value)
        if op == "$eq":
            if value is None:
                return (field, "null")
            if field == "ts" or isinstance(value, str):
                self.values.append(value)
                return (field, op)
            return (field, "false")
        self.values.append(value)
        return (field, op)

    def payload_cmp(self, keys: tuple[str, ...], op: str, value: Any) -> Hashable:
        if op == "$exists":
            return ("payload", keys, op, value)
        spec = None if op == "$contains" else self.indexed.get(keys)
        if spec is not None and spec.kind != kind_of(value):
            spec = None
        predicate = "contains" if op == "$contains" else "eq" if op == "$eq" else "range"
        new = [v for v, _ in predicate_values(keys, predicate, value, spec)]
        self.values.extend(new)
        # The Python types of the values too: a parameter's SQL type is inferred from its first value
        # (an int and a float leaf must not share a statement whose parameter is cast to INTEGER).
        return ("payload", keys, op, shape_of(value), spec, tuple(type(v) for v in new))


# ---------------------------------------------------------------------------- ordering


@dataclass(frozen=True)
class OrderSpec:
    """One ``order_by`` entry: a field (or payload keys) and a direction."""

    field: str
    keys: tuple[str, ...]
    descending: bool
    raw: str


def parse_order(order_by: str | Sequence[Any] | None) -> tuple[OrderSpec, ...]:
    """Parse ``"ts"``, ``"-payload.score"``, or a list of them (``-`` means descending)."""
    if order_by is None:
        return ()
    items = [order_by] if isinstance(order_by, str | tuple) else order_by
    if not isinstance(items, Sequence) or isinstance(items, str):
        raise ValidationFailed("order_by takes a path, '-path' for descending, or a list of them")
    specs: list[OrderSpec] = []
    for item in items:
        descending = False
        path: Any = item
        if (isinstance(item, str) and item.startswith("-")) or (isinstance(item, tuple) and item and item[0] == "-"):
            descending, path = True, item[1:]
        if not isinstance(path, str | tuple):
            raise ValidationFailed(f"order_by entry {item!r} must be a path string or a tuple of keys")
        field, keys, raw = split_field(path, "order_by entry")
        if field == "payload" and not keys:
            raise ValidationFailed("order_by entry 'payload': name a payload path such as 'payload.score'")
        specs.append(OrderSpec(field, keys, descending, raw))
    return tuple(specs)


def sort_keys(
    specs: Sequence[OrderSpec], payload: ColumnElement[Any], envelope: Mapping[str, ColumnElement[Any]]
) -> list[tuple[ColumnElement[Any], bool]]:
    """Never-NULL key expressions (with their direction) for `specs`, ending with the id tie-break.

    Without specs the order is ``ts`` then ``id`` (insertion order, as before).
    The id tie-break is ascending unless the first spec is descending.
    """
    if not specs:
        specs = (OrderSpec("ts", (), False, "ts"),)
    out: list[tuple[ColumnElement[Any], bool]] = []
    for spec in specs:
        if spec.field == "payload":
            out.extend((JsonSortKey(payload, spec.keys, part), spec.descending) for part in ("rank", "num", "str"))
        elif spec.field == "ts":
            out.append((envelope["ts"], spec.descending))
        elif spec.field in NULLABLE_FIELDS:
            column = envelope[spec.field]
            rank = case((column.is_(None), literal(0)), else_=literal(1))
            out.append((rank, spec.descending))
            out.append((CodePointText(case((column.is_(None), literal("")), else_=column)), spec.descending))
        else:
            out.append((CodePointText(envelope[spec.field]), spec.descending))
    if not any(spec.field == "id" for spec in specs):
        out.append((CodePointText(envelope["id"]), specs[0].descending))
    return out


def after_keys(
    keys: Sequence[tuple[ColumnElement[Any], bool]], last: Sequence[Any], bind: Bind | None = None
) -> ColumnElement[bool]:
    """Keyset condition: rows strictly after the row whose sort-key values are `last` (`bind`: as in
    `compile_filter`; each value is one parameter, of its key's type)."""
    make = bind or anonymous
    marks = [make(value, expr.type) for (expr, _), value in zip(keys, last, strict=True)]
    clauses: list[ColumnElement[bool]] = []
    for i, (expr, descending) in enumerate(keys):
        equal = [keys[j][0] == marks[j] for j in range(i)]
        step = expr < marks[i] if descending else expr > marks[i]
        clauses.append(and_(*equal, step))
    if len(keys) == 1:
        return clauses[0]
    # Implied by every branch of the OR (so the same rows, NULLs included), and what lets a database seek
    # an index on the leading key to the page's start instead of scanning from the first row each page:
    # without it, streaming n rows read O(n^2) index entries (SQLite: a 1M-fact iter_query took minutes).
    first, descending = keys[0]
    lead = first <= marks[0] if descending else first >= marks[0]
    return and_(lead, or_(*clauses))
