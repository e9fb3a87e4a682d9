"""SQLAlchemy declarative models: the facts table, the transaction log and the outbox.

Both tables are named after a configurable prefix (``memstate`` by default), so
one database can hold several independent stores. `models_for(prefix, schema)`
builds (once per prefix and schema) a declarative base with its own `MetaData`
and the two mapped classes; the column definitions live once, in the mixins.

Portability rules applied here: indexed strings are at most 191 characters
(utf8mb4 index limits), every constraint and index has an explicit name of at
most 60 characters, timestamps keep microseconds in UTC on every dialect, the
log sequence is a 64-bit database-assigned identity.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator, TypeEngine

from memstate_sql import jsondoc
from memstate_sql.dialects import support_for
from memstate_sql.errors import ValidationFailed
from memstate_sql.records import KEY_LENGTH
from memstate_sql.timeutil import as_utc

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


class FactColumns:
    """Columns of the facts table. The envelope is real, indexed columns; the payload is JSON."""

    #: The tenant the fact belongs to ('' is the default namespace); ids are unique per namespace.
    namespace: Mapped[str] = mapped_column(KeyString(), primary_key=True, server_default="")
    id: Mapped[str] = mapped_column(KeyString(), primary_key=True)
    type: Mapped[str] = mapped_column(KeyString())
    session_id: Mapped[str | None] = mapped_column(KeyString())
    source: Mapped[str | None] = mapped_column(KeyString())
    ts: Mapped[datetime] = mapped_column(UTCDateTime())
    payload: Mapped[dict[str, Any]] = mapped_column(JSONDocument())
    #: Incremented by every write; the optimistic-concurrency token.
    version: Mapped[int] = mapped_column(Integer, default=1)
    #: Set from the type's `Constraint(immutable=True)` at creation; every update path
    #: requires it to be false in its WHERE clause, so the rule holds for every writer.
    immutable: Mapped[bool] = mapped_column(Boolean(create_constraint=False), default=False)
    #: Canonical JSON of the singleton key's value (or its digest when long); unique per type.
    singleton: Mapped[str | None] = mapped_column(KeyString())
    #: When the fact stops existing for every reader (NULL: never); `sweep` deletes it afterwards.
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: The document `SQLStorage.save` was given, without its payload, when the columns above cannot
    #: render it exactly (extra or missing keys, another spelling of ts); NULL: their canonical
    #: rendering, as for every fact the store writes itself (docs/contract.md).
    document: Mapped[dict[str, Any] | None] = mapped_column(JSONDocument())
    #: The unique key's column (`records.singleton_slot`): the singleton token, or a per-fact
    #: sentinel for facts without one, so the key is never NULL (Galera certifies NULLs as equal).
    singleton_slot: Mapped[str] = mapped_column(KeyString())


class TxColumns:
    """Columns of the transaction log."""

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    namespace: Mapped[str] = mapped_column(KeyString(), server_default="")
    uuid: Mapped[str] = mapped_column(String(36))
    op: Mapped[str] = mapped_column(String(32))
    session_id: Mapped[str | None] = mapped_column(KeyString())
    fact_id: Mapped[str | None] = mapped_column(KeyString())
    actor: Mapped[str | None] = mapped_column(KeyString())
    reason: Mapped[str | None] = mapped_column(Text)
    ts: Mapped[datetime] = mapped_column(UTCDateTime())
    fact_before: Mapped[dict[str, Any] | None] = mapped_column(JSONDocument())
    fact_after: Mapped[dict[str, Any] | None] = mapped_column(JSONDocument())
    #: For DISCARD_SESSION entries: the facts the discard deleted, so that a rollback can restore them.
    discarded: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONDocument())
    #: Set when a store rollback undoes the entry (the rollback's uuid); undone entries are
    #: kept for audit but are no longer part of the session's active log.
    reverted_by: Mapped[str | None] = mapped_column(String(36))
    #: The record `SQLStorage.append_tx` was given, without seq and without the images held above,
    #: when the columns cannot render it exactly; NULL: their canonical rendering (docs/contract.md).
    document: Mapped[dict[str, Any] | None] = mapped_column(JSONDocument())
    #: The entry's position in its session's log: 1, 2, 3... in the order the session's operations
    #: committed, assigned in the entry's transaction under the session's row in the sessions table
    #: (docs/log-order.md). NULL for entries without a session: they take no position, so their writers
    #: are not serialised. ``seq`` is unique but follows neither commit order nor a session's order on
    #: every engine.
    session_seq: Mapped[int | None] = mapped_column(SeqType)


class SessionColumns:
    """Columns of the sessions table: one row per session holding the last position handed out; writing
    it serialises (and, on Galera, certifies) the session's log writers. Entries without a session have
    no row (and no position)."""

    namespace: Mapped[str] = mapped_column(KeyString(), primary_key=True)
    #: The session id.
    session_id: Mapped[str] = mapped_column(KeyString(), primary_key=True)
    #: Always false since entries without a session take no position (kept in the key for the schema).
    without_session: Mapped[bool] = mapped_column(Boolean(create_constraint=False), primary_key=True)
    last_seq: Mapped[int] = mapped_column(SeqType)


class VectorColumns:
    """Columns of the vector index (`memstate_sql.vectors`): one embedding per fact, written in the
    transaction that writes the fact. A row serves searches only while its `version` is the fact's."""

    namespace: Mapped[str] = mapped_column(KeyString(), primary_key=True, server_default="")
    fact_id: Mapped[str] = mapped_column(KeyString(), primary_key=True)
    #: The fact version the embedding was computed for (a search joins on it: never a stale vector).
    version: Mapped[int] = mapped_column(Integer)
    dim: Mapped[int] = mapped_column(Integer)
    #: SHA-256 (hex) of the embedded text: a write whose text is unchanged keeps the vector.
    text_hash: Mapped[str] = mapped_column(String(64))
    #: The unit-length embedding, packed little-endian float32 (4 * dim bytes).
    vector: Mapped[bytes] = mapped_column(LargeBinary)


