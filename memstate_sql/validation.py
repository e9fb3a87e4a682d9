"""Input checks shared by every operation: envelope strings, documents, versions, windows.

Everything a caller hands the store is checked here, once, before any SQL runs,
so that bad input fails the same way (`ValidationFailed`) on every database.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from memstate_sql import filters as flt
from memstate_sql import jsondoc
from memstate_sql.errors import ConflictError, ValidationFailed
from memstate_sql.facts import Fact
from memstate_sql.records import DEFAULT_NAMESPACE, KEY_LENGTH, FactState, singleton_token
from memstate_sql.registry import Constraint
from memstate_sql.timeutil import as_ttl, as_utc, parse_iso, utcnow


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


def state_from_doc(doc: Mapping[str, Any], constraints: Mapping[str, Constraint], max_bytes: int) -> FactState:
    """Validate a memstate fact document (as given to `save` or found in a log entry)."""
    if not isinstance(doc, Mapping):
        raise ValidationFailed(f"a fact document must be a mapping, got {type(doc).__name__}")
    unknown = set(doc) - {"id", "type", "payload", "source", "session_id", "ts", "expires_at"}
    if unknown:
        raise ValidationFailed(f"unknown fact fields: {', '.join(sorted(map(str, unknown)))}")
    fields = dict(doc)
    expires = fields.pop("expires_at", None)
    try:
        fact = Fact.model_validate(fields)
    except Exception as exc:
        raise ValidationFailed(f"invalid fact document: {exc}") from exc
    expires_at = None if expires is None else check_expiry(None, expires)
    return new_state(fact, fact.payload, fact.session_id, constraints, max_bytes, expires_at=expires_at)


def new_state(
    fact: Fact,
    payload: Any,
    session_id: str | None,
    constraints: Mapping[str, Constraint],
    max_bytes: int,
    *,
    expires_at: datetime | None = None,
) -> FactState:
    check_key("fact id", fact.id, required=True)
    check_key("fact type", fact.type, required=True)
    check_key("session_id", session_id, required=False)
    check_key("source", fact.source, required=False)
    checked, _ = jsondoc.check_payload(payload, max_bytes)
    constraint = constraints.get(fact.type)
    return FactState(
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
