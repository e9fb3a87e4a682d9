"""The tables: facts, the transaction log, sessions, vectors and the outbox (SQLAlchemy Core).

The tables are named after a configurable prefix (``memstate`` by default), so
one database can hold several independent stores. `models_for(prefix, schema)`
builds (once per prefix and schema) the tables in a `MetaData` of their own; the
column definitions live once, in the ``*_columns`` functions. The library only
uses the Core tables: ORM classes mapped onto them (`Models.Fact`...) are built
on first access, for host applications, so that `import memstate_sql` and a
storage's first operation never import ``sqlalchemy.orm``.

Portability rules applied here: indexed strings are at most 191 characters
(utf8mb4 index limits), every constraint and index has an explicit name of at
most 60 characters, timestamps keep microseconds in UTC on every dialect, the
log sequence is a 64-bit database-assigned identity.
"""

from __future__ import annotations

import functools
import re
import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Dialect,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.types import TypeDecorator, TypeEngine

from memstate_sql import jsondoc
from memstate_sql.dialects import support_for
from memstate_sql.errors import ValidationFailed
from memstate_sql.records import KEY_LENGTH
from memstate_sql.timeutil import as_utc

if TYPE_CHECKING:
    from sqlalchemy.orm import Mapped

DEFAULT_PREFIX = "memstate"

_PREFIX_RE = re.compile(r"^[a-z][a-z0-9_]{0,29}$")


class JSONDocument(TypeDecorator[Any]):
    """JSON on SQLite and MySQL/MariaDB, JSONB on PostgreSQL, always written canonically.

    The serializer is ours, not the engine's: a caller-supplied engine with
    SQLAlchemy's default ``json.dumps`` would store ASCII escapes, which SQLite
    and MariaDB compare as raw text (docs/filters.md).
    """

    impl = JSON
    cache_ok = True

    def __init__(self) -> None:
        super().__init__(none_as_null=True)

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        return dialect.type_descriptor(support_for(dialect).json_type(dialect))

    def bind_processor(self, dialect: Dialect) -> Any:
        def process(value: Any) -> str | None:
            if value is None:
                return None
            return value.text if type(value) is jsondoc.Dumped else jsondoc.dumps(value)

        return process


class UTCDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime with microseconds on every dialect.

    Naive datetimes given to it are taken as UTC. PostgreSQL stores
    ``timestamptz``; SQLite and MySQL/MariaDB store the UTC wall time
    (``DATETIME(6)`` on MySQL/MariaDB, which otherwise drops microseconds).
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        return dialect.type_descriptor(support_for(dialect).timestamp_type(dialect))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = as_utc(value)
        return value if support_for(dialect).aware_timestamps else value.replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return as_utc(value)


class KeyString(TypeDecorator[str]):
    """VARCHAR(191) that compares exactly: case-sensitive and without trailing-space padding.

    SQLite (BINARY) and PostgreSQL (deterministic collations) compare exactly
    already. MySQL/MariaDB tables default to case-insensitive PAD SPACE
    collations, under which ``'Abc' = 'abc '``, and the primary key and the
    singleton index would treat such ids as duplicates: use a binary NO PAD
    collation (MariaDB ``utf8mb4_nopad_bin``, MySQL 8 ``utf8mb4_0900_bin``).
    """

    impl = String(KEY_LENGTH)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        return dialect.type_descriptor(support_for(dialect).key_type(dialect, KEY_LENGTH))


#: 64-bit identity on PostgreSQL and MySQL/MariaDB; SQLite only auto-assigns an INTEGER PRIMARY KEY
#: (which is 64-bit there).
SeqType = BigInteger().with_variant(Integer(), "sqlite")


def _fact_columns() -> list[Column[Any]]:
    """Columns of the facts table. The envelope is real, indexed columns; the payload is JSON."""
    return [
        #: The tenant the fact belongs to ('' is the default namespace); ids are unique per namespace.
        Column("namespace", KeyString(), primary_key=True, server_default=""),
        Column("id", KeyString(), primary_key=True),
        Column("type", KeyString(), nullable=False),
        Column("session_id", KeyString()),
        Column("source", KeyString()),
        Column("ts", UTCDateTime(), nullable=False),
        Column("payload", JSONDocument(), nullable=False),
        #: Incremented by every write; the optimistic-concurrency token.
        Column("version", Integer, nullable=False, default=1),
        #: Set from the type's `Constraint(immutable=True)` at creation; every update path
        #: requires it to be false in its WHERE clause, so the rule holds for every writer.
        Column("immutable", Boolean(create_constraint=False), nullable=False, default=False),
        #: Canonical JSON of the singleton key's value (or its digest when long); unique per type.
        Column("singleton", KeyString()),
        #: When the fact stops existing for every reader (NULL: never); `sweep` deletes it afterwards.
        Column("expires_at", UTCDateTime()),
        #: The document `SQLStorage.save` was given, without its payload, when the columns above cannot
        #: render it exactly (extra or missing keys, another spelling of ts); NULL: their canonical
        #: rendering, as for every fact the store writes itself (docs/contract.md).
        Column("document", JSONDocument()),
        #: The unique key's column (`records.singleton_slot`): the singleton token, or a per-fact
        #: sentinel for facts without one, so the key is never NULL (Galera certifies NULLs as equal).
        Column("singleton_slot", KeyString(), nullable=False),
    ]


