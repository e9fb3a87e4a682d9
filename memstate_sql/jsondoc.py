"""Canonical JSON documents.

Every document memstate_sql writes (payloads, log before/after images) goes
through `check_document` and `dumps`, whatever engine configuration the caller
brought: one serialization means one comparison semantics on every database
(see docs/filters.md). The rules:

* objects have string keys; values are str, int, float, bool, None, list, dict
  (tuples are accepted as lists);
* floats are finite (NaN and Infinity are rejected: no database stores them);
* integers lie within +/-(2**53 - 1), the range every database compares exactly;
* no U+0000 in strings or keys (PostgreSQL's jsonb rejects it);
* nesting depth at most `MAX_DEPTH` (MariaDB refuses deeper documents);
* serialized without ASCII escaping, with compact separators.
"""

from __future__ import annotations

import json
import math
from typing import Any

from memstate_sql.errors import ValidationFailed

MAX_SAFE_INTEGER = 2**53 - 1
#: MariaDB's JSON functions stop at 32 levels; a log entry nests the payload two levels
#: below its root (``{"payload": {...}}`` inside a before/after image), hence 30.
MAX_DEPTH = 30
DEFAULT_MAX_BYTES = 4 * 1024 * 1024


def dumps(value: Any) -> str:
    """Serialize a checked document canonically."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


class Dumped:
    """A document already serialized by `dumps` (`check_payload`'s text): a JSON column's parameter that
    is written as it is, not serialized again."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def loads(text: str | bytes) -> Any:
    return json.loads(text)


def _fail(where: str, what: str) -> ValidationFailed:
    return ValidationFailed(f"{where}: {what}")


class _Invalid(Exception):
    """`_canonical` met a value `check_value` refuses (it then finds and names it)."""


def _canonical(value: Any, depth: int) -> Any:
    """`check_value` without the paths its errors name (building them for every value costs more than the
    checks): the same canonical value, or `_Invalid` where `check_value` raises. The exact built-in types
    first, most frequent first; subclasses (an IntEnum, an OrderedDict) as `check_value` takes them."""
    if depth > MAX_DEPTH:
        raise _Invalid
    kind = type(value)
    if kind is str:
        if "\x00" in value:
            raise _Invalid
        return value
    if kind is dict:
        out: dict[str, Any] = {}
        for key, item in value.items():
            if type(key) is not str or "\x00" in key:
                return _subclassed(value, depth)  # a str subclass key is accepted as it is
            out[key] = _canonical(item, depth + 1)
        return out
    if kind is int:
        if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            raise _Invalid
        return value
    if kind is list:
        return [_canonical(item, depth + 1) for item in value]
    return _subclassed(value, depth)


def _subclassed(value: Any, depth: int) -> Any:
    """`_canonical` of any value, by isinstance (as `check_value`)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        if "\x00" in value:
            raise _Invalid
        return value
    if isinstance(value, int):
        if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            raise _Invalid
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _Invalid
        return value
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str) or "\x00" in key:
                raise _Invalid
            out[key] = _canonical(item, depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        return [_canonical(item, depth + 1) for item in value]
    raise _Invalid


def check_value(value: Any, where: str = "payload", depth: int = 0) -> Any:
    """Return `value` as a canonical JSON value or raise `ValidationFailed` naming the path."""
    try:
        return _canonical(value, depth)
    except _Invalid:
        return _check_value(value, where, depth)  # raises, naming what was refused


def _check_value(value: Any, where: str, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise _fail(where, f"nested deeper than {MAX_DEPTH} levels")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            raise _fail(
                where,
                f"integer {value} is outside +/-(2**53 - 1); store it as a string "
                "(larger integers do not compare exactly on every database)",
            )
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _fail(where, f"{value!r} is not a JSON number (NaN and Infinity are not stored)")
        return value
    if isinstance(value, str):
        if "\x00" in value:
            raise _fail(where, "strings must not contain U+0000")
        return value
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise _fail(where, f"object keys must be strings, got {type(key).__name__} {key!r}")
            if "\x00" in key:
                raise _fail(where, "object keys must not contain U+0000")
            out[key] = _check_value(item, f"{where}.{key}", depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        return [_check_value(item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value)]
    raise _fail(where, f"{type(value).__name__} is not a JSON value")


def check_payload(payload: Any, max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[dict[str, Any], str]:
    """Check a fact payload; return it canonicalised together with its serialized text."""
    if not isinstance(payload, dict):
        raise ValidationFailed(f"payload must be a JSON object (dict), got {type(payload).__name__}")
    checked = check_value(payload)
    text = dumps(checked)
    if len(text.encode("utf-8")) > max_bytes:
        raise ValidationFailed(f"payload: {len(text.encode('utf-8'))} bytes exceeds the limit of {max_bytes}")
    return checked, text
