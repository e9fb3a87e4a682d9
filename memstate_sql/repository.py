"""Row-level database access for one unit of work.

A `Repository` wraps a `Connection` that is already inside a transaction and
offers the reads and writes the store semantics are built from. It never
commits: the unit of work (`memstate_sql.uow`) owns the transaction.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import (
    Connection,
    Delete,
    Insert,
    Integer,
    Select,
    Table,
    Update,
    bindparam,
    delete,
    exc,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import CursorResult, Dialect
from sqlalchemy.sql import ColumnElement, Executable

from memstate_sql import filters as flt
from memstate_sql import jsondoc
from memstate_sql.dialects import DialectSupport, ErrorKind, Unindexed
from memstate_sql.dialects.base import Script, on_cursor, on_script, traced
from memstate_sql.models import Models
from memstate_sql.records import DEFAULT_NAMESPACE, FactState, TxRecord, singleton_slot
from memstate_sql.timeutil import utcnow
from memstate_sql.validation import QuerySpec

K = TypeVar("K")
V = TypeVar("V")


class _Built(dict[K, V]):
    """Statements built on the first use of their key: a process builds (and compiles) only the shapes it
    runs. Two threads missing the same key at once build it twice and keep the first one stored."""

    __slots__ = ("_build",)

    def __init__(self, build: Callable[[K], V]) -> None:
        super().__init__()
        self._build = build

    def __missing__(self, key: K) -> V:
        return self.setdefault(key, self._build(key))


@dataclass(frozen=True)
class _Hot:
    """The statements of the hot path (get, singleton lookup, write, log append), built once per pair of
    tables: namespace, instant and keys are bound parameters, so each compiles once for the engine and
    every later call only binds values (building a statement costs more than running it on SQLite)."""

    #: Keyed by (lock, expired); built on first use (`_Built`), as are the log reads.
    by_id: dict[tuple[bool, bool], Select[Any]]
    by_singleton: dict[tuple[bool, bool], Select[Any]]
    update: dict[bool, Update]
    delete: dict[bool, Delete]
    insert_fact: Insert
    insert_log: Insert
    #: A session's active entries, keyed by whether the session is None, lock, and the number of excluded
    #: ops (`KEYED_IN` at most: bound as k0, k1...; 0: none excluded).
    tx_log: dict[tuple[bool, bool, int], Select[Any]]


@functools.cache
def _hot(facts: Table, log: Table, row_locks: bool) -> _Hot:
    c = facts.c
    in_ns = c.namespace == bindparam("w_ns")
    live = in_ns & (c.expires_at.is_(None) | (c.expires_at > bindparam("w_now", type_=c.expires_at.type)))

    def selects(where: ColumnElement[bool]) -> dict[tuple[bool, bool], Select[Any]]:
        def build(key: tuple[bool, bool]) -> Select[Any]:
            lock, expired = key
            stmt = select(facts).where((in_ns if expired else live) & where).order_by(c.ts, c.id)
            return stmt.with_for_update() if lock and row_locks else stmt

        return _Built(build)

    versioned = in_ns & (c.id == bindparam("w_id")) & (c.version == bindparam("w_version"))
    t = log.c

    def tx_log(key: tuple[bool, bool, int]) -> Select[Any]:
        no_session, lock, excluded = key
        where = t.namespace == bindparam("w_ns")
        where = where & (t.session_id.is_(None) if no_session else t.session_id == bindparam("w_session"))
        where = where & t.reverted_by.is_(None)
        if excluded:
            where = where & t.op.not_in(_keys(t.op, excluded))
        stmt = (
            select(log)
            .where(where)
            # A session's own order: `seq` is not commit order on every engine (docs/log-order.md).
            # Entries without a session have no positions: `seq` (on one server, a caller's
            # consecutive operations).
            .order_by((t.seq if no_session else t.session_seq).desc())
            .limit(bindparam("w_limit", type_=Integer))
            .offset(bindparam("w_offset", type_=Integer))
        )
        return stmt.with_for_update() if lock and row_locks else stmt

    return _Hot(
        by_id=selects(c.id == bindparam("w_id")),
        by_singleton=selects((c.type == bindparam("w_type")) & (c.singleton_slot == bindparam("w_token"))),
        # SET takes the columns named in the parameters (every mutable column, see `Repository.update`).
        update={
            True: update(facts).where(versioned),
            False: update(facts).where(versioned & c.immutable.is_(False)),
        },
        delete={
            True: delete(facts).where(versioned),
            False: delete(facts).where(in_ns & (c.id == bindparam("w_id"))),
        },
        insert_fact=insert(facts),
        insert_log=insert(log),
        tx_log=_Built(tx_log),
    )


@functools.cache
def _insert_absent(facts: Table, dialect: DialectSupport) -> Any:
    return dialect.insert_absent_statement(facts)


@functools.cache
def _insert_absent_returning(facts: Table, dialect: DialectSupport) -> Any:
    """`_insert_absent` returning the ids of the rows it inserted (`Repository.insert_absent_many`)."""
    stmt = _insert_absent(facts, dialect)
    return None if stmt is None else stmt.returning(facts.c.id)


@functools.cache
def _insert_logged(facts: Table, log: Table, sessions: Table, dialect: DialectSupport, in_session: bool) -> Any:
    return dialect.insert_logged_statement(facts, log, sessions, in_session)


@functools.cache
def _update_logged(
    facts: Table, log: Table, sessions: Table, dialect: DialectSupport, in_session: bool, allow_immutable: bool
) -> Any:
    return dialect.update_logged_statement(facts, log, sessions, in_session, allow_immutable)


#: Up to this many keys, a statement with an IN list is built with one bound parameter per key
#: (k0, k1, ...): one statement per arity, compiled once and sent on the DB-API cursor (`Repository._send`);
#: longer lists use SQLAlchemy's expanding parameter (``w_in``), compiled per call.
KEYED_IN = 8
_KEY_NAMES = tuple(f"k{i}" for i in range(KEYED_IN))


def _keys(column: ColumnElement[Any], n: int) -> list[Any]:
    """The IN list of `n` keyed parameters (0: the expanding ``w_in``)."""
    if n == 0:
        return [bindparam("w_in", type_=column.type, expanding=True)]
    return [bindparam(name, type_=column.type) for name in _KEY_NAMES[:n]]


@functools.cache
def _facts_in(facts: Table, row_locks: bool, lock: bool, n: int) -> Select[Any]:
    """The live facts of the namespace among `n` ids (see `_keys`), by id; locked with `lock`."""
    c = facts.c
    live = (c.namespace == bindparam("w_ns")) & (
        c.expires_at.is_(None) | (c.expires_at > bindparam("w_now", type_=c.expires_at.type))
    )
    ids = _keys(c.id, n)
    stmt = select(facts).where(live & (c.id.in_(ids[0]) if n == 0 else c.id.in_(ids))).order_by(c.id)
    return stmt.with_for_update() if lock and row_locks else stmt


@functools.cache
def _active_after(log: Table, n: int) -> Select[Any]:
    """Active entries after ``w_seq`` that name one of `n` facts (see `_keys`), and active session discards
    after it, by seq (an entry in both arms comes twice).

    Two arms of a UNION ALL rather than one OR: SQLite plans the OR over two columns as a search of the
    namespace's whole log and a sort (EXPLAIN QUERY PLAN), each arm alone has an index (by fact; by seq)."""
    t = log.c
    ids = _keys(t.fact_id, n)
    base = (t.namespace == bindparam("w_ns")) & (t.seq > bindparam("w_seq", type_=t.seq.type)) & t.reverted_by.is_(None)
    named = select(log).where(base & (t.fact_id.in_(ids[0]) if n == 0 else t.fact_id.in_(ids)))
    # Discards by seq: the range on the primary key, not the namespace's index (all of its log).
    after = (Unindexed(t.namespace) == bindparam("w_ns")) & (t.seq > bindparam("w_seq", type_=t.seq.type))
    discards = select(log).where(after & t.reverted_by.is_(None) & (t.op == "DISCARD_SESSION"))
    return named.union_all(discards).order_by("seq")  # type: ignore[return-value]