def _tx_columns() -> list[Column[Any]]:
    """Columns of the transaction log."""
    return [
        Column("seq", SeqType, primary_key=True, autoincrement=True),
        Column("namespace", KeyString(), nullable=False, server_default=""),
        Column("uuid", String(36), nullable=False),
        Column("op", String(32), nullable=False),
        Column("session_id", KeyString()),
        Column("fact_id", KeyString()),
        Column("actor", KeyString()),
        Column("reason", Text),
        Column("ts", UTCDateTime(), nullable=False),
        Column("fact_before", JSONDocument()),
        Column("fact_after", JSONDocument()),
        #: For DISCARD_SESSION entries: the facts the discard deleted, so that a rollback can restore them.
        Column("discarded", JSONDocument()),
        #: Set when a store rollback undoes the entry (the rollback's uuid); undone entries are
        #: kept for audit but are no longer part of the session's active log.
        Column("reverted_by", String(36)),
        #: The record `SQLStorage.append_tx` was given, without seq and without the images held above,
        #: when the columns cannot render it exactly; NULL: their canonical rendering (docs/contract.md).
        Column("document", JSONDocument()),
        #: The entry's position in its session's log: 1, 2, 3... in the order the session's operations
        #: committed, assigned in the entry's transaction under the session's row in the sessions table
        #: (docs/log-order.md). NULL for entries without a session: they take no position, so their writers
        #: are not serialised. ``seq`` is unique but follows neither commit order nor a session's order on
        #: every engine.
        Column("session_seq", SeqType),
    ]


def _session_columns() -> list[Column[Any]]:
    """Columns of the sessions table: one row per session holding the last position handed out; writing
    it serialises (and, on Galera, certifies) the session's log writers. Entries without a session have
    no row (and no position)."""
    return [
        Column("namespace", KeyString(), primary_key=True),
        #: The session id.
        Column("session_id", KeyString(), primary_key=True),
        #: Always false since entries without a session take no position (kept in the key for the schema).
        Column("without_session", Boolean(create_constraint=False), primary_key=True),
        Column("last_seq", SeqType, nullable=False),
    ]


def _vector_columns() -> list[Column[Any]]:
    """Columns of the vector index (`memstate_sql.vectors`): one embedding per fact, written in the
    transaction that writes the fact. A row serves searches only while its `version` is the fact's."""
    return [
        Column("namespace", KeyString(), primary_key=True, server_default=""),
        Column("fact_id", KeyString(), primary_key=True),
        #: The fact version the embedding was computed for (a search joins on it: never a stale vector).
        Column("version", Integer, nullable=False),
        Column("dim", Integer, nullable=False),
        #: SHA-256 (hex) of the embedded text: a write whose text is unchanged keeps the vector.
        Column("text_hash", String(64), nullable=False),
        #: The unit-length embedding, packed little-endian float32 (4 * dim bytes).
        Column("vector", LargeBinary, nullable=False),
    ]


def _outbox_columns() -> list[Column[Any]]:
    """Columns of the outbox: what an external index (a vector store) must still learn.

    A hook in outbox or after-commit mode (`memstate_sql.outbox`) inserts one row per changed fact in the
    operation's own transaction; a dispatcher deletes it once the index has the fact's state as of that
    row. A row is leased (`lease_owner`, `lease_until`) while one dispatcher delivers its fact.
    """
    return [
        Column("seq", SeqType, primary_key=True, autoincrement=True),
        Column("namespace", KeyString(), nullable=False, server_default=""),
        #: The external index the row is for (the hook's `index_name`, e.g. ``qdrant:memory``).
        Column("target", KeyString(), nullable=False),
        Column("fact_id", KeyString(), nullable=False),
        #: ``upsert`` or ``delete``: what the operation did (delivery sends the fact's state at delivery time).
        Column("op", String(16), nullable=False),
        #: The fact's version after the operation (for a delete: the version it had).
        Column("version", Integer, nullable=False),
        Column("created_at", UTCDateTime(), nullable=False),
        Column("attempts", Integer, nullable=False, default=0),
        Column("next_attempt_at", UTCDateTime(), nullable=False),
        Column("last_error", Text),
        Column("lease_owner", String(36)),
        Column("lease_until", UTCDateTime()),
    ]


