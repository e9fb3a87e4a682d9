"""Timestamps: aware UTC datetimes inside, ISO 8601 with ``Z`` outside.

The one place that converts between the spellings the store meets: naive
datetimes (taken as UTC), other offsets, ``Z`` and ``+00:00``.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone


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


#: The longest time to live accepted (far beyond any retention policy, well inside datetime's range).
MAX_TTL = timedelta(days=365 * 1000)


def as_ttl(value: object) -> timedelta:
    """A time to live given as seconds (int or float) or a `timedelta`, which must be positive.

    Raises TypeError or ValueError with a message naming the problem.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | timedelta):
        raise TypeError(f"a ttl is seconds or a timedelta, not {type(value).__name__}")
    delta = value if isinstance(value, timedelta) else timedelta(seconds=value)
    if not timedelta(0) < delta <= MAX_TTL:
        raise ValueError(f"a ttl must be positive and at most {MAX_TTL.days} days, got {value!r}")
    return delta