@functools.cache
def _mark_reverted(log: Table, n: int) -> Update:
    t = log.c
    ids = _keys(t.uuid, n)
    where = (t.namespace == bindparam("w_ns")) & (t.uuid.in_(ids[0]) if n == 0 else t.uuid.in_(ids))
    return update(log).where(where).values(reverted_by=bindparam("w_by"))


@dataclass(frozen=True)
class _Sent:
    """A hot statement compiled once by SQLAlchemy for one dialect and set of parameter names, run on the
    DB-API cursor of the unit of work's connection (same connection, same transaction): the SQL text,
    its parameters in order with their bind processors, and the result processors of its columns."""

    sql: str
    names: tuple[str, ...]
    binds: tuple[Any, ...]
    defaults: dict[str, Any]
    positional: bool
    results: tuple[Any, ...]


@functools.lru_cache(maxsize=1024)
def _sent(stmt: Executable, dialect: Dialect, keys: frozenset[str]) -> _Sent | None:
    """`stmt` compiled for `dialect` with parameters `keys` (None: it needs SQLAlchemy's own execution,
    e.g. renamed or expanding parameters)."""
    compiled: Any = stmt.compile(dialect=dialect, column_keys=sorted(keys))  # type: ignore[attr-defined]
    if compiled.escaped_bind_names or getattr(compiled, "literal_execute_params", None):
        return None
    if any(b.expanding for b in compiled.binds.values()):
        return None
    names = tuple(compiled.positiontup) if dialect.positional else tuple(compiled.binds)
    binds = tuple(compiled.binds[n].type.dialect_impl(dialect).bind_processor(dialect) for n in names)
    defaults = {n: b.effective_value for n, b in compiled.binds.items() if n not in keys}
    columns = getattr(stmt, "selected_columns", ())
    results = tuple(col.type.dialect_impl(dialect).result_processor(dialect, None) for col in columns)
    return _Sent(compiled.string, names, binds, defaults, bool(dialect.positional), results)


@dataclass(frozen=True)
class _Scripted:
    """A `Script` compiled once by SQLAlchemy for one dialect and set of parameter names: one text, its
    placeholders positional (``%s``) whatever the driver's paramstyle, and for each placeholder the
    parameter it takes, the value it has when that parameter is not given, and its bind processor."""

    sql: str
    slots: tuple[tuple[str, Any, Any], ...]
    statements: int
    answer: int


@functools.lru_cache(maxsize=64)
def _scripted(script: Script, dialect: Dialect, keys: frozenset[str]) -> _Scripted:
    """`script` compiled for `dialect` (a MySQL driver's: ``format`` or ``pyformat``), each statement for
    the parameters of `keys` it names (an INSERT compiled for a name of one of its table's columns would
    write that column too)."""
    texts: list[str] = []
    slots: list[tuple[str, Any, Any]] = []
    for part in script.parts:
        if isinstance(part, str):
            texts.append(part)
            continue
        own = frozenset(part.compile(dialect=dialect).binds)
        sent = _sent(part, dialect, keys & own)
        if sent is None:  # pragma: no cover - the scripts' statements have plain parameters
            raise AssertionError(f"a script statement needs SQLAlchemy's own execution: {part}")
        process = dict(zip(sent.names, sent.binds, strict=True))
        if sent.positional:
            names: list[str] = list(sent.names)
            text = sent.sql
        else:  # pyformat: the names in order of appearance, each placeholder made positional
            names = re.findall(_PLACEHOLDER["pyformat"], sent.sql)
            text = re.sub(_PLACEHOLDER["pyformat"], "%s", sent.sql)
        slots += [(name, sent.defaults.get(name), process[name]) for name in names]
        texts.append(text)
    return _Scripted("; ".join(texts), tuple(slots), len(texts), script.answer)


#: Parameters of one multi-row statement at most (SQLite's default limit since 3.32; PostgreSQL's is
#: 65535, MySQL's is the packet size), and rows of one at most (SQLAlchemy's ``insertmanyvalues`` page).
_MANY_PARAMS = 32766
_MANY_ROWS = 1000

#: A placeholder of each DB-API paramstyle, in a compiled statement's text.
_PLACEHOLDER = {
    "qmark": r"\?",
    "format": r"%s",
    "pyformat": r"%\(([^)]+)\)s",
    "numeric": r":(\d+)",
    "numeric_dollar": r"\$(\d+)",
}


@dataclass(frozen=True)
class _Many:
    """A one-row INSERT compiled once by SQLAlchemy for one dialect and set of columns, sent as multi-row
    ``INSERT ... VALUES (...), (...)`` statements of up to `per_statement` rows on the DB-API cursor
    (`Repository._send_many`): the text around its VALUES group, the group with one positional
    placeholder per parameter, its parameters in order with their bind processors, and the result
    processors of its RETURNING columns."""

    head: str
    group: tuple[str, ...]
    tail: str
    paramstyle: str
    names: tuple[str, ...]
    binds: tuple[Any, ...]
    results: tuple[Any, ...]
    per_statement: int

    @functools.cached_property
    def _texts(self) -> dict[tuple[int, str], str]:
        return {}

    def sql(self, rows: int, paramstyle: str | None = None) -> str:
        """The statement's text for `rows` rows, its placeholders in `paramstyle` (default: the dialect's;
        built once per count)."""
        style = paramstyle or self.paramstyle
        text = self._texts.get((rows, style))
        if text is None:
            numbered = style in ("numeric", "numeric_dollar")
            mark = {"qmark": "?", "format": "%s", "pyformat": "%s"}.get(style, "")
            sign = ":" if style == "numeric" else "$"
            width = len(self.names)
            groups = []
            for r in range(rows):
                parts = [self.group[0]]
                for i, rest in enumerate(self.group[1:]):
                    parts.append(f"{sign}{r * width + i + 1}" if numbered else mark)
                    parts.append(rest)
                groups.append("".join(parts))
            text = self._texts[rows, style] = self.head + ", ".join(groups) + self.tail
        return text


