"""`SQLStorage`: memstate's storage-backend method set on a SQL database.

Each method called on its own is one database transaction; called while a
store operation runs (from a hook, say), it joins that operation's
transaction. The methods keep memstate's names, signatures and meaning, so
code written against memstate's backends works unchanged.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeGuard, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.engine import URL

from memstate_sql import indexes, jsondoc, operations, vectors
from memstate_sql.dialects import DialectSupport, engine_for, support_for
from memstate_sql.errors import ValidationFailed
from memstate_sql.facts import Operation
from memstate_sql.hooks import HookSet
from memstate_sql.indexes import IndexedPath, IndexKind
from memstate_sql.models import DEFAULT_PREFIX, Models, check_prefix, models_for
from memstate_sql.paging import keyset_pages
from memstate_sql.records import FactState
from memstate_sql.registry import Constraint
from memstate_sql.repository import Repository
from memstate_sql.schema import SchemaGate
from memstate_sql.uow import TransactionRunner
from memstate_sql.validation import (
    MAX_ROWS,
    QuerySpec,
    check_batch,
    check_expiry,
    check_key,
    check_namespace,
    check_window,
    immutable_error,
    query_spec,
    record_from_tx,
    state_from_doc,
)
from memstate_sql.verify import VerifyReport, verify

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

T = TypeVar("T")


def _is_orm_session(value: object) -> TypeGuard[Session]:
    """Whether `value` is an ORM `Session`, without importing ``sqlalchemy.orm``: a process that never
    imported it holds no Session."""
    orm = sys.modules.get("sqlalchemy.orm")
    return orm is not None and isinstance(value, orm.Session)


def check_engine_settings(
    url_or_engine: object, sqlite_synchronous: str | None, pooler: str | None, read_your_writes: bool = False
) -> None:
    """`sqlite_synchronous`, `pooler` and `read_your_writes` configure an engine memstate_sql creates:
    refused with anything else."""
    if isinstance(url_or_engine, str | URL):
        return
    if read_your_writes:
        raise ValidationFailed(
            "read_your_writes configures an engine memstate_sql creates (from a URL); on your own engine "
            "run SET SESSION wsrep_sync_wait = 3 on each connection (e.g. connect_args init_command)"
        )
    if sqlite_synchronous is not None:
        raise ValidationFailed(
            "sqlite_synchronous configures an engine memstate_sql creates (from a URL); "
            "set PRAGMA synchronous on your own engine's connections instead"
        )
    if pooler is not None:
        raise ValidationFailed(
            "pooler configures an engine memstate_sql creates (from a URL); on your own engine, pass "
            "connect_args={'prepare_threshold': None} to create_engine instead (docs/poolers.md)"
        )


class SQLStorage:
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

    `sqlite_synchronous` (SQLite URLs only; WAL mode either way): ``"full"`` (the default) makes every
    commit durable on disk before it returns (survives a power failure; one fsync per commit);
    ``"normal"`` (what memstate and Rails 8 run) keeps commits atomic and safe against application
    crashes but may lose the last commits on a power failure or an OS crash, for several times the
    write rate on disks with slow fsync (README.md, "SQLite durability").

    `read_your_writes` (URLs only): on a Galera cluster node, every read and every UPDATE/DELETE of
    the storage's sessions waits until the node has applied everything the cluster had committed
    when it was sent (``wsrep_sync_wait = 3``), so a fact committed through another node is found.
    Costs about one cluster round trip per statement (docs/scaling.md). Elsewhere a no-op: one
    server, or a PostgreSQL primary, always reads its own commits.

    `pooler` (PostgreSQL URLs only): ``"transaction"`` when the URL reaches PostgreSQL through a
    transaction-pooling proxy (PgBouncer ``pool_mode = transaction``): server-side prepared statements
    are disabled (psycopg's ``prepare_threshold=None``). Everything else memstate_sql does is
    transaction-scoped with or without it (docs/poolers.md).
    """

    def __init__(
        self,
        url_or_engine: str | URL | Engine | Connection | Session,
        *,
        namespace: str | None = None,
        table_prefix: str = DEFAULT_PREFIX,
        schema: str | None = None,
        auto_migrate: bool = True,
        engine_options: Mapping[str, Any] | None = None,
        max_attempts: int = 10,
        max_payload_bytes: int = jsondoc.DEFAULT_MAX_BYTES,
        indexed_paths: Iterable[indexes.IndexedPath | tuple[str, indexes.IndexKind]] | None = None,
        sqlite_synchronous: str | None = None,
        read_your_writes: bool = False,
        vector_index: vectors.VectorIndex | None = None,
        pooler: str | None = None,
    ) -> None:
        bound: Connection | Callable[[], Connection] | None = None
        check_engine_settings(url_or_engine, sqlite_synchronous, pooler, read_your_writes)
        if isinstance(url_or_engine, str | URL):
            engine = engine_for(
                url_or_engine,
                engine_options,
                sqlite_synchronous=sqlite_synchronous,
                read_your_writes=read_your_writes,
                pooler=pooler,
            )
            owns = True
        elif isinstance(url_or_engine, Engine):
            engine, owns = url_or_engine, False
        elif _is_orm_session(url_or_engine):
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
        self._setup(
            engine,
            owns_engine=owns,
            bound=bound,
            namespace=namespace,
            table_prefix=table_prefix,
            schema=schema,
            auto_migrate=auto_migrate,
            max_attempts=max_attempts,
            max_payload_bytes=max_payload_bytes,
            indexed_paths=indexed_paths,
            vector_index=vector_index,
        )

    @classmethod
    def bridged(
        cls,
        engine: Engine,
        *,
        bound: Connection | Callable[[], Connection] | None = None,
        sleep: Callable[[float], Any] | None = None,
        namespace: str | None = None,
        table_prefix: str = DEFAULT_PREFIX,
        schema: str | None = None,
        auto_migrate: bool = True,
        max_attempts: int = 10,
        max_payload_bytes: int = jsondoc.DEFAULT_MAX_BYTES,
        indexed_paths: Iterable[indexes.IndexedPath | tuple[str, indexes.IndexKind]] | None = None,
        vector_index: vectors.VectorIndex | None = None,
    ) -> SQLStorage:
        """The storage an `AsyncSQLStorage` drives through SQLAlchemy's greenlet bridge: on the async
        engine's ``sync_engine`` (never disposed of here), joined to a host connection (or a callable
        giving the host session's connection of the moment), with an awaiting `sleep`."""
        storage = cls.__new__(cls)
        storage._setup(
            engine,
            owns_engine=False,
            bound=bound,
            sleep=sleep,
            namespace=namespace,
            table_prefix=table_prefix,
            schema=schema,
            auto_migrate=auto_migrate,
            max_attempts=max_attempts,
            max_payload_bytes=max_payload_bytes,
            indexed_paths=indexed_paths,
            vector_index=vector_index,
        )
        return storage

    def _setup(
        self,
        engine: Engine,
        *,
        owns_engine: bool,
        bound: Connection | Callable[[], Connection] | None,
        namespace: str | None,
        table_prefix: str,
        schema: str | None,
        auto_migrate: bool,
        max_attempts: int,
        max_payload_bytes: int,
        indexed_paths: Iterable[indexes.IndexedPath | tuple[str, indexes.IndexKind]] | None,
        sleep: Callable[[float], Any] | None = None,
        vector_index: vectors.VectorIndex | None = None,
    ) -> None:
        self.engine = engine
        #: The tenant this storage reads and writes: no operation through it sees another namespace's rows.
        self.namespace = check_namespace(namespace)
        #: What `for_namespace` needs to open a sibling handle on the same engine.
        self._options: dict[str, Any] = {
            "bound": bound,
            "sleep": sleep,
            "table_prefix": table_prefix,
            "schema": schema,
            "auto_migrate": auto_migrate,
            "max_attempts": max_attempts,
            "max_payload_bytes": max_payload_bytes,
            "indexed_paths": indexed_paths,
            "vector_index": vector_index,
        }
        if vector_index is not None and not isinstance(vector_index, vectors.VectorIndex):
            raise ValidationFailed("vector_index must be a memstate_sql.VectorIndex")
        #: The in-database vector index `MemoryStore.search` uses (docs/search.md); None: search asks the hooks.
        self.vector_index = vector_index
        #: Declared payload paths with a real index on every database (`memstate_sql.indexes`).
        self.indexed_paths = indexes.declare(indexed_paths)
        self.indexed = indexes.lookup(self.indexed_paths)
        self.owns_engine = owns_engine
        self.models: Models = models_for(check_prefix(table_prefix), schema)
        self.dialect: DialectSupport = support_for(engine.dialect)
        self.auto_migrate = auto_migrate
        self.max_payload_bytes = max_payload_bytes
        #: Constraints registered by the stores on this storage (`MemoryStore.register_schema`).
        self.constraints: dict[str, Constraint] = {}
        #: Types whose constraint was registered but not yet applied to the rows already stored.
        self._unapplied: set[str] = set()
        options: dict[str, Any] = {"max_attempts": max_attempts, "bound": bound, "namespace": self.namespace}
        if sleep is not None:
            options["sleep"] = sleep
        self.runner = TransactionRunner(engine, self.models, self.dialect, owner=self, **options)
        #: A `for_namespace` sibling runs on its parent's held connections: closing it leaves them be.
        self._shares_readers = False
        self.schema_gate = SchemaGate(
            engine,
            self.models,
            auto_migrate=auto_migrate,
            indexed_paths=self.indexed_paths,
            vector_dims=(vector_index.dim,)
            if vector_index is not None and vector_index.ann and vector_index.in_database != "off"
            else (),
            host=self.runner.host_connection,
        )
        self.runner.prepare = self.schema_gate.ensure

    @property
    def table_prefix(self) -> str:
        return self.models.prefix

    def for_namespace(self, namespace: str | None) -> SQLStorage:
        """A storage for another namespace on the same engine and tables (nothing is opened or
        disposed of twice: closing it leaves the engine to this storage). It shares this storage's
        registered constraints and its schema check."""
        sibling = SQLStorage.bridged(self.engine, **{**self._options, "namespace": namespace})
        sibling.constraints = self.constraints
        sibling._unapplied = set(self.constraints)
        sibling.schema_gate = self.schema_gate
        sibling.runner.prepare = self.schema_gate.ensure
        sibling.runner.readers = self.runner.readers  # one held connection per thread, not per tenant
        sibling._shares_readers = True
        return sibling

    def transaction(
        self,
        work: Callable[[Repository], T],
        *,
        write: bool = True,
        name: str = "operation",
        fact_id: str | None = None,
        session_id: str | None = None,
        alone: Callable[[Repository], T | None] | None = None,
    ) -> T:
        """Run `work` as one unit of work (`memstate_sql.uow`): one database transaction, committed when
        it returns, rolled back when it raises, retried on transient failures; joined to the enclosing
        operation's transaction when called from inside one (a hook's storage call). `alone`: the same
        work as one self-contained write, tried first where it can run in autocommit (`TransactionRunner.run`)."""
        if write and self._unapplied:
            self._apply_constraints()
        return self.runner.run(work, write=write, name=name, fact_id=fact_id, session_id=session_id, alone=alone)

    def register_constraint(self, typename: str, constraint: Constraint) -> None:
        """Register `constraint` for `typename` on this storage (every store on it shares it). Facts of
        the type stored before (imported, written by another application) are brought under it before
        the next write (`Operations.apply_constraints`)."""
        if not isinstance(constraint, Constraint):
            raise ValidationFailed("constraint must be a memstate_sql.Constraint")
        if self.constraints.get(typename) != constraint:
            self.constraints[typename] = constraint
            self._unapplied.add(typename)

    def declare_indexed_paths(self, paths: Iterable[IndexedPath | tuple[str, IndexKind]]) -> None:
        """Declare more payload paths to index, as ``indexed_paths=`` does, on a storage already built (an
        integration that owns some fact types declares its paths this way). Their indexes are created,
        idempotently, before the storage's next operation."""
        merged = indexes.declare([*self.indexed_paths, *indexes.declare(paths)])
        if merged == self.indexed_paths:
            return
        self.indexed_paths = merged
        self.indexed = indexes.lookup(merged)
        self.schema_gate.indexed_paths = merged
        self.schema_gate.ready = False  # the next operation prepares the schema again: creates the new indexes

    def make_operations(self, hooks: HookSet | None = None) -> operations.Operations:
        """The store semantics on this storage's constraints and vector index, telling `hooks`."""
        return operations.Operations(
            HookSet() if hooks is None else hooks, self.constraints, self.max_payload_bytes, vectors=self.vector_index
        )

    def _apply_constraints(self) -> None:
        types = sorted(self._unapplied)
        ops = self.make_operations()
        self.runner.run(lambda repo: ops.apply_constraints(repo, types), name="apply_constraints")
        self._unapplied.difference_update(types)

    def _read(self, fn: Callable[[Repository], T], *, one_statement: bool = False) -> T:
        """A read transaction; `one_statement`: `fn` sends a single SELECT (no BEGIN/COMMIT needed)."""
        return self.runner.run(fn, write=False, name="read", one_statement=one_statement)

    def _write(self, fn: Callable[[Repository], T], name: str) -> T:
        return self.transaction(fn, write=True, name=name)

    # ------------------------------------------------------------------ memstate backend API

    def load(self, id: str) -> dict[str, Any] | None:
        check_key("fact id", id, required=True)
        found = self._read(lambda repo: repo.get(id), one_statement=True)
        return None if found is None else found.doc()

    def load_with_version(self, id: str) -> tuple[dict[str, Any], int] | None:
        """`load` plus the fact's version (incremented by every write)."""
        check_key("fact id", id, required=True)
        found = self._read(lambda repo: repo.get(id), one_statement=True)
        return None if found is None else (found.doc(), found.version)

    def save(self, fact_data: dict[str, Any]) -> None:
        """Upsert a fact document; `load` returns exactly this document (docs/contract.md: ``id``,
        ``type`` and ``payload`` are required, other keys and any ``ts`` are kept as given).
        Constraints registered on this storage apply; an immutable fact cannot be overwritten
        (`ConflictError`)."""
        new = state_from_doc(fact_data, self.constraints, self.max_payload_bytes)

        def work(repo: Repository) -> None:
            current = repo.get(new.id, lock=True)
            if current is not None and current.immutable:
                if current.doc() == new.doc():
                    return
                raise immutable_error(current.type, current.id)
            written = operations.write(repo, current, new)
            if self.vector_index is not None:
                vectors.apply(repo, self.vector_index, [(Operation.UPDATE, written.id, written)])

        with vectors.prepared(self.vector_index, [(new.type, new.payload)]):
            self._write(work, "save")

    def delete(self, id: str) -> None:
        check_key("fact id", id, required=True)

        def work(repo: Repository) -> None:
            if repo.delete(id) and self.vector_index is not None:
                vectors.apply(repo, self.vector_index, [(Operation.DELETE, id, None)])

        self._write(work, "delete")

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
        return self.select(query_spec(type_filter, json_filters, order_by=order_by), limit=limit, offset=offset)

    def count(self, type_filter: str | None = None, json_filters: dict[str, Any] | None = None) -> int:
        """How many facts `query(type_filter, json_filters)` would return."""
        return self.tally(query_spec(type_filter, json_filters))

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
        return self.stream(query_spec(type_filter, json_filters, order_by=order_by), batch_size)

    # The three readers above and the stores' readers all come down to these, with a checked `QuerySpec`.

    def select(self, spec: QuerySpec, *, limit: int | None = None, offset: int = 0) -> list[dict[str, Any]]:
        """The documents of the facts `spec` selects, in its order, within the window."""
        check_window(limit, offset)
        found = self._read(
            lambda repo: repo.query(spec, indexed=self.indexed, limit=limit, offset=offset, keys=False),
            one_statement=True,
        )
        return [fact.doc() for fact, _ in found]

    def tally(self, spec: QuerySpec) -> int:
        """How many facts `spec` selects."""
        return self._read(lambda repo: repo.count(spec, indexed=self.indexed), one_statement=True)

    def page(
        self, spec: QuerySpec, batch_size: int, after: tuple[Any, ...] | None
    ) -> tuple[list[dict[str, Any]], tuple[Any, ...] | None]:
        """One batch of a stream: the documents after the row whose sort key is `after`, and the last
        row's sort key (None when the batch is empty)."""
        rows = self._rows(spec, batch_size, after)
        return [fact.doc() for fact, _ in rows], (rows[-1][1] if rows else None)

    def stream(self, spec: QuerySpec, batch_size: int = 500) -> Iterator[dict[str, Any]]:
        """Stream what `spec` selects in batches (see `iter_query`); arguments are checked at once."""
        check_batch(batch_size)
        pages = keyset_pages(lambda after: self._rows(spec, batch_size, after), key=lambda row: row[1], size=batch_size)
        return (fact.doc() for page in pages for fact, _ in page)

    def _rows(
        self, spec: QuerySpec, batch_size: int, after: tuple[Any, ...] | None
    ) -> list[tuple[FactState, tuple[Any, ...]]]:
        return self._read(
            lambda repo: repo.query(spec, indexed=self.indexed, limit=batch_size, after=after), one_statement=True
        )

    def append_tx(self, tx_data: dict[str, Any]) -> None:
        """Append a log record, in any shape memstate's backends store (every key optional; see
        `validation.record_from_tx` and docs/contract.md). `get_tx_log` returns it as given, except
        ``seq``, which the database assigns (one increasing sequence for every process)."""
        entry = record_from_tx(tx_data)
        self._write(lambda repo: repo.insert_log([entry]), "append_tx")

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
            if self.vector_index is not None:
                vectors.apply(repo, self.vector_index, [(Operation.DELETE, i, None) for i in ids])
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
        if not self._shares_readers:
            self.runner.close()  # give every thread's held connection back
        if self.owns_engine:
            self.engine.dispose()

    def explain_search(self) -> vectors.SearchPlan:
        """How `MemoryStore.search` computes searches on this storage (docs/search.md): ``mode``
        ``"in-database"`` (the database's vector extension ranks the vectors: sqlite-vec), ``"exact
        scan"`` (with the ``reason`` the extension is not used), or ``"hooks"`` (no `vector_index`: the
        hooks answer). Loads the extension into a connection as a search would; raises `StorageError`
        as a search would where ``VectorIndex(in_database="required")`` cannot be honoured."""
        index = self.vector_index
        if index is None:
            return vectors.SearchPlan("hooks", "the store's hooks", "no vector_index on this storage")
        return self._read(functools.partial(vectors.plan, index=index))

    def verify(self) -> VerifyReport:
        """`memstate_sql.verify` over this storage's namespace, through its own engine."""
        return verify(
            self.engine,
            table_prefix=self.table_prefix,
            schema=self.models.schema,
            namespace=self.namespace,
            all_namespaces=False,
        )

    def __repr__(self) -> str:
        return (
            f"SQLStorage({self.engine.url.render_as_string(hide_password=True)!r}, table_prefix={self.table_prefix!r})"
        )

    def __enter__(self) -> SQLStorage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ extensions

    def sweep(self, limit: int | None = None, *, batch_size: int = 1000, exclusive: bool = False) -> int:
        """Delete this namespace's expired facts, at most `limit` (None: all there are now), in batches
        of `batch_size`, each batch one transaction with its EXPIRE log entries; returns how many.

        Expired facts are invisible to every reader whether swept or not; sweeping reclaims their rows.
        Sweepers in several processes may run at once: each fact is deleted once (rows another sweeper
        holds are skipped). `exclusive`: do nothing (return 0) while another process's exclusive sweep of
        this namespace runs (the background sweepers of `memstate_sql.sweeper` use it).
        """
        return self.sweep_with(
            self.make_operations(),
            limit,
            batch_size,
            exclusive=exclusive,
        )

    def compact_log(self, before: datetime | str, *, batch_size: int = 1000) -> int:
        """Remove this namespace's log entries logged before `before`, in batches of `batch_size` (each one
        transaction), keeping what the facts and `verify` need: each existing fact's newest active entry.
        Each batch leaves a COMPACT record (the horizon, and how many entries of each session went); a
        rollback that would need a removed entry is refused with `RollbackHorizonError`. Returns how many
        entries were removed. The space goes back to the database's free lists: SQLite reuses it (run
        ``VACUUM`` to shrink the file), PostgreSQL's autovacuum reclaims the dead rows."""
        horizon = check_expiry(None, before)
        if horizon is None:
            raise ValidationFailed("compact_log needs a horizon (a datetime or an ISO 8601 string)")
        check_batch(batch_size)
        ops = self.make_operations()
        done, after = 0, 0
        while True:
            removed, last = self.transaction(
                functools.partial(ops.compact, before=horizon, after_seq=after, batch_size=batch_size),
                name="compact_log",
            )
            done += removed
            if last is None:
                return done
            after = last

    def sweep_with(
        self, ops: operations.Operations, limit: int | None, batch_size: int, *, exclusive: bool = False
    ) -> int:
        """`sweep`, telling `ops`' hooks (`MemoryStore.sweep` passes its own). `exclusive`: skip the batch
        when another process's exclusive sweeper is at work on this namespace (`memstate_sql.sweeper`)."""
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise ValidationFailed("limit must be None or a non-negative integer")
        check_batch(batch_size)
        done = 0
        while limit is None or done < limit:
            size = batch_size if limit is None else min(batch_size, limit - done)
            lock = f"{self.table_prefix}_sweep_{self.namespace}" if exclusive else None
            swept = self.transaction(functools.partial(ops.sweep, batch_size=size, exclusive=lock), name="sweep")
            if swept is None:  # another process is sweeping
                break
            done += len(swept)
            # A short batch ends the sweep, except where rows another sweeper holds are skipped (SKIP
            # LOCKED): InnoDB's scan may also hold a row past its LIMIT, which the other sweeper's batch
            # then skips although nobody deletes it in that round; the sweep goes on until a batch is empty.
            if not swept or (len(swept) < size and not self.dialect.row_locks):
                break
        return done

    def history(self, fact_id: str) -> list[dict[str, Any]]:
        """Every log entry that changed one fact, oldest first: its own entries, the session discard that
        deleted it, the rollbacks that restored it, and the entries a rollback undid (``reverted_by``:
        the uuid of that rollback's ROLLBACK entry)."""
        check_key("fact id", fact_id, required=True)
        entries = self._read(lambda repo: operations.history(repo, fact_id))
        return [{**e.doc(), "reverted_by": e.reverted_by} for e in entries]
