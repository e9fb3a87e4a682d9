"""Input checks shared by every operation: envelope strings, documents, versions, windows.

Everything a caller hands the store is checked here, once, before any SQL runs,
so that bad input fails the same way (`ValidationFailed`) on every database.
"""

from __future__ import annotations

import uuid as uuid_mod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Any

from memstate_sql import filters as flt
from memstate_sql import jsondoc
from memstate_sql.errors import ConflictError, ValidationFailed
from memstate_sql.facts import Fact, Operation
from memstate_sql.records import DEFAULT_NAMESPACE, KEY_LENGTH, FactState, TxRecord, singleton_token
from memstate_sql.registry import Constraint
from memstate_sql.timeutil import as_ttl, as_utc, format_iso, parse_iso, utcnow

#: Length of the log's uuid column (a uuid4's text).
UUID_LENGTH = 36


def check_key(name: str, value: Any, *, required: bool) -> str | None:
    """Validate an envelope string (id, type, session, source, actor)."""
    if value is None:
        if required:
            raise ValidationFailed(f"{name} is required")
        return None
    if not isinstance(value, str):
        raise ValidationFailed(f"{name} must be a string, got {type(value).__name__}")
    if required and not value:
        raise ValidationFailed(f"{name} must not be empty")
    if len(value) > KEY_LENGTH:
        raise ValidationFailed(f"{name} is {len(value)} characters long; the limit is {KEY_LENGTH}")
    if "\x00" in value:
        raise ValidationFailed(f"{name} must not contain U+0000")
    return value


#: Names of memstate_sql's own row fields: a fact document cannot carry them (they would read as the
#: row's version, flags or tenant, which `save` does not set).
RESERVED_FACT_KEYS = frozenset({"version", "immutable", "singleton", "namespace", "document"})
#: Likewise for log records: the log's own bookkeeping columns.
RESERVED_TX_KEYS = frozenset({"discarded", "reverted_by", "namespace", "document"})


def _keys(doc: Any, what: str, reserved: frozenset[str]) -> dict[str, Any]:
    if not isinstance(doc, Mapping):
        raise ValidationFailed(f"a {what} must be a mapping, got {type(doc).__name__}")
    for key in doc:
        if not isinstance(key, str):
            raise ValidationFailed(f"{what} keys must be strings, got {type(key).__name__} {key!r}")
    clash = reserved.intersection(doc)
    if clash:
        raise ValidationFailed(f"{what} fields reserved by memstate_sql: {', '.join(sorted(clash))}")
    return dict(doc)


def instant_of(value: Any, now: datetime) -> tuple[datetime, Any]:
    """The instant a document's ``ts`` names, for the typed column, and the value the document keeps.

    An aware or naive datetime (naive = UTC) is kept in its canonical string form; an ISO 8601 string
    (any offset, ``Z``, or none = UTC) and a number (seconds since the epoch) are kept as given; any
    other value (``"..."``, None, no ``ts`` at all) is kept as given and the column gets `now`, the
    instant of the write.
    """
    if isinstance(value, datetime):
        instant = as_utc(value)
        return instant, format_iso(instant)
    if isinstance(value, str):
        try:
            return parse_iso(value), value
        except ValueError:
            return now, value
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value, timezone.utc), value
        except (OverflowError, OSError, ValueError):
            return now, value
    return now, value


def state_from_doc(
    doc: Mapping[str, Any], constraints: Mapping[str, Constraint], max_bytes: int, now: datetime | None = None
) -> FactState:
    """Validate a memstate fact document (as given to `save` or found in a log entry).

    ``id`` and ``type`` are required strings, ``payload`` a JSON object, ``session_id`` and ``source``
    strings or None (absent: None): they fill typed columns the store's semantics rest on. Every other
    key is kept as given, as are absent keys and the spelling of ``ts`` (see `instant_of`): when the
    columns' canonical rendering is not the document, the document (without its payload) is kept in
    `FactState.document`, and `doc()` returns it exactly.
    """
    fields = _keys(doc, "fact document", RESERVED_FACT_KEYS)
    fid = check_key("fact id", fields.get("id"), required=True)
    ftype = check_key("fact type", fields.get("type"), required=True)
    session_id = check_key("session_id", fields.get("session_id"), required=False)
    source = check_key("source", fields.get("source"), required=False)
    assert fid is not None and ftype is not None
    if "payload" not in fields:
        raise ValidationFailed("payload is required (a JSON object)")
    payload, _ = jsondoc.check_payload(fields.pop("payload"), max_bytes)
    written = now or utcnow()
    ts = written
    if "ts" in fields:
        ts, fields["ts"] = instant_of(fields["ts"], written)
    expires_at = None
    if fields.get("expires_at") is not None:
        expires_at = check_expiry(None, fields["expires_at"])
        if isinstance(fields["expires_at"], datetime):
            fields["expires_at"] = format_iso(fields["expires_at"])
    constraint = constraints.get(ftype)
    state = FactState(
        id=fid,
        type=ftype,
        payload=payload,
        session_id=session_id,
        source=source,
        ts=ts,
        immutable=bool(constraint and constraint.immutable),
        singleton=token_for(constraint, payload),
        expires_at=expires_at,
    )
    if fields == state.envelope():
        return state
    document = jsondoc.check_value(fields, "document")
    size = len(jsondoc.dumps(document).encode("utf-8"))
    if size > max_bytes:
        raise ValidationFailed(f"document: {size} bytes exceeds the limit of {max_bytes}")
    return replace(state, document=document)


