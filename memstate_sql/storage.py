"""`SQLStorage`: memstate's storage-backend method set on a SQL database.

Each method called on its own is one database transaction; called while a
store operation runs (from a hook, say), it joins that operation's
transaction. The methods keep memstate's names, signatures and meaning, so
code written against memstate's backends works unchanged.
"""

from __future__ import annotations

import threading
import uuid as uuid_mod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, make_url
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session

from memstate_sql import filters as flt
from memstate_sql import indexes, jsondoc
from memstate_sql.core import MAX_ROWS, StoreCore, as_utc, check_key, immutable_error, state_from_doc
from memstate_sql.dialects import DialectSupport, support_for
from memstate_sql.errors import ValidationFailed
from memstate_sql.facts import Operation, TxEntry
from memstate_sql.models import DEFAULT_PREFIX, Models, check_prefix, models_for
from memstate_sql.registry import Constraint
from memstate_sql.repository import Repository
from memstate_sql.schema import prepare_schema
from memstate_sql.uow import TransactionRunner, holding

T = TypeVar("T")
Bindable = Connection | Session


class StorageCore:
    """The storage implementation, written once against a sync `Engine`.

    `SQLStorage` is this class; `AsyncSQLStorage` drives an instance of it
    that sits on an async engine's ``sync_engine`` through SQLAlchemy's
    greenlet bridge.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        owns_engine: bool,
        table_prefix: str = DEFAULT_PREFIX,
        schema: str | None = None,
        auto_migrate: bool = True,
        max_attempts: int = 10,
        max_payload_bytes: int = jsondoc.DEFAULT_MAX_BYTES,
        sleep: Callable[[float], Any] | None = None,
        bound: Connection | Callable[[], Connection] | None = None,
        constraints: dict[str, Constraint] | None = None,
        indexed_paths: Iterable[indexes.IndexedPath | tuple[str, indexes.IndexKind]] | None = None,
    ) -> None:
        self.engine = engine
        #: Declared payload paths with a real index on every database (`memstate_sql.indexes`).
        self.indexed_paths = indexes.declare(indexed_paths)
        self.indexed = indexes.lookup(self.indexed_paths)
        self.owns_engine = owns_engine
        self.models: Models = models_for(check_prefix(table_prefix), schema)
        self.dialect: DialectSupport = support_for(engine.dialect)
        self.auto_migrate = auto_migrate
        self.max_payload_bytes = max_payload_bytes
        #: Constraints registered by the stores on this storage (`MemoryStore.register_schema`).
        self.constraints: dict[str, Constraint] = {} if constraints is None else constraints
        self._schema_ready = False
        self._schema_pending: object | None = None
        self._schema_lock = threading.Lock()
        options: dict[str, Any] = {
            "owner": self,
            "max_attempts": max_attempts,
            "bound": bound,
            "prepare": self._prepare,
        }
        if sleep is not None:
            options["sleep"] = sleep
        self.runner = TransactionRunner(engine, self.models, self.dialect, **options)

    @property
    def table_prefix(self) -> str:
        return self.models.prefix

    def _prepare(self) -> None:
        if self._schema_ready:
            return
        with holding(self._schema_lock):
            if self._schema_ready:
                return
            host = self.runner.host_connection()
            current = None if host is None else host.get_transaction()
            if current is not None and current is self._schema_pending:
                return  # created earlier in this same host transaction
            durable = prepare_schema(
                self.engine,
                self.models,
                auto_migrate=self.auto_migrate,
                connection=host,
                indexed_paths=self.indexed_paths,
            )
            # Created inside the host's open transaction: valid for that transaction only (its
            # rollback removes the tables); check again in the next one.
            self._schema_ready = durable
            self._schema_pending = None if durable else current

    def _read(self, fn: Callable[[Repository], T]) -> T:
        return self.runner.run(fn, write=False, name="read")

    def _write(self, fn: Callable[[Repository], T], name: str) -> T:
        return self.runner.run(fn, write=True, name=name)

    # ------------------------------------------------------------------ memstate backend API

    def load(self, id: str) -> dict[str, Any] | None:
        check_key("fact id", id, required=True)
        found = self._read(lambda repo: repo.get(id))
        return None if found is None else found.doc()

    def load_with_version(self, id: str) -> tuple[dict[str, Any], int] | None:
        """`load` plus the fact's version (incremented by every write)."""
        check_key("fact id", id, required=True)
        found = self._read(lambda repo: repo.get(id))
        return None if found is None else (found.doc(), found.version)

    def save(self, fact_data: dict[str, Any]) -> None:
        """Upsert a fact document. Constraints registered on this storage apply; an
        immutable fact cannot be overwritten (`ConflictError`)."""
        new = state_from_doc(fact_data, self.constraints, self.max_payload_bytes)

        def work(repo: Repository) -> None:
            current = repo.get(new.id, lock=True)
            if current is not None and current.immutable:
                if current.doc() == new.doc():
                    return
                raise immutable_error(current.type, current.id)
            StoreCore.write(repo, current, new)

        self._write(work, "save")

    def delete(self, id: str) -> None:
        check_key("fact id", id, required=True)
        self._write(lambda repo: repo.delete(id), "delete")

    def query(
        self,
        type_filter: str | None = None,
        json_filters: dict[str, Any] | None = None,
        *,
        limit: int | None = None,
        offset: int = 0,
        order_by: str | Sequence[Any] | None = None,
    ) -> list[dict[str, Any]]:
        """Facts of `type_filter` matching `json_filters` (see `memstate_sql.filters`).

        `order_by`: a path or a list of paths (envelope fields or ``payload.`` paths), each
        prefixed with ``-`` for descending; ties are broken by id. Default: ts, then id.
        """
        return self.query_node(type_filter, flt.parse(json_filters), limit=limit, offset=offset, order_by=order_by)

    def query_node(
        self,
        type_filter: str | None,
        node: flt.Node,
        *,
        limit: int | None = None,
        offset: int = 0,
        order_by: str | Sequence[Any] | None = None,
    ) -> list[dict[str, Any]]:
        check_key("type_filter", type_filter, required=False)
        order = flt.parse_order(order_by)
        _check_window(limit, offset)
        found = self._read(
            lambda repo: repo.query(type_filter, node, indexed=self.indexed, order=order, limit=limit, offset=offset)
        )
        return [f.doc() for f in found]

    def count(self, type_filter: str | None = None, json_filters: dict[str, Any] | None = None) -> int:
        """How many facts `query(type_filter, json_filters)` would return."""
        return self.count_node(type_filter, flt.parse(json_filters))

    def count_node(self, type_filter: str | None, node: flt.Node) -> int:
        check_key("type_filter", type_filter, required=False)
        return self._read(lambda repo: repo.count(type_filter, node, indexed=self.indexed))

    def query_page(
        self,
        type_filter: str | None,
        node: flt.Node,
        order: tuple[flt.OrderSpec, ...],
        batch_size: int,
        after: tuple[Any, ...] | None,
    ) -> tuple[list[dict[str, Any]], tuple[Any, ...] | None]:
        """One batch of a streamed query: the docs after the row keyed `after`, and the last row's key."""
        rows = self._read(
            lambda repo: repo.query_page(
                type_filter, node, indexed=self.indexed, order=order, limit=batch_size, after=after
            )
        )
        return [fact.doc() for fact, _ in rows], (rows[-1][1] if rows else None)

    def iter_query(
        self,
        type_filter: str | None = None,
        json_filters: dict[str, Any] | None = None,
        *,
        order_by: str | Sequence[Any] | None = None,
        batch_size: int = 500,
    ) -> Iterator[dict[str, Any]]:
        """Stream the result of `query` in batches of `batch_size` rows (keyset pagination).

        Each batch is its own short read transaction: facts committed while the
        iteration runs may or may not be seen, but no fact is returned twice
        unless its sort key changed in between.
        """
        node = flt.parse(json_filters)
        check_key("type_filter", type_filter, required=False)
        order = flt.parse_order(order_by)
        check_batch(batch_size)
        return paginate(lambda after: self.query_page(type_filter, node, order, batch_size, after))

    def append_tx(self, tx_data: dict[str, Any]) -> None:
        """Append a log entry. The entry's ``seq`` is assigned by the database (a given one is ignored)."""
        if not isinstance(tx_data, Mapping):
            raise ValidationFailed(f"a log entry must be a mapping, got {type(tx_data).__name__}")
        data = dict(tx_data)
        data.setdefault("seq", 0)
        data.setdefault("uuid", str(uuid_mod.uuid4()))
        try:
            entry = TxEntry.model_validate(data)
        except Exception as exc:
            raise ValidationFailed(f"invalid log entry: {exc}") from exc
        check_key("session_id", entry.session_id, required=False)
        check_key("fact_id", entry.fact_id, required=False)
        check_key("actor", entry.actor, required=False)
        before = None if entry.fact_before is None else jsondoc.check_value(entry.fact_before, "fact_before")
        after = None if entry.fact_after is None else jsondoc.check_value(entry.fact_after, "fact_after")
        self._write(
            lambda repo: repo.append(
                uuid=entry.uuid,
                op=Operation(entry.op).value,
                session_id=entry.session_id,
                fact_id=entry.fact_id,
                ts=as_utc(entry.ts),
                fact_before=before,
                fact_after=after,
                actor=entry.actor,
                reason=entry.reason,
            ),
            "append_tx",
        )

    def get_tx_log(self, session_id: str | None, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        """The session's log, newest first (``session_id=None``: entries without a session)."""
        check_key("session_id", session_id, required=False)
        for name, value in (("limit", limit), ("offset", offset)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValidationFailed(f"{name} must be a non-negative integer")
        limit, offset = min(limit, MAX_ROWS), min(offset, MAX_ROWS)
        return [e.doc() for e in self._read(lambda repo: repo.tx_log(session_id, limit=limit, offset=offset))]

    def delete_session(self, session_id: str) -> list[str]:
        check_key("session_id", session_id, required=True)

        def work(repo: Repository) -> list[str]:
            ids = [f.id for f in repo.session_facts(session_id, lock=True)]
            repo.delete_many(ids)
            return ids

        return self._write(work, "delete_session")

    def get_session_facts(self, session_id: str) -> list[dict[str, Any]]:
        check_key("session_id", session_id, required=True)
        return [f.doc() for f in self._read(lambda repo: repo.session_facts(session_id))]

    def delete_txs(self, tx_uuids: list[str]) -> None:
        if not isinstance(tx_uuids, Sequence) or isinstance(tx_uuids, str):
            raise ValidationFailed("tx_uuids must be a list of strings")
        uuids = [check_key("tx uuid", u, required=True) or "" for u in tx_uuids]
        self._write(lambda repo: repo.delete_txs(uuids), "delete_txs")

    def close(self) -> None:
        if self.owns_engine:
            self.engine.dispose()

    # ------------------------------------------------------------------ extensions

    def history(self, fact_id: str) -> list[dict[str, Any]]:
        """Every log entry of one fact, oldest first, including entries undone by a rollback."""
        check_key("fact id", fact_id, required=True)
        return [{**e.doc(), "reverted_by": e.reverted_by} for e in self._read(lambda repo: repo.fact_history(fact_id))]


def _check_window(limit: int | None, offset: int) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValidationFailed("limit must be None or a non-negative integer")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValidationFailed("offset must be a non-negative integer")


def check_batch(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValidationFailed("batch_size must be a positive integer")
    return batch_size


Page = tuple[list[dict[str, Any]], "tuple[Any, ...] | None"]


def paginate(fetch: Callable[[tuple[Any, ...] | None], Page]) -> Iterator[dict[str, Any]]:
    """Drive keyset pagination: fetch pages until one comes back empty."""
    after: tuple[Any, ...] | None = None
    while True:
        docs, last = fetch(after)
        yield from docs
        if last is None:
            return
        after = last


def _engine_from(url: str | URL, engine_options: Mapping[str, Any] | None) -> Engine:
    parsed = make_url(url) if isinstance(url, str) else url
    dialect = support_for(parsed.get_backend_name())
    options = {**dialect.engine_options(parsed), **(engine_options or {})}
    engine = create_engine(parsed, **options)
    dialect.configure_engine(engine)
    return engine


class SQLStorage(StorageCore):
    """memstate's storage backend on SQLite, PostgreSQL or MySQL/MariaDB.

    `url_or_engine`: a SQLAlchemy URL (``"sqlite:///memory.db"``,
    ``"postgresql+psycopg://..."``, ``"mysql+pymysql://..."``), an `Engine`
    (used as is; memstate_sql never disposes of it), or a `Connection` /
    ORM `Session` of a host application, whose transaction every operation
    joins through a SAVEPOINT.

    Start-up (`memstate_sql.schema`): a database without the prefix's tables, or
    at an older revision, is migrated on first use when `auto_migrate` is true
    (the default) and refused with `SchemaVersionError` otherwise; a database
    migrated by a newer memstate_sql is always refused.
    """

    def __init__(
        self,
        url_or_engine: str | URL | Engine | Connection | Session,
        *,
        table_prefix: str = DEFAULT_PREFIX,
        schema: str | None = None,
        auto_migrate: bool = True,
        engine_options: Mapping[str, Any] | None = None,
        max_attempts: int = 10,
        max_payload_bytes: int = jsondoc.DEFAULT_MAX_BYTES,
        indexed_paths: Iterable[indexes.IndexedPath | tuple[str, indexes.IndexKind]] | None = None,
    ) -> None:
        bound: Connection | Callable[[], Connection] | None = None
        if isinstance(url_or_engine, str | URL):
            engine, owns = _engine_from(url_or_engine, engine_options), True
        elif isinstance(url_or_engine, Engine):
            engine, owns = url_or_engine, False
        elif isinstance(url_or_engine, Session):
            # The session's connection of the moment: it changes after each commit.
            bound = url_or_engine.connection
            bind = url_or_engine.get_bind()
            engine, owns = (bind if isinstance(bind, Engine) else bind.engine), False
        elif isinstance(url_or_engine, Connection):
            bound = url_or_engine
            engine, owns = bound.engine, False
        else:
            raise ValidationFailed(
                "SQLStorage takes a database URL, an Engine, a Connection or a Session, "
                f"not {type(url_or_engine).__name__}"
            )
        super().__init__(
            engine,
            owns_engine=owns,
            table_prefix=table_prefix,
            schema=schema,
            auto_migrate=auto_migrate,
            max_attempts=max_attempts,
            max_payload_bytes=max_payload_bytes,
            bound=bound,
            indexed_paths=indexed_paths,
        )

    def __repr__(self) -> str:
        return (
            f"SQLStorage({self.engine.url.render_as_string(hide_password=True)!r}, table_prefix={self.table_prefix!r})"
        )

    def __enter__(self) -> SQLStorage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