class OutboxColumns:
    """Columns of the outbox: what an external index (a vector store) must still learn.

    A hook in outbox or after-commit mode (`memstate_sql.outbox`) inserts one row per changed fact in the
    operation's own transaction; a dispatcher deletes it once the index has the fact's state as of that
    row. A row is leased (`lease_owner`, `lease_until`) while one dispatcher delivers its fact.
    """

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    namespace: Mapped[str] = mapped_column(KeyString(), server_default="")
    #: The external index the row is for (the hook's `index_name`, e.g. ``qdrant:memory``).
    target: Mapped[str] = mapped_column(KeyString())
    fact_id: Mapped[str] = mapped_column(KeyString())
    #: ``upsert`` or ``delete``: what the operation did (delivery sends the fact's state at delivery time).
    op: Mapped[str] = mapped_column(String(16))
    #: The fact's version after the operation (for a delete: the version it had).
    version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(Text)
    lease_owner: Mapped[str | None] = mapped_column(String(36))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime())


@dataclass(frozen=True)
class Models:
    """The mapped classes and metadata for one table prefix (and optional schema)."""

    prefix: str
    schema: str | None
    metadata: MetaData
    Fact: type[FactColumns]
    Tx: type[TxColumns]
    Vector: type[VectorColumns]
    Outbox: type[OutboxColumns]
    Session: type[SessionColumns]

    @property
    def version_table(self) -> str:
        return f"{self.prefix}_alembic_version"


def check_prefix(prefix: str) -> str:
    if not isinstance(prefix, str) or not _PREFIX_RE.match(prefix):
        raise ValidationFailed(
            f"table_prefix {prefix!r} is invalid: use 1-30 characters, lowercase letters, digits and "
            "underscores, starting with a letter"
        )
    return prefix


def payload_gin_index(facts: str) -> Index:
    """PostgreSQL only: a GIN ``jsonb_path_ops`` index on the payload, which serves the
    query engine's ``@>`` containment filters. Other databases have no such index; the
    dialects it exists on are in ``info["dialects"]`` (read by the migration filters)."""
    index = Index(
        f"ix_{facts}_payload_gin",
        "payload",
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


@functools.cache
def models_for(prefix: str = DEFAULT_PREFIX, schema: str | None = None) -> Models:
    """Build (once) the declarative models for a table prefix."""
    check_prefix(prefix)
    facts, log, vectors, outbox = f"{prefix}_facts", f"{prefix}_tx", f"{prefix}_vectors", f"{prefix}_outbox"

    class Base(DeclarativeBase):
        metadata = MetaData(schema=schema)

    class FactRow(FactColumns, Base):
        __tablename__ = facts
        __table_args__ = (
            UniqueConstraint("namespace", "type", "singleton_slot", name=f"uq_{facts}_singleton_slot"),
            Index(f"ix_{facts}_ns_type", "namespace", "type"),
            Index(f"ix_{facts}_ns_session_id", "namespace", "session_id"),
            Index(f"ix_{facts}_ns_source", "namespace", "source"),
            Index(f"ix_{facts}_ns_ts", "namespace", "ts"),
            Index(f"ix_{facts}_ns_expires_at", "namespace", "expires_at"),
            CheckConstraint("version >= 1", name=f"ck_{facts}_version"),
            payload_gin_index(facts),
        )

    class TxRow(TxColumns, Base):
        __tablename__ = log
        __table_args__ = (
            UniqueConstraint("namespace", "uuid", name=f"uq_{log}_uuid"),
            Index(f"ix_{log}_ns_session_seq", "namespace", "session_id", "seq"),
            Index(f"ix_{log}_ns_fact_id", "namespace", "fact_id"),
            # Not UNIQUE: Galera certifies a unique key holding NULLs as a shared key, so concurrent inserts
            # without a session (session_seq NULL) would conflict. The session's row lock keeps a
            # session's positions unique; `verify` checks it.
            Index(f"ix_{log}_session_position", "namespace", "session_id", "session_seq"),
        )

    class SessionRow(SessionColumns, Base):
        __tablename__ = f"{prefix}_sessions"

    class VectorRow(VectorColumns, Base):
        __tablename__ = vectors
        __table_args__ = (
            PrimaryKeyConstraint("namespace", "fact_id", name=f"pk_{vectors}"),
            CheckConstraint("dim >= 1", name=f"ck_{vectors}_dim"),
        )

    class OutboxRow(OutboxColumns, Base):
        __tablename__ = outbox
        __table_args__ = (
            Index(f"ix_{outbox}_fact", "namespace", "target", "fact_id", "seq"),
            Index(f"ix_{outbox}_due", "namespace", "target", "next_attempt_at"),
        )

    return Models(
        prefix=prefix,
        schema=schema,
        metadata=Base.metadata,
        Fact=FactRow,
        Tx=TxRow,
        Vector=VectorRow,
        Outbox=OutboxRow,
        Session=SessionRow,
    )


#: The default store's metadata, for host applications' Alembic environments.
metadata = models_for().metadata
