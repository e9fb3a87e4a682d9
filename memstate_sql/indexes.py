"""Declared payload paths: a real index per path on every database.

A storage given ``indexed_paths=[IndexedPath("payload.score", "number")]``
creates, when it prepares the schema (idempotently):

* SQLite: an expression index on ``(json_type(payload, P), json_extract(payload, P))``;
* PostgreSQL: a btree on ``(payload -> 'k')`` (numbers) or on
  ``((payload ->> 'k') COLLATE "C")`` (strings);
* MariaDB/MySQL: a VIRTUAL generated column holding the number (DOUBLE) or the
  string's first `STRING_PREFIX` code points (binary NO PAD collation), and an
  index on it. MariaDB only uses such an index when the query names the column,
  so the filter compiler references it by name.

The filter compiler (`memstate_sql.filters` and `memstate_sql.dialects`) emits
exactly the expression each index serves when a declared path is compared with
a value of the declared kind (``$eq``, ``$in``, ``$gt/$gte/$lt/$lte``); the
exact typed predicate is always kept as a recheck, so results never depend on
whether an index exists. Paths of other kinds, or not declared, still work:
they are answered by scanning (on PostgreSQL, ``$eq``/``$in``/``$contains`` use
the GIN ``jsonb_path_ops`` index on the whole payload).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from memstate_sql.errors import ValidationFailed
from memstate_sql.filters import split_field

IndexKind = Literal["number", "string"]
#: Code points of a string kept in MariaDB/MySQL's generated column (191 x 4 bytes fits an index key).
STRING_PREFIX = 191


@dataclass(frozen=True)
class IndexedPath:
    """A payload path to index, with the kind of value it is filtered and sorted on."""

    path: str | tuple[str, ...]
    kind: IndexKind = "string"
    keys: tuple[str, ...] = field(init=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in ("number", "string"):
            raise ValidationFailed(f"indexed path {self.path!r}: kind must be 'number' or 'string', not {self.kind!r}")
        path = tuple(self.path) if isinstance(self.path, list) else self.path
        head, keys, shown = split_field(path, "indexed path")
        if head != "payload" or not keys:
            raise ValidationFailed(f"indexed path {shown!r}: name a payload path such as 'payload.score'")
        object.__setattr__(self, "path", path)
        object.__setattr__(self, "keys", keys)

    @property
    def digest(self) -> str:
        text = "\x00".join((self.kind, *self.keys))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:10]

    @property
    def column_name(self) -> str:
        """The generated column's name on MariaDB/MySQL."""
        return f"px_{self.digest}"

    @property
    def string_prefix(self) -> int:
        return STRING_PREFIX

    def index_name(self, facts_table: str) -> str:
        # "pn": (namespace, path). Releases before ms_0002 built "px" indexes on the path alone; they stay
        # where they exist (unused once this one is there; drop them at leisure).
        return f"ix_{facts_table}_pn_{self.digest}"


def declare(paths: Iterable[IndexedPath | tuple[str, IndexKind]] | None) -> tuple[IndexedPath, ...]:
    """Normalise a storage's ``indexed_paths`` argument (specs or ``(path, kind)`` pairs)."""
    out: dict[tuple[str, ...], IndexedPath] = {}
    for item in paths or ():
        if isinstance(item, IndexedPath):
            spec = item
        elif isinstance(item, Sequence) and len(item) == 2:
            spec = IndexedPath(item[0], item[1])
        else:
            raise ValidationFailed(f"indexed_paths entries are IndexedPath(path, kind), got {item!r}")
        if spec.keys in out and out[spec.keys].kind != spec.kind:
            raise ValidationFailed(f"indexed path {spec.path!r} is declared with two kinds")
        out[spec.keys] = spec
    return tuple(out.values())


def lookup(paths: Sequence[IndexedPath]) -> dict[tuple[str, ...], IndexedPath]:
    return {spec.keys: spec for spec in paths}