# The ORM classes' attributes, for type checkers (`Models.Fact`...); the columns are the functions above.


class FactColumns:
    namespace: Mapped[str]
    id: Mapped[str]
    type: Mapped[str]
    session_id: Mapped[str | None]
    source: Mapped[str | None]
    ts: Mapped[datetime]
    payload: Mapped[dict[str, Any]]
    version: Mapped[int]
    immutable: Mapped[bool]
    singleton: Mapped[str | None]
    expires_at: Mapped[datetime | None]
    document: Mapped[dict[str, Any] | None]
    singleton_slot: Mapped[str]


class TxColumns:
    seq: Mapped[int]
    namespace: Mapped[str]
    uuid: Mapped[str]
    op: Mapped[str]
    session_id: Mapped[str | None]
    fact_id: Mapped[str | None]
    actor: Mapped[str | None]
    reason: Mapped[str | None]
    ts: Mapped[datetime]
    fact_before: Mapped[dict[str, Any] | None]
    fact_after: Mapped[dict[str, Any] | None]
    discarded: Mapped[list[dict[str, Any]] | None]
    reverted_by: Mapped[str | None]
    document: Mapped[dict[str, Any] | None]
    session_seq: Mapped[int | None]


class SessionColumns:
    namespace: Mapped[str]
    session_id: Mapped[str]
    without_session: Mapped[bool]
    last_seq: Mapped[int]


class VectorColumns:
    namespace: Mapped[str]
    fact_id: Mapped[str]
    version: Mapped[int]
    dim: Mapped[int]
    text_hash: Mapped[str]
    vector: Mapped[bytes]


class OutboxColumns:
    seq: Mapped[int]
    namespace: Mapped[str]
    target: Mapped[str]
    fact_id: Mapped[str]
    op: Mapped[str]
    version: Mapped[int]
    created_at: Mapped[datetime]
    attempts: Mapped[int]
    next_attempt_at: Mapped[datetime]
    last_error: Mapped[str | None]
    lease_owner: Mapped[str | None]
    lease_until: Mapped[datetime | None]


@dataclass(frozen=True, eq=False)
class Models:
    """The tables (and metadata) for one table prefix (and optional schema); one instance per prefix
    and schema (`models_for`), compared by identity."""

    prefix: str
    schema: str | None
    facts: Table
    log: Table
    sessions: Table
    vectors: Table
    outbox: Table
    _metadata: MetaData = field(repr=False)
    _lazy: dict[str, Any] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def version_table(self) -> str:
        return f"{self.prefix}_alembic_version"

    @property
    def metadata(self) -> MetaData:
        """Every table with every index, PostgreSQL's GIN index on the payload included
        (`payload_gin_index`; added on first access: its PostgreSQL options load SQLAlchemy's
        PostgreSQL dialect, which a store on another database never needs)."""
        if "gin" not in self._lazy:
            with self._lock:
                if "gin" not in self._lazy:
                    self._lazy["gin"] = payload_gin_index(self.facts)
        return self._metadata

    def _mapped(self, name: str) -> Any:
        """The ORM class mapped onto one of the tables (imperatively, once; ``sqlalchemy.orm`` is
        imported here only): for host applications, the library itself never uses them."""
        found = self._lazy.get(name)
        if found is not None:
            return found
        with self._lock:
            if "registry" not in self._lazy:
                from sqlalchemy.orm import registry

                self._lazy["registry"] = registry(metadata=self._metadata)
                tables = {"Fact": self.facts, "Tx": self.log, "Session": self.sessions}
                tables |= {"Vector": self.vectors, "Outbox": self.outbox}
                bases = {"Fact": FactColumns, "Tx": TxColumns, "Session": SessionColumns}
                bases |= {"Vector": VectorColumns, "Outbox": OutboxColumns}
                for key, table in tables.items():
                    cls = type(f"{key}Row", (bases[key],), {"__table__": table, "__tablename__": table.name})
                    self._lazy["registry"].map_imperatively(cls, table)
                    self._lazy[key] = cls
        return self._lazy[name]

    @property
    def Fact(self) -> type[FactColumns]:
        cls: type[FactColumns] = self._mapped("Fact")
        return cls

    @property
    def Tx(self) -> type[TxColumns]:
        cls: type[TxColumns] = self._mapped("Tx")
        return cls

    @property
    def Session(self) -> type[SessionColumns]:
        cls: type[SessionColumns] = self._mapped("Session")
        return cls

    @property
    def Vector(self) -> type[VectorColumns]:
        cls: type[VectorColumns] = self._mapped("Vector")
        return cls

    @property
    def Outbox(self) -> type[OutboxColumns]:
        cls: type[OutboxColumns] = self._mapped("Outbox")
        return cls