def record_from_tx(tx_data: Any, now: datetime | None = None) -> TxRecord:
    """Validate a log record given to `append_tx`, in the shapes memstate's backends store.

    Every key may be absent. The keys that fill the typed columns the log's readers rest on must fit
    them: ``uuid`` a string of at most 36 characters (absent: a new uuid4), ``op`` one of `Operation`
    (absent or None: an entry of no known kind, ``op`` column ``''``), ``session_id``, ``fact_id``,
    ``actor`` and ``reason`` strings or None, ``fact_before`` / ``fact_after`` fact documents or None.
    ``ts`` is read as in `instant_of`; ``seq`` is not kept (the database assigns it). Every other key,
    absent keys and the spelling of ``ts`` are kept: the record, without seq and the images, goes to
    `TxRecord.document` when the canonical rendering of the columns is not it.
    """
    fields = _keys(tx_data, "log record", RESERVED_TX_KEYS)
    fields.pop("seq", None)
    if "uuid" in fields:
        uuid_value = check_key("tx uuid", fields["uuid"], required=True) or ""
        if len(uuid_value) > UUID_LENGTH:
            raise ValidationFailed(f"tx uuid is {len(uuid_value)} characters long; the limit is {UUID_LENGTH}")
    else:
        uuid_value = str(uuid_mod.uuid4())
    op = fields.get("op")
    if op is not None:
        try:
            op = Operation(op).value
        except ValueError:
            raise ValidationFailed(f"invalid log entry: unknown op {op!r}") from None
    reason = fields.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise ValidationFailed(f"reason must be a string, got {type(reason).__name__}")
    images: dict[str, dict[str, Any] | None] = {}
    for key in ("fact_before", "fact_after"):
        image = fields.get(key)
        if image is not None and not isinstance(image, Mapping):
            raise ValidationFailed(f"{key} must be a fact document or None, got {type(image).__name__}")
        images[key] = None if image is None else jsondoc.check_value(dict(image), key)
        if image is not None:
            fields.pop(key)
    written = now or utcnow()
    ts = written
    if "ts" in fields:
        ts, fields["ts"] = instant_of(fields["ts"], written)
    record = TxRecord(
        seq=0,
        uuid=uuid_value,
        op=op or "",
        session_id=check_key("session_id", fields.get("session_id"), required=False),
        fact_id=check_key("fact_id", fields.get("fact_id"), required=False),
        actor=check_key("actor", fields.get("actor"), required=False),
        reason=reason,
        ts=ts,
        fact_before=images["fact_before"],
        fact_after=images["fact_after"],
        discarded=None,
        reverted_by=None,
    )
    canonical = record.canonical()
    del canonical["seq"]
    for key, image in images.items():
        if image is not None:
            del canonical[key]
    if fields == canonical:
        return record
    return replace(record, document=jsondoc.check_value(fields, "log record"))


def new_state(
    fact: Fact,
    payload: Any,
    session_id: str | None,
    constraints: Mapping[str, Constraint],
    max_bytes: int,
    *,
    expires_at: datetime | None = None,
) -> FactState:
    return new_state_text(fact, payload, session_id, constraints, max_bytes, expires_at=expires_at)[0]


