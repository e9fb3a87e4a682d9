"""Timestamps: aware UTC datetimes inside, ISO 8601 with ``Z`` outside.

The one place that converts between the spellings the store meets: naive
datetimes (taken as UTC), other offsets, ``Z`` and ``+00:00``.
"""

from __future__ import annotations

from datetime import datetime, timezone


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def as_utc(ts: datetime) -> datetime:
    """The same instant as an aware UTC datetime (a naive one is taken to be UTC)."""
    return ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts.astimezone(timezone.utc)


def parse_iso(text: str) -> datetime:
    """An ISO 8601 timestamp (``Z`` or an offset; none means UTC) as an aware UTC datetime.

    Raises ValueError for text that is not a timestamp.
    """
    return as_utc(datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text))


def format_iso(ts: datetime) -> str:
    """ISO 8601 in UTC with a trailing ``Z`` (pydantic's JSON form of an aware UTC datetime)."""
    return as_utc(ts).isoformat().replace("+00:00", "Z")


def canonical_iso(value: object) -> object:
    """A timestamp string in the ``Z`` form; anything else (or unparsable text) unchanged.

    Makes the same instant written ``Z``, ``+00:00`` or with another offset compare equal.
    """
    if isinstance(value, str):
        try:
            return format_iso(parse_iso(value))
        except ValueError:
            return value
    return value