def check_prefix(prefix: str) -> str:
    if not isinstance(prefix, str) or not _PREFIX_RE.match(prefix):
        raise ValidationFailed(
            f"table_prefix {prefix!r} is invalid: use 1-30 characters, lowercase letters, digits and "
            "underscores, starting with a letter"
        )
    return prefix


def payload_gin_index(facts: Table) -> Index:
    """PostgreSQL only: a GIN ``jsonb_path_ops`` index on the payload of `facts` (added to it), which
    serves the query engine's ``@>`` containment filters. Other databases have no such index; the
    dialects it exists on are in ``info["dialects"]`` (read by the migration filters)."""
    index = Index(
        f"ix_{facts.name}_payload_gin",
        facts.c.payload,
        postgresql_using="gin",
        postgresql_ops={"payload": "jsonb_path_ops"},
        postgresql_with={"fastupdate": "off"},
        info={"dialects": ("postgresql",)},
    )
    return index.ddl_if(dialect="postgresql")


def exists_on(item: Any, dialect_name: str) -> bool:
    """Whether a schema item (e.g. an index) is declared for this dialect (see `payload_gin_index`)."""
    dialects = getattr(item, "info", {}).get("dialects")
    return dialects is None or dialect_name in dialects


def models_for(prefix: str = DEFAULT_PREFIX, schema: str | None = None) -> Models:
    """The tables for a table prefix (and schema), built once: every call with the same prefix and
    schema, however spelled, returns the same `Models`."""
    return _models(prefix, schema)


@functools.cache
def _models(prefix: str, schema: str | None) -> Models:
    check_prefix(prefix)
    facts, log, vectors, outbox = f"{prefix}_facts", f"{prefix}_tx", f"{prefix}_vectors", f"{prefix}_outbox"
    metadata = MetaData(schema=schema)
    return Models(
        prefix=prefix,
        schema=schema,
        facts=Table(
            facts,
            metadata,
            *_fact_columns(),
            UniqueConstraint("namespace", "type", "singleton_slot", name=f"uq_{facts}_singleton_slot"),
            Index(f"ix_{facts}_ns_type", "namespace", "type"),
            Index(f"ix_{facts}_ns_session_id", "namespace", "session_id"),
            Index(f"ix_{facts}_ns_source", "namespace", "source"),
            Index(f"ix_{facts}_ns_ts", "namespace", "ts"),
            Index(f"ix_{facts}_ns_expires_at", "namespace", "expires_at"),
            CheckConstraint("version >= 1", name=f"ck_{facts}_version"),
        ),
        log=Table(
            log,
            metadata,
            *_tx_columns(),
            UniqueConstraint("namespace", "uuid", name=f"uq_{log}_uuid"),
            Index(f"ix_{log}_ns_session_seq", "namespace", "session_id", "seq"),
            Index(f"ix_{log}_ns_fact_id", "namespace", "fact_id"),
            # Not UNIQUE: Galera certifies a unique key holding NULLs as a shared key, so concurrent inserts
            # without a session (session_seq NULL) would conflict. The session's row lock keeps a
            # session's positions unique; `verify` checks it.
            Index(f"ix_{log}_session_position", "namespace", "session_id", "session_seq"),
        ),
        sessions=Table(f"{prefix}_sessions", metadata, *_session_columns()),
        vectors=Table(
            vectors,
            metadata,
            *_vector_columns(),
            PrimaryKeyConstraint("namespace", "fact_id", name=f"pk_{vectors}"),
            CheckConstraint("dim >= 1", name=f"ck_{vectors}_dim"),
        ),
        outbox=Table(
            outbox,
            metadata,
            *_outbox_columns(),
            Index(f"ix_{outbox}_fact", "namespace", "target", "fact_id", "seq"),
            Index(f"ix_{outbox}_due", "namespace", "target", "next_attempt_at"),
        ),
        _metadata=metadata,
    )


if TYPE_CHECKING:
    #: The default store's metadata, for host applications' Alembic environments (built on first access).
    metadata: MetaData


def __getattr__(name: str) -> Any:
    if name == "metadata":
        return models_for().metadata
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