@functools.lru_cache(maxsize=64)
def _many(stmt: Executable, dialect: Dialect, keys: frozenset[str]) -> _Many | None:
    """`stmt` (an INSERT of one row, its parameters the columns `keys`, none outside its VALUES) compiled
    for `dialect` as a `_Many`; None where its text cannot be expanded here (the caller then executes
    it through SQLAlchemy)."""
    # for_executemany: no implicit RETURNING of the primary key (a one-row INSERT's, on PostgreSQL).
    compiled: Any = stmt.compile(  # type: ignore[attr-defined]
        dialect=dialect, column_keys=sorted(keys), for_executemany=True
    )
    pattern = _PLACEHOLDER.get(dialect.paramstyle)
    text: str = compiled.string
    start = text.find(" VALUES (")
    if pattern is None or compiled.escaped_bind_names or start < 0 or text.find(" VALUES (", start + 1) >= 0:
        return None
    start += len(" VALUES (")
    depth, end = 1, start
    while depth and end < len(text):  # the VALUES group's closing parenthesis
        depth += {"(": 1, ")": -1}.get(text[end], 0)
        end += 1
    if depth:
        return None
    head, single, tail = text[: start - len("VALUES (")], text[start : end - 1], text[end:]
    found = list(re.finditer(pattern, single))
    names = tuple(m.group(1) for m in found) if dialect.paramstyle == "pyformat" else tuple(compiled.positiontup)
    if len(names) != len(found) or len(names) != len(compiled.binds) or set(names) != set(keys):
        return None  # parameters outside the VALUES group, or defaults SQLAlchemy computes
    group = []
    start = 0
    for m in found:
        group.append(single[start : m.start()])
        start = m.end()
    group.append(single[start:])
    group[0] = "(" + group[0]
    group[-1] += ")"
    binds = tuple(compiled.binds[n].type.dialect_impl(dialect).bind_processor(dialect) for n in names)
    columns = compiled.returning or ()
    results = tuple(col.type.dialect_impl(dialect).result_processor(dialect, None) for col in columns)
    per_statement = max(1, min(_MANY_ROWS, _MANY_PARAMS // max(1, len(names))))
    return _Many(head + "VALUES ", tuple(group), tail, dialect.paramstyle, names, binds, results, per_statement)


def _processed(rows: list[Any], procs: Sequence[Any]) -> list[Any]:
    """`rows` from a DB-API cursor with their columns' result processors `procs` applied (None: as is)."""
    if not rows or not any(procs):
        return rows
    return [tuple(v if p is None or v is None else p(v) for p, v in zip(procs, row, strict=True)) for row in rows]


class _Shaped:
    """The cache key of a `query`/`count` statement (the filter's `flt.shape_key` and the statement's
    options), carrying the spec and declared paths the statement is built from on a cache miss."""

    __slots__ = ("indexed", "key", "spec")

    def __init__(self, key: Hashable, spec: QuerySpec, indexed: flt.IndexLookup | None) -> None:
        self.key = key
        self.spec = spec
        self.indexed = indexed

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Shaped) and self.key == other.key


@functools.lru_cache(maxsize=512)
def _query_statement(facts: Table, shaped: _Shaped) -> tuple[Select[Any], int]:
    """The SELECT of `Repository.query` or `Repository.count` for one shape of query, built once: the
    filter's values are the parameters ``q0``, ``q1``... (`flt.Numbered`, in `flt.shape_key` order),
    keyset values ``a0``..., namespace ``w_ns``, instant ``w_now``, window ``w_limit``,
    ``w_offset``; and how many filter parameters it has."""
    spec, key = shaped.spec, shaped.key
    assert isinstance(key, tuple)
    c = facts.c
    envelope = dict(c.items())
    live = (c.namespace == bindparam("w_ns")) & (
        c.expires_at.is_(None) | (c.expires_at > bindparam("w_now", type_=c.expires_at.type))
    )
    numbered = flt.Numbered("q")
    where = live & flt.compile_filter(spec.node, c.payload, envelope, shaped.indexed, numbered)
    if spec.type_filter is not None:
        # Written into the SQL (part of the shape): PostgreSQL plans a prepared statement for any
        # parameters after five runs, and a bound type there is estimated at 1/(number of types) of the
        # rows, whatever its own share: it then prefers the type's btree over the payload's GIN index.
        where = (c.type == flt.LiteralText(spec.type_filter)) & where
    if key[0] == "count":
        return select(func.count()).select_from(facts).where(where), numbered.made
    _, _, _, _, limited, offset, after, with_keys = key
    keys = flt.sort_keys(spec.order, c.payload, envelope)
    if after:
        where = where & flt.after_keys(keys, [None] * len(keys), flt.Numbered("a"))
    labels = [expr.label(f"sk{i}") for i, (expr, _) in enumerate(keys)] if with_keys else []
    stmt = (
        select(facts, *labels)
        .where(where)
        .order_by(*(expr.desc() if descending else expr.asc() for expr, descending in keys))
    )
    if limited:
        stmt = stmt.limit(bindparam("w_limit", type_=Integer))
    if offset:
        stmt = stmt.offset(bindparam("w_offset", type_=Integer))
    return stmt, numbered.made


class Repository:
    """Reads and writes on one transactional connection."""

    def __init__(
        self,
        conn: Connection,
        models: Models,
        dialect: DialectSupport,
        namespace: str = DEFAULT_NAMESPACE,
        now: datetime | None = None,
    ) -> None:
        self.conn = conn
        self.models = models
        self.dialect = dialect
        #: Every statement of this repository reads and writes this namespace's rows only.
        self.namespace = namespace
        #: The instant expiry is judged at: one for the whole unit of work.
        self.now = now or utcnow()
        self.facts, self.log = _tables(models)
        self.sessions = _sessions_table(models)
        #: Import with kept positions: each session's last position before this transaction's entries.
        self._bases: dict[tuple[str, str, bool], int] = {}
        #: Statements this repository has sent: the unit of work retries an operation whose connection
        #: turns out dead at its first statement (nothing of it can have been applied).
        self.statements = 0
        #: Whether the connection is in autocommit, each statement its own transaction (a lone write,
        #: `memstate_sql.uow`), and the logged writes sent (`insert_logged`, `update_logged`): a
        #: connection lost under one of them there leaves its outcome unknown.
        self.autocommit = False
        self.logged_writes = 0
        self._hot = _hot(self.facts, self.log, dialect.row_locks)
        #: Called, in order, once this repository's transaction has committed (the unit of work runs them;
        #: None where it cannot: inside a host application's transaction, which the host commits).
        #: `memstate_sql.outbox` delivers to external indexes from here.
        self.after_commit: list[Callable[[], None]] | None = []

    def _execute(self, stmt: Executable, params: Any = None) -> CursorResult[Any]:
        """`Connection.execute`, counted."""
        self.statements += 1
        return self.conn.execute(stmt, params)

    def _send(self, stmt: Executable, params: dict[str, Any], *, inserted_id: bool = False) -> tuple[list[Any], int]:
        """Run one of the hot statements (`_hot`) with one set of parameters: its rows (result processors
        applied) and its row count (with `inserted_id`: its insert id instead). The SQL is compiled once by
        SQLAlchemy for the dialect (`_sent`) and sent on the DB-API cursor of this unit of work's connection,
        which skips SQLAlchemy's per-call execution layer (it costs more than the statement on SQLite).
        Database errors go through SQLAlchemy's own handling (wrapped, disconnects invalidating the pool),
        as `_execute`'s do. With event listeners on the engine (instrumentation, tests) or ``echo`` on, the
        statement runs through `_execute`, so that every listener (and the echo log) sees it."""
        conn = self.conn
        sent = None if traced(conn) else _sent(stmt, conn.dialect, frozenset(params))
        if sent is None:
            result = self._execute(stmt, params)
            return (list(result) if result.returns_rows else []), result.lastrowid if inserted_id else result.rowcount
        self.statements += 1
        values = [params[n] if n in params else sent.defaults[n] for n in sent.names]
        for i, process in enumerate(sent.binds):
            if process is not None and values[i] is not None:
                values[i] = process(values[i])
        args: Any = values if sent.positional else dict(zip(sent.names, values, strict=True))
        rows, count = on_cursor(conn, sent.sql, args, inserted_id=inserted_id)
        return _processed(rows, sent.results), count

    def _send_script(self, script: Script, params: dict[str, Any]) -> int:
        """Send `script` with one set of parameters in one round trip (`on_script`): the row count of its
        answering statement. Compiled once for the dialect (`_scripted`), on the DB-API cursor, traced or
        not (listeners see the one text sent)."""
        compiled = _scripted(script, self.conn.dialect, frozenset(params))
        self.statements += 1
        args: list[Any] = []
        for name, default, process in compiled.slots:
            value = params.get(name, default)
            args.append(value if process is None or value is None else process(value))
        return on_script(self.conn, compiled.sql, args, compiled.statements)[compiled.answer]

    def _send_many(self, stmt: Executable, rows: Sequence[dict[str, Any]]) -> list[Any]:
        """Run a one-row INSERT (`_many`) for every row of `rows` (each with the same keys), in list order,
        as few multi-row statements as the parameter limit allows (compiled once, sent on the DB-API
        cursor, as `_send`); the rows its RETURNING clause returned (result processors applied). Traced
        as `_send` is: with listeners or echo on, SQLAlchemy's own executemany (``insertmanyvalues``)."""
        if not rows:
            return []
        conn = self.conn
        many = None if traced(conn) else _many(stmt, conn.dialect, frozenset(rows[0]))
        if many is None:
            found: list[Any] = []
            for lo in range(0, len(rows), _MANY_ROWS):
                result = self._execute(stmt, list(rows[lo : lo + _MANY_ROWS]))
                found += list(result) if result.returns_rows else []
            return found
        names, binds = many.names, many.binds
        processed = [(i, p) for i, p in enumerate(binds) if p is not None]
        out: list[Any] = []
        for lo in range(0, len(rows), many.per_statement):
            chunk = rows[lo : lo + many.per_statement]
            args: list[Any] = []
            for row in chunk:
                values = [row[n] for n in names]
                for i, process in processed:
                    v = values[i]
                    if v is not None:
                        values[i] = process(v)
                args += values
            self.statements += 1
            out += on_cursor(conn, functools.partial(many.sql, len(chunk)), args, self.dialect.rows_cursor)[0]
        return _processed(out, many.results)

    @functools.cached_property
    def _in_ns(self) -> ColumnElement[bool]:
        return self.facts.c.namespace == self.namespace

    @functools.cached_property
    def _log_in_ns(self) -> ColumnElement[bool]:
        return self.log.c.namespace == self.namespace

    def _live(self) -> ColumnElement[bool]:
        """Facts of the namespace that have not expired (the only ones any reader sees)."""
        expires = self.facts.c.expires_at
        return self._in_ns & (expires.is_(None) | (expires > self.now))

    # ------------------------------------------------------------------ facts

    @staticmethod
    def _fact(row: Any) -> FactState:
        # Positional: the facts table's column order (`models.FactColumns`), namespace first.
        _, id_, type_, session_id, source, ts, payload, version, immutable, singleton, expires_at, document = row[:12]
        return FactState(
            id_, type_, payload, session_id, source, ts, version, bool(immutable), singleton, expires_at, document
        )

    def _keyed(
        self, stmts: dict[tuple[bool, bool], Select[Any]], lock: bool, expired: bool, **params: Any
    ) -> FactState | None:
        params["w_ns"] = self.namespace
        if not expired:
            params["w_now"] = self.now
        for row in self._send(stmts[lock, expired], params)[0]:
            return self._fact(row)
        return None

    def _select_facts(self, where: ColumnElement[bool], lock: bool, *, expired: bool = False) -> list[FactState]:
        scope = self._in_ns if expired else self._live()
        stmt = select(self.facts).where(scope & where).order_by(self.facts.c.ts, self.facts.c.id)
        if lock and self.dialect.row_locks:
            stmt = stmt.with_for_update()
        return [self._fact(row) for row in self._execute(stmt)]

    def get(self, fact_id: str, *, lock: bool = False, expired: bool = False) -> FactState | None:
        """The fact, if it exists and has not expired (`expired`: also an expired, unswept one)."""
        return self._keyed(self._hot.by_id, lock, expired, w_id=fact_id)

    def get_many(self, fact_ids: Sequence[str]) -> dict[str, FactState]:
        if not fact_ids:
            return {}
        return {f.id: f for f in self._select_facts(self.facts.c.id.in_(list(fact_ids)), False)}

    def lookup_for_batch(
        self, fact_ids: Sequence[str], singletons: Sequence[tuple[str, str]], chunk: int = 1000
    ) -> tuple[dict[str, FactState], dict[tuple[str, str], FactState]]:
        """The rows (expired ones included, locked for the write) a batch of commits may replace: by id,
        and by (type, singleton token)."""
        c, lock = self.facts.c, self.dialect.row_locks
        found: list[FactState] = []
        ids = sorted(set(fact_ids))
        for i in range(0, len(ids), chunk):
            found += self._select_facts(c.id.in_(ids[i : i + chunk]), lock, expired=True)
        by_type: dict[str, list[str]] = {}
        for type_, token in sorted(set(singletons)):
            by_type.setdefault(type_, []).append(token)
        for type_, tokens in by_type.items():
            for i in range(0, len(tokens), chunk):
                where = (c.type == type_) & c.singleton_slot.in_(tokens[i : i + chunk])
                found += self._select_facts(where, lock, expired=True)
        rows = {f.id: f for f in found}
        return rows, {(f.type, f.singleton): f for f in rows.values() if f.singleton is not None}

    def find_singleton(self, type_: str, token: str, *, lock: bool = False, expired: bool = False) -> FactState | None:
        return self._keyed(self._hot.by_singleton, lock, expired, w_type=type_, w_token=token)

    def session_facts(self, session_id: str | None, *, lock: bool = False) -> list[FactState]:
        return self._select_facts(
            self.facts.c.session_id.is_(None) if session_id is None else self.facts.c.session_id == session_id,
            lock,
        )

    def filter_where(self, spec: QuerySpec, indexed: flt.IndexLookup | None) -> ColumnElement[bool]:
        """The WHERE clause of `spec` over the live facts of the namespace (`query`, `count`, vector search)."""
        return self._filter_where(spec, indexed)

    def _filter_where(self, spec: QuerySpec, indexed: flt.IndexLookup | None) -> ColumnElement[bool]:
        where = self._live() & flt.compile_filter(spec.node, self.facts.c.payload, dict(self.facts.c.items()), indexed)
        if spec.type_filter is not None:
            where = (self.facts.c.type == spec.type_filter) & where
        return where

    def query(
        self,
        spec: QuerySpec,
        *,
        indexed: flt.IndexLookup | None = None,
        limit: int | None = None,
        offset: int = 0,
        after: Sequence[Any] | None = None,
        keys: bool = True,
    ) -> list[tuple[FactState, tuple[Any, ...]]]:
        """The facts `spec` selects, in its order (default: ts, then id), with their sort-key values
        (read from the rows; ``()`` without `keys`, for a caller that does not page by keyset);
        `after` (a previous row's key values) pages by keyset."""
        values: list[Any] = []
        shape = flt.shape_key(spec.node, indexed, values)
        key = ("query", spec.type_filter, shape, spec.order, limit is not None, bool(offset), after is not None, keys)
        stmt, made = _query_statement(self.facts, _Shaped(key, spec, indexed))
        params = self._query_params(values, made)
        if limit is not None:
            params["w_limit"] = limit
        if offset:
            params["w_offset"] = offset
        if after is not None:
            params.update((f"a{i}", value) for i, value in enumerate(after))
        n = len(self.facts.c)
        fact = self._fact
        return [(fact(row), tuple(row[n:])) for row in self._send(stmt, params)[0]]

    def count(self, spec: QuerySpec, *, indexed: flt.IndexLookup | None = None) -> int:
        values: list[Any] = []
        key = ("count", spec.type_filter, flt.shape_key(spec.node, indexed, values))
        stmt, made = _query_statement(self.facts, _Shaped(key, spec, indexed))
        return int(self._send(stmt, self._query_params(values, made))[0][0][0])

    def _query_params(self, values: list[Any], made: int) -> dict[str, Any]:
        """The parameters of a `_query_statement`: the filter's values (``q0``...), namespace, instant."""
        if len(values) != made:  # pragma: no cover - `shape_key` and `compile_filter` disagree: a bug
            raise AssertionError(f"filter shape has {len(values)} values, its statement {made} parameters")
        params: dict[str, Any] = {f"q{i}": value for i, value in enumerate(values)}
        params["w_ns"] = self.namespace
        params["w_now"] = self.now
        return params

    def insert(self, fact: FactState) -> None:
        # Parameters go with execute(), not .values(): the statement then compiles once and is
        # reused from SQLAlchemy's cache (building .values() per call costs more than the INSERT).
        self.insert_facts([fact])

    def update(self, fact: FactState, *, expected_version: int, allow_immutable: bool = False) -> bool:
        """Write `fact` over the row if its version is still `expected_version`.

        Unless `allow_immutable`, an immutable row is never matched: the rule is
        part of the statement, so it holds whichever process writes.
        """
        params = self._update_params(fact, expected_version)
        return self._send(self._hot.update[allow_immutable], params)[1] == 1

    def _update_params(self, fact: FactState, expected_version: int) -> dict[str, Any]:
        """The parameters of the hot UPDATE for one row (`update`, `update_many`)."""
        return {
            "w_ns": self.namespace,
            "w_id": fact.id,
            "w_version": expected_version,
            "type": fact.type,
            "payload": fact.payload,
            "session_id": fact.session_id,
            "source": fact.source,
            "ts": fact.ts,
            "version": fact.version,
            "singleton": fact.singleton,
            "singleton_slot": singleton_slot(fact.id, fact.singleton),
            "immutable": fact.immutable,
            "expires_at": fact.expires_at,
            "document": fact.document,
        }

    def update_many(self, writes: Sequence[tuple[FactState, int]], *, allow_immutable: bool = False) -> bool:
        """`update` of many rows (each `(fact, expected_version)`) in one executemany; whether every
        row matched (an immutable row never does unless `allow_immutable`)."""
        if not writes:
            return True
        params = [self._update_params(fact, expected) for fact, expected in writes]
        if len(params) == 1 or not self.conn.dialect.supports_sane_multi_rowcount:
            return all(self._execute(self._hot.update[allow_immutable], p).rowcount == 1 for p in params)
        return self._execute(self._hot.update[allow_immutable], params).rowcount == len(params)

    def delete(self, fact_id: str, *, expected_version: int | None = None) -> bool:
        params: dict[str, Any] = {"w_ns": self.namespace, "w_id": fact_id}
        if expected_version is not None:
            params["w_version"] = expected_version
        return self._send(self._hot.delete[expected_version is not None], params)[1] == 1

    def delete_many(self, fact_ids: Iterable[str]) -> int:
        ids = list(fact_ids)
        if not ids:
            return 0
        return self._execute(delete(self.facts).where(self._in_ns & self.facts.c.id.in_(ids))).rowcount

    def expired(self, limit: int) -> list[FactState]:
        """Up to `limit` expired facts of the namespace, soonest expired first, locked for deletion;
        rows another sweeper holds are skipped where the database can (SKIP LOCKED)."""
        expires = self.facts.c.expires_at
        stmt = (
            select(self.facts)
            .where(self._in_ns & expires.is_not(None) & (expires <= self.now))
            .order_by(expires, self.facts.c.id)
            .limit(limit)
        )
        if self.dialect.row_locks:
            stmt = stmt.with_for_update(skip_locked=True)
        return [self._fact(row) for row in self._execute(stmt)]

    # ------------------------------------------------------------------ log

    @staticmethod
    def _tx(row: Any) -> TxRecord:
        # Positional: the log table's column order (`models.TxColumns`), seq then namespace first.
        seq, _, uuid, op, session_id, fact_id, actor, reason, ts, before, after, discarded, reverted_by = row[:13]
        return TxRecord(
            seq=seq,
            uuid=uuid,
            op=op,
            session_id=session_id,
            fact_id=fact_id,
            actor=actor,
            reason=reason,
            ts=ts,
            fact_before=before,
            fact_after=after,
            discarded=discarded,
            reverted_by=reverted_by,
            document=row[13],
            session_seq=row[14],
        )

    def _session_key(self, session_id: str) -> tuple[str, str, bool]:
        return (self.namespace, session_id, False)

    def reserve_positions(self, session_id: str, count: int) -> int:
        """Take `count` positions in the session's log (see `DialectSupport.positions_statement`): returns
        the last one; the session's row stays locked until the transaction ends. Entries without a
        session take no position (and no lock): never call this for them."""
        return self._reserve(self._session_key(session_id), count)

    def _reserve(self, key: tuple[str, str, bool], count: int) -> int:
        dialect = self.dialect
        as_id = dialect.positions_in_insert_id
        rows, last = self._send(
            dialect.positions_statement(self.sessions), _position_args(key, count), inserted_id=as_id
        )
        return int(last if as_id else rows[0][0])

    def lock_session(self, session_id: str | None) -> None:
        """Serialise with the session's other log writers until the transaction ends (a rollback takes
        this before it reads the session's log, so it reads the log as of its own position). Nothing
        for entries without a session: they have no positions, so their writers are not serialised."""
        if session_id is not None:
            self.reserve_positions(session_id, 0)

    def _positions(self, entries: Sequence[TxRecord], keep: bool) -> list[int | None]:
        """The session position of each entry, in list order (None for an entry without a session).
        `keep`: the entries carry positions of another store (an import): they keep their order after
        the session's existing entries."""
        keys = [None if e.session_id is None else self._session_key(e.session_id) for e in entries]
        wanted = [key for key in keys if key is not None]
        if not keep:
            counts: dict[tuple[str, str, bool], int] = {}
            for key in wanted:
                counts[key] = counts.get(key, 0) + 1
            nxt: dict[tuple[str, str, bool], int] = {}
            for key in sorted(counts):  # one lock order for every writer: no deadlock between two imports
                nxt[key] = self._reserve(key, counts[key]) - counts[key] + 1
            out: list[int | None] = []
            for maybe in keys:
                if maybe is None:
                    out.append(None)
                    continue
                out.append(nxt[maybe])
                nxt[maybe] += 1
            return out
        for key in sorted(set(wanted) - set(self._bases)):
            self._bases[key] = self._reserve(key, 0)
        out = []
        tops: dict[tuple[str, str, bool], int] = {}
        for maybe, e in zip(keys, entries, strict=True):
            if maybe is None:
                out.append(None)
                continue
            assert e.session_seq is not None  # keep: every session entry carries its position
            position = self._bases[maybe] + e.session_seq
            out.append(position)
            tops[maybe] = max(tops.get(maybe, 0), position)
        c = self.sessions.c
        for key, top in sorted(tops.items()):
            where = (c.namespace == key[0]) & (c.session_id == key[1]) & (c.without_session == key[2])
            self._execute(update(self.sessions).where(where & (c.last_seq < top)).values(last_seq=top))
        return out

    def append(
        self,
        *,
        uuid: str,
        op: str,
        session_id: str | None,
        fact_id: str | None,
        ts: datetime,
        fact_before: dict[str, Any] | None = None,
        fact_after: dict[str, Any] | None = None,
        actor: str | None = None,
        reason: str | None = None,
        discarded: list[dict[str, Any]] | None = None,
        reverted_by: str | None = None,
        document: dict[str, Any] | None = None,
        reverting: Sequence[str] = (),
    ) -> None:
        """Append one log entry: at the session's next position, or (no session) without a position,
        taking no lock beyond the INSERT's own. `reverting`: first `mark_reverted(reverting, by=uuid)`
        (the entries a rollback undoes, this entry being the rollback's), in the same statement where the
        database has one (`DialectSupport.append_after_statement`)."""
        params: dict[str, Any] = {
            "namespace": self.namespace,
            "uuid": uuid,
            "op": op,
            "session_id": session_id,
            "fact_id": fact_id,
            "ts": ts,
            "fact_before": fact_before,
            "fact_after": fact_after,
            "actor": actor,
            "reason": reason,
            "discarded": discarded,
            "reverted_by": reverted_by,
            "document": document,
        }
        if reverting:
            if self._append_reverting(params, reverting):
                return
            self.mark_reverted(reverting, by=uuid)
        one = None if session_id is None else self.dialect.append_at_next_position(self.log, self.sessions)
        if one is None:
            stmt = self._hot.insert_log
            params["session_seq"] = None if session_id is None else self.reserve_positions(session_id, 1)
        else:  # one round trip: the position is taken by the INSERT itself
            assert session_id is not None
            stmt = one
            params.update(self._position_params(session_id))
        self._send(stmt, params)

    def _append_reverting(self, entry: dict[str, Any], uuids: Sequence[str]) -> bool:
        """`append`'s marks and entry in one statement, where there is one for this many marks: whether it
        ran."""
        session_id = entry["session_id"]
        if len(uuids) > KEYED_IN:
            return False
        first = _mark_reverted(self.log, len(uuids))
        stmt = self.dialect.append_after_statement(self.log, self.sessions, first, session_id is not None)
        if stmt is None:
            return False
        params = {"e_" + name: value for name, value in entry.items()}
        params.update(zip(_KEY_NAMES, uuids, strict=False), w_ns=self.namespace, w_by=entry["uuid"])
        if session_id is not None:
            params.update(self._position_params(session_id))
        self._send(stmt, params)
        return True

    def _position_params(self, session_id: str) -> dict[str, Any]:
        return _position_args(self._session_key(session_id), 1)

    def insert_logged(self, fact: FactState, entry: dict[str, Any]) -> bool:
        """`insert_if_absent` of `fact` and, when it was inserted, `append(**entry)`, in one statement where
        the database has one (`DialectSupport.insert_logged_statement`), else two: True when the row
        and its entry were written, False when the id was taken (nothing written). Only where
        `insert_if_absent` is supported."""
        in_session = entry["session_id"] is not None
        if self.autocommit and self.dialect.scripted_writes:
            script = self.dialect.insert_logged_script(self.facts, self.log, self.sessions, in_session)
            if script is not None:
                return self._scripted_write(script, self._insert_params(fact, entry))
        stmt = _insert_logged(self.facts, self.log, self.sessions, self.dialect, in_session)
        if stmt is None:
            inserted = self.insert_if_absent(fact)
            if inserted:
                self.append(**entry)
            return inserted
        self.logged_writes += 1
        return self._send(stmt, self._insert_params(fact, entry))[1] == 1

    def _insert_params(self, fact: FactState, entry: dict[str, Any]) -> dict[str, Any]:
        """The parameters of `insert_logged`'s one statement or script."""
        return self._logged_params({"f_" + name: value for name, value in self._fact_row(fact).items()}, entry)

    def update_logged(
        self, fact: FactState, entry: dict[str, Any], *, expected_version: int, allow_immutable: bool = False
    ) -> bool:
        """`update` of `fact` and, when it matched, `append(**entry)`: in one statement where the database
        has one (`DialectSupport.update_logged_statement`), else two. Whether both were written (False:
        nothing was, as `update`'s False)."""
        in_session = entry["session_id"] is not None
        if self.autocommit and self.dialect.scripted_writes:
            script = self.dialect.update_logged_script(self.facts, self.log, self.sessions, in_session, allow_immutable)
            if script is not None:
                return self._scripted_write(script, self._rewrite_params(fact, expected_version, entry))
        stmt = _update_logged(self.facts, self.log, self.sessions, self.dialect, in_session, allow_immutable)
        if stmt is None:
            updated = self.update(fact, expected_version=expected_version, allow_immutable=allow_immutable)
            if updated:
                self.append(**entry)
            return updated
        self.logged_writes += 1
        return self._send(stmt, self._rewrite_params(fact, expected_version, entry))[1] == 1

    def _rewrite_params(self, fact: FactState, expected_version: int, entry: dict[str, Any]) -> dict[str, Any]:
        """The parameters of `update_logged`'s one statement or script."""
        params = {
            name if name.startswith("w_") else "f_" + name: value
            for name, value in self._update_params(fact, expected_version).items()
        }
        return self._logged_params(params, entry)

    def _scripted_write(self, script: Script, params: dict[str, Any]) -> bool:
        """A lone write as a `Script` (`DialectSupport.scripted_writes`): whether it wrote its row and entry
        (False: nothing was written; a duplicate key, as a taken id, rolled the script back)."""
        self.logged_writes += 1
        try:
            return self._send_script(script, params) == 1
        except exc.IntegrityError as err:
            if self.dialect.classify(err) is not ErrorKind.UNIQUE:
                raise
            self.logged_writes -= 1  # known: nothing was written
            return False

    def _logged_params(self, params: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
        """`params` of a fact row's write with those of its log entry (`insert_logged`, `update_logged`)."""
        params.update(entry, namespace=self.namespace, document=entry.get("document"))
        params.setdefault("discarded", None)
        params.setdefault("reverted_by", None)
        if entry["session_id"] is not None:
            params.update(self._position_params(entry["session_id"]))
        return params

    def _session_where(self, session_id: str | None) -> ColumnElement[bool]:
        col = self.log.c.session_id
        return col.is_(None) if session_id is None else col == session_id

    def tx_log(
        self,
        session_id: str | None,
        *,
        limit: int,
        offset: int = 0,
        lock: bool = False,
        exclude_ops: Iterable[str] = (),
    ) -> list[TxRecord]:
        """The session's active entries (not undone by a rollback), newest first, except those whose op is
        one of `exclude_ops` (at most `KEYED_IN`)."""
        ops = sorted(exclude_ops)
        params: dict[str, Any] = {"w_ns": self.namespace, "w_limit": limit, "w_offset": offset}
        if session_id is not None:
            params["w_session"] = session_id
        if len(ops) > KEYED_IN:
            raise ValueError(f"tx_log excludes at most {KEYED_IN} ops")
        params.update(zip(_KEY_NAMES, ops, strict=False))
        rows = self._send(self._hot.tx_log[session_id is None, lock, len(ops)], params)[0]
        return [self._tx(row) for row in rows]

    def fact_history(self, fact_id: str) -> list[TxRecord]:
        """The entries that name the fact in ``fact_id``, oldest first."""
        stmt = select(self.log).where(self._log_in_ns & (self.log.c.fact_id == fact_id)).order_by(self.log.c.seq)
        return [self._tx(row) for row in self._execute(stmt)]

    def multi_fact_entries(self, session_ids: Sequence[str]) -> list[TxRecord]:
        """The session discards and rollbacks logged under `session_ids` (they list their facts)."""
        if not session_ids:
            return []
        stmt = (
            select(self.log)
            .where(
                self._log_in_ns
                & self.log.c.session_id.in_(list(session_ids))
                & self.log.c.op.in_(["DISCARD_SESSION", "ROLLBACK"])
            )
            .order_by(self.log.c.seq)
        )
        return [self._tx(row) for row in self._execute(stmt)]

    def facts_without_singleton(self, type_: str) -> list[FactState]:
        where = (self.facts.c.type == type_) & self.facts.c.singleton.is_(None)
        return self._select_facts(where, lock=True, expired=True)

    def set_singletons(self, tokens: dict[str, str]) -> None:
        """Give facts (by id) their singleton key."""
        stmt = (
            update(self.facts)
            .where(self._in_ns & (self.facts.c.id == bindparam("fid")))
            .values(singleton=bindparam("token"), singleton_slot=bindparam("token"))
        )
        self._execute(stmt, [{"fid": fid, "token": token} for fid, token in tokens.items()])

    def mark_immutable(self, type_: str) -> None:
        self._execute(
            update(self.facts)
            .where(self._in_ns & (self.facts.c.type == type_) & ~self.facts.c.immutable)
            .values(immutable=True)
        )

    def mark_reverted(self, uuids: Sequence[str], by: str) -> int:
        """Mark the entries undone by the rollback `by`; how many there were."""
        if not uuids:
            return 0
        return self._send_in(_mark_reverted, self.log, {"w_ns": self.namespace, "w_by": by}, uuids)[1]

    def delete_txs(self, uuids: Sequence[str]) -> int:
        if not uuids:
            return 0
        return self._execute(delete(self.log).where(self._log_in_ns & self.log.c.uuid.in_(list(uuids)))).rowcount

    def compactable(self, before: datetime, after_seq: int, limit: int) -> list[TxRecord]:
        """Up to `limit` entries of the namespace logged before `before`, after `after_seq`, in seq order
        (COMPACT records excluded: they say what compaction removed)."""
        where = self._log_in_ns & (self.log.c.ts < before) & (self.log.c.op != "COMPACT") & (self.log.c.seq > after_seq)
        stmt = select(self.log).where(where).order_by(self.log.c.seq).limit(limit)
        return [self._tx(row) for row in self._execute(stmt)]

    def latest_active_seqs(self, fact_ids: Sequence[str]) -> dict[str, int]:
        """For each of `fact_ids` that exists (expired or not), the seq of its newest active entry."""
        if not fact_ids:
            return {}
        present = select(self.facts.c.id).where(self._in_ns & self.facts.c.id.in_(list(fact_ids)))
        stmt = (
            select(self.log.c.fact_id, func.max(self.log.c.seq))
            .where(self._log_in_ns & self.log.c.reverted_by.is_(None) & self.log.c.fact_id.in_(present))
            .group_by(self.log.c.fact_id)
        )
        return {row[0]: int(row[1]) for row in self.conn.execute(stmt)}

    def delete_entries(self, seqs: Sequence[int]) -> int:
        if not seqs:
            return 0
        return self._execute(delete(self.log).where(self._log_in_ns & self.log.c.seq.in_(list(seqs)))).rowcount

    def compaction_records(self) -> list[TxRecord]:
        stmt = select(self.log).where(self._log_in_ns & (self.log.c.op == "COMPACT")).order_by(self.log.c.seq)
        return [self._tx(row) for row in self._execute(stmt)]

    def count_facts(self) -> int:
        return int(self._execute(select(func.count()).select_from(self.facts).where(self._live())).scalar_one())

    # ------------------------------------------------------------------ bulk (export, import, stats)

    def facts_page(self, after_id: str | None, limit: int) -> list[FactState]:
        """Up to `limit` facts ordered by id, those after `after_id` (keyset pagination for streaming)."""
        stmt = select(self.facts).where(self._in_ns).order_by(self.facts.c.id).limit(limit)
        if after_id is not None:
            stmt = stmt.where(self.facts.c.id > after_id)
        return [self._fact(row) for row in self._execute(stmt)]

    def log_page(self, after_seq: int | None, limit: int) -> list[TxRecord]:
        """Up to `limit` log entries in seq order (rolled-back ones included), those after `after_seq`."""
        stmt = select(self.log).where(self._log_in_ns).order_by(self.log.c.seq).limit(limit)
        if after_seq is not None:
            stmt = stmt.where(self.log.c.seq > after_seq)
        return [self._tx(row) for row in self._execute(stmt)]

    def _fact_row(self, f: FactState, texts: Mapping[str, str] | None = None) -> dict[str, Any]:
        """The parameters of a fact row's INSERT (`texts`: payloads already serialized, by fact id)."""
        text = None if texts is None else texts.get(f.id)
        return {
            "namespace": self.namespace,
            "id": f.id,
            "type": f.type,
            "payload": f.payload if text is None else jsondoc.Dumped(text),
            "session_id": f.session_id,
            "source": f.source,
            "ts": f.ts,
            "version": f.version,
            "immutable": f.immutable,
            "singleton": f.singleton,
            "singleton_slot": singleton_slot(f.id, f.singleton),
            "expires_at": f.expires_at,
            "document": f.document,
        }

    @property
    def insert_absent_supported(self) -> bool:
        """Whether a new fact's row can be inserted without reading first (`insert_if_absent`): the
        database has an INSERT that does nothing when the id is taken, or a failed INSERT undoes that
        statement alone (`DialectSupport.failed_insert_keeps_transaction`)."""
        return _insert_absent(self.facts, self.dialect) is not None or self.dialect.failed_insert_keeps_transaction

    def insert_if_absent(self, fact: FactState) -> bool:
        """Insert `fact`'s row unless its id is taken in this namespace, in one statement: True when the row
        was inserted, False when the id was taken (nothing written; a concurrent inserter's row is waited
        for and counts as taken). Only where `insert_absent_supported`."""
        stmt = _insert_absent(self.facts, self.dialect)
        if stmt is not None:
            return self._send(stmt, self._fact_row(fact))[1] == 1
        assert self.dialect.failed_insert_keeps_transaction, "insert_if_absent() where it is not supported"
        try:
            self._send(self._hot.insert_fact, self._fact_row(fact))
        except exc.IntegrityError as err:
            if self.dialect.classify(err) is ErrorKind.UNIQUE:
                # The id is taken: the row's primary key or its per-fact singleton slot, the facts table's
                # only keys, both derived from the id. The database undid this statement alone.
                return False
            raise
        return True

    def insert_facts(self, facts: Sequence[FactState], texts: Mapping[str, str] | None = None) -> None:
        """Insert fact rows as given (version, immutable and singleton included), in one statement
        (`texts`: payloads already serialized by `jsondoc.dumps`, by fact id)."""
        if len(facts) == 1:
            self._send(self._hot.insert_fact, self._fact_row(facts[0], texts))
        elif facts:
            self._send_many(self._hot.insert_fact, [self._fact_row(f, texts) for f in facts])

    @property
    def insert_absent_many_supported(self) -> bool:
        """Whether the database has an INSERT of many rows that skips the taken ids (`insert_absent_many`)."""
        return _insert_absent_returning(self.facts, self.dialect) is not None

    def insert_absent_many(self, facts: Sequence[FactState], texts: Mapping[str, str] | None = None) -> set[str]:
        """`insert_if_absent` of many rows, in as few multi-row statements as the parameter limit allows:
        the ids of the rows inserted (the others' ids were taken: nothing written for them). Only where
        `insert_absent_many_supported`."""
        stmt = _insert_absent_returning(self.facts, self.dialect)
        assert stmt is not None, "insert_absent_many() on a database without DialectSupport.insert_absent_statement"
        return {row[0] for row in self._send_many(stmt, [self._fact_row(f, texts) for f in facts])}

    def insert_log(self, entries: Sequence[TxRecord], *, keep_positions: bool = False) -> None:
        """Append log entries in the given order; the database assigns their `seq` (the given one is ignored).

        Each entry takes the next position of its session's log, in list order; with `keep_positions`
        (an import), the entries' own `session_seq` values (positions in the exporting store) are
        kept, offset past the session's entries that were in this store before the transaction."""
        if not entries:
            return
        positions = self._positions(entries, keep_positions)
        # Multi-row INSERTs in list order: every database here assigns the identity in the order of the
        # VALUES rows, so it follows the list order.
        self._send_many(
            self._hot.insert_log,
            [
                {
                    "namespace": self.namespace,
                    "uuid": e.uuid,
                    "op": e.op,
                    "session_id": e.session_id,
                    "fact_id": e.fact_id,
                    "actor": e.actor,
                    "reason": e.reason,
                    "ts": e.ts,
                    "fact_before": e.fact_before,
                    "fact_after": e.fact_after,
                    "discarded": e.discarded,
                    "reverted_by": e.reverted_by,
                    "document": e.document,
                    "session_seq": position,
                }
                for e, position in zip(entries, positions, strict=True)
            ],
        )

    def existing_fact_ids(self, fact_ids: Sequence[str]) -> set[str]:
        if not fact_ids:
            return set()
        stmt = select(self.facts.c.id).where(self._in_ns & self.facts.c.id.in_(list(fact_ids)))
        return {row[0] for row in self._execute(stmt)}

    def existing_tx_uuids(self, uuids: Sequence[str]) -> set[str]:
        if not uuids:
            return set()
        stmt = select(self.log.c.uuid).where(self._log_in_ns & self.log.c.uuid.in_(list(uuids)))
        return {row[0] for row in self._execute(stmt)}

    def fact_counts(self, by: str) -> list[tuple[str | None, int]]:
        """Number of facts per value of the ``type`` or ``session_id`` column."""
        column = self.facts.c[by]
        stmt = select(column, func.count()).where(self._live()).group_by(column).order_by(func.count().desc(), column)
        return [(row[0], int(row[1])) for row in self.conn.execute(stmt)]

    def log_counts(self) -> tuple[int, int]:
        """(all log entries, entries undone by a rollback)."""
        total = self._execute(select(func.count()).select_from(self.log).where(self._log_in_ns)).scalar_one()
        undone = self._execute(
            select(func.count()).select_from(self.log).where(self._log_in_ns & self.log.c.reverted_by.is_not(None))
        ).scalar_one()
        return int(total), int(undone)

    def constraint_samples(self) -> list[FactState]:
        """For each type that has facts with a singleton token or the immutable flag, one such fact
        (one with a token when there is one): lets a tool without the application's `Constraint`
        registrations recover them from the rows (see `memstate_sql.cli.rollback`)."""
        marked = self._in_ns & (self.facts.c.singleton.is_not(None) | self.facts.c.immutable.is_(True))
        types = [row[0] for row in self._execute(select(self.facts.c.type).where(marked).distinct())]
        samples: list[FactState] = []
        for type_ in types:
            stmt = (
                select(self.facts)
                .where(marked & (self.facts.c.type == type_))
                .order_by(self.facts.c.singleton.is_(None), self.facts.c.id)
                .limit(1)
            )
            samples.extend(self._fact(row) for row in self._execute(stmt))
        return samples

    def active_entries_after(self, seq: int, fact_ids: Sequence[str]) -> list[TxRecord]:
        """Active entries newer than `seq` that name one of `fact_ids` or discard a session, oldest first."""
        if not fact_ids:
            return []
        rows = self._send_in(_active_after, self.log, {"w_ns": self.namespace, "w_seq": seq}, fact_ids)[0]
        seen: set[int] = set()
        found: list[TxRecord] = []
        for row in rows:
            if row[0] not in seen:  # a session discard that names one of the facts comes from both arms
                seen.add(row[0])
                found.append(self._tx(row))
        return found

    def facts_by_id(self, fact_ids: Sequence[str], *, lock: bool = False) -> dict[str, FactState]:
        """The live facts among `fact_ids`, by id; with `lock`, their rows stay locked (in id order) until
        the transaction ends (a rollback's plan reads and locks the facts it would change at once)."""
        if not fact_ids:
            return {}
        params = {"w_ns": self.namespace, "w_now": self.now}
        build = functools.partial(_facts_in, self.facts, self.dialect.row_locks, lock)
        return {f.id: f for f in map(self._fact, self._send_in(build, None, params, fact_ids)[0])}

    def _send_in(
        self, build: Callable[..., Executable], table: Table | None, params: dict[str, Any], keys: Sequence[Any]
    ) -> tuple[list[Any], int]:
        """Run a statement with one IN list (`build(table, n)`, or `build(n)` without a table; see `_keys`):
        up to `KEYED_IN` keys through `_send` (one compiled statement per arity), more in one statement with
        SQLAlchemy's expanding parameter. Rows and row count, as `_send`."""
        n = len(keys)
        args = (n,) if table is None else (table, n)
        if n <= KEYED_IN:
            params.update(zip(_KEY_NAMES, keys, strict=False))
            return self._send(build(*args), params)
        args = (0,) if table is None else (table, 0)
        result = self._execute(build(*args), {**params, "w_in": list(keys)})
        return (list(result) if result.returns_rows else []), result.rowcount


def _position_args(key: tuple[str, str, bool], count: int) -> dict[str, Any]:
    """The parameters of a statement that takes `count` positions of the session `key`
    (`DialectSupport.positions_statement`, `append_at_next_position`)."""
    return {"p_ns": key[0], "p_sid": key[1], "p_none": key[2], "p_n": count}


@functools.cache
def _sessions_table(models: Models) -> Table:
    return models.sessions


@functools.cache
def _tables(models: Models) -> tuple[Table, Table]:
    return models.facts, models.log