def new_state_text(
    fact: Fact,
    payload: Any,
    session_id: str | None,
    constraints: Mapping[str, Constraint],
    max_bytes: int,
    *,
    expires_at: datetime | None = None,
) -> tuple[FactState, str]:
    """`new_state` and its payload serialized (`jsondoc.check_payload`'s text)."""
    check_key("fact id", fact.id, required=True)
    check_key("fact type", fact.type, required=True)
    check_key("session_id", session_id, required=False)
    check_key("source", fact.source, required=False)
    checked, text = jsondoc.check_payload(payload, max_bytes)
    constraint = constraints.get(fact.type)
    state = FactState(
        id=fact.id,
        type=fact.type,
        payload=checked,
        session_id=session_id,
        source=fact.source,
        ts=as_utc(fact.ts),
        immutable=bool(constraint and constraint.immutable),
        singleton=token_for(constraint, checked),
        expires_at=expires_at,
    )
    return state, text


def check_namespace(namespace: Any) -> str:
    """A namespace name (None: the default namespace). Always bound as a parameter, never interpolated."""
    if namespace is None:
        return DEFAULT_NAMESPACE
    checked = check_key("namespace", namespace, required=True)
    assert checked is not None
    return checked


def check_ttl(ttl: Any) -> timedelta | None:
    """A time to live: positive seconds (int or float) or a positive `timedelta`; None: no expiry."""
    if ttl is None:
        return None
    try:
        return as_ttl(ttl)
    except (TypeError, ValueError) as exc:
        raise ValidationFailed(str(exc)) from None


def check_expiry(ttl: Any, expires_at: Any, now: datetime | None = None) -> datetime | None:
    """When a fact given `ttl` (from `now`) or `expires_at` (a datetime, naive = UTC, or an ISO 8601
    string) expires; None when neither is given. Both at once are refused."""
    if ttl is not None and expires_at is not None:
        raise ValidationFailed("give ttl or expires_at, not both")
    delta = check_ttl(ttl)
    if delta is not None:
        return (now or utcnow()) + delta
    if expires_at is None:
        return None
    if isinstance(expires_at, str):
        try:
            return parse_iso(expires_at)
        except ValueError:
            raise ValidationFailed(f"expires_at {expires_at!r} is not an ISO 8601 timestamp") from None
    if not isinstance(expires_at, datetime):
        raise ValidationFailed(f"expires_at must be a datetime or an ISO 8601 string, got {type(expires_at).__name__}")
    return as_utc(expires_at)


def token_for(constraint: Constraint | None, payload: Mapping[str, Any]) -> str | None:
    if constraint is None or constraint.singleton_key is None:
        return None
    value = payload.get(constraint.singleton_key)
    return None if value is None else singleton_token(value)


#: Row counts (limits, offsets, rollback steps) above this are clamped: no table holds more rows,
#: and every database accepts it as a 64-bit LIMIT/OFFSET.
MAX_ROWS = 2**62


def check_version(expected_version: Any) -> int | None:
    if expected_version is None:
        return None
    if isinstance(expected_version, bool) or not isinstance(expected_version, int) or expected_version < 1:
        raise ValidationFailed(f"expected_version must be a positive integer, got {expected_version!r}")
    return expected_version


def version_conflict(fact_id: str, actual: int, expected: int) -> ConflictError:
    return ConflictError(f"fact {fact_id} is at version {actual}, not the expected version {expected}")


def immutable_error(fact_type: str, detail: Any) -> ConflictError:
    return ConflictError(f"Immutable constraint violation: {fact_type}:{detail}")


def check_window(limit: int | None, offset: int) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValidationFailed("limit must be None or a non-negative integer")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValidationFailed("offset must be a non-negative integer")


def check_batch(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValidationFailed("batch_size must be a positive integer")
    return batch_size


@dataclass(frozen=True)
class QuerySpec:
    """A checked query: which facts (type and filter tree) in which order."""

    type_filter: str | None
    node: flt.Node
    order: tuple[flt.OrderSpec, ...]


def query_spec(
    type_filter: Any,
    filters: Any,
    session_id: Any = None,
    order_by: str | Sequence[Any] | None = None,
) -> QuerySpec:
    """Check the arguments every reading method takes (`query`, `count`, `iter_query`, on both
    stores and both storages) and build the query once."""
    check_key("type_filter", type_filter, required=False)
    check_key("session_id", session_id, required=False)
    node = flt.parse(filters)
    if session_id:
        node = flt.All((node, flt.parse({"session_id": session_id})))
    return QuerySpec(type_filter, node, flt.parse_order(order_by))
