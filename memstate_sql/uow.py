"""The unit of work: one database transaction per store operation.

`TransactionRunner.run(fn)` gives `fn` a `Repository` on a connection inside
a fresh transaction, commits when `fn` returns and rolls back when it raises.
Retryable failures (deadlocks, serialization failures, busy SQLite, a lost
race on a unique key) re-run the whole of `fn` in a new transaction, a
bounded number of times with jittered exponential backoff.

The runner is written once, synchronously. The asyncio storage runs the very
same code inside SQLAlchemy's greenlet bridge (``greenlet_spawn``) on the
async engine's ``sync_engine``, with an awaiting `sleep`; that is how
SQLAlchemy's own ``AsyncSession`` reuses ``Session``.

Joining: while `fn` runs, the active repository is published in a context
variable, so that storage methods called from inside an operation (by a hook,
say) take part in the operation's transaction instead of opening their own.
A runner bound to a caller's `Connection` (host-application embedding) runs
each operation in a SAVEPOINT of the caller's transaction and never commits
it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, exc

from memstate_sql._compat import await_only, in_greenlet
from memstate_sql.dialects import DialectSupport, ErrorKind
from memstate_sql.errors import (
    ConflictError,
    ConnectionLost,
    MemoryStoreError,
    RetryUnitOfWork,
    StorageError,
    TransientStorageError,
    mark_joined,
)
from memstate_sql.models import Models
from memstate_sql.readers import HeldReaders
from memstate_sql.records import DEFAULT_NAMESPACE
from memstate_sql.repository import Repository

T = TypeVar("T")
log = logging.getLogger("memstate_sql")
log.addHandler(logging.NullHandler())

_ACTIVE: ContextVar[tuple[object, Repository] | None] = ContextVar("memstate_sql_active_uow", default=None)


def current_repository() -> Repository | None:
    """The repository of the operation running in this context, whichever storage runs it (None outside
    one): a hook reaches the operation's transaction through it (`memstate_sql.outbox`)."""
    current = _ACTIVE.get()
    return None if current is None else current[1]


def default_sleep(seconds: float) -> None:
    """Sleep between attempts; inside the asyncio bridge, yield to the event loop instead."""
    if in_greenlet():
        await_only(asyncio.sleep(seconds))
    else:
        time.sleep(seconds)


@contextmanager
def holding(lock: threading.Lock) -> Iterator[None]:
    """Hold a thread lock; inside the asyncio bridge, wait for it without blocking the event loop
    (another coroutine of the same thread may be holding it across an await)."""
    if in_greenlet():
        while not lock.acquire(blocking=False):
            await_only(asyncio.sleep(0.005))
    else:
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def backoff(attempt: int, base: float = 0.005, cap: float = 0.5) -> float:
    """Full-jitter exponential backoff."""
    return random.uniform(0, min(cap, base * (2**attempt)))


class TransactionRunner:
    """Runs units of work against one engine (or inside one caller's connection)."""

    def __init__(
        self,
        engine: Engine,
        models: Models,
        dialect: DialectSupport,
        *,
        owner: object,
        max_attempts: int = 10,
        sleep: Callable[[float], Any] = default_sleep,
        bound: Connection | Callable[[], Connection] | None = None,
        prepare: Callable[[], None] | None = None,
        namespace: str = DEFAULT_NAMESPACE,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.engine = engine
        self.models = models
        self.dialect = dialect
        self.owner = owner
        self.max_attempts = max_attempts
        self.sleep = sleep
        self.bound = bound
        self.prepare = prepare
        #: Every repository this runner hands out reads and writes this namespace only.
        self.namespace = namespace
        #: Each thread's held autocommit connection, which its operations run on (`memstate_sql.readers`);
        #: None where the pool does not allow them, and for a runner bound to a caller's connection.
        self.readers = HeldReaders.for_engine(engine, dialect.prepare_held) if bound is None else None

    def close(self) -> None:
        """Give the held connections back to the pool (the storage is closing)."""
        if self.readers is not None:
            self.readers.close()

    def host_connection(self) -> Connection | None:
        """The caller's connection this runner is bound to (a Session's current one), if any."""
        if self.bound is None or isinstance(self.bound, Connection):
            return self.bound
        return self.bound()

    def active(self) -> Repository | None:
        current = _ACTIVE.get()
        return current[1] if current is not None and current[0] is self.owner else None

    def _call(self, conn: Connection, fn: Callable[[Repository], T], repo: Repository | None = None) -> T:
        repo = repo or Repository(conn, self.models, self.dialect, self.namespace)
        token = _ACTIVE.set((self.owner, repo))
        try:
            return fn(repo)
        finally:
            _ACTIVE.reset(token)

    def run(
        self,
        fn: Callable[[Repository], T],
        *,
        write: bool = True,
        name: str = "operation",
        fact_id: str | None = None,
        session_id: str | None = None,
        one_statement: bool = False,
        alone: Callable[[Repository], T | None] | None = None,
    ) -> T:
        """Run `fn` in one transaction. `one_statement`: `fn` is a read of a single statement, which needs
        no transaction of its own (run in autocommit where the dialect makes that free). `alone`: the same
        operation as a write of one self-contained statement, with at most unlocked reads before it
        (`DialectSupport.one_statement_writes`), or None, having written nothing, where it cannot be
        (then `fn` runs as usual); tried first, in autocommit, where the dialect and connection allow."""
        joined = self.active()
        if joined is not None:
            try:
                return fn(joined)
            except exc.DBAPIError as err:
                # Raised inside the enclosing operation's transaction (a hook's storage call):
                # marked so that the operation treats it as its own database error (retry or report).
                mark_joined(err)
                raise
        started = time.perf_counter()
        attempts = [0]
        try:
            if self.prepare is not None:
                try:
                    self.prepare()
                except exc.DBAPIError as err:
                    raise self._unprepared(err, name) from err
            if self.bound is not None:
                attempts[0] = 1
                result = self._run_bound(fn, write, name)
            else:
                result = self._run_owned(fn, write, name, attempts, one_statement, alone)
        except Exception as err:
            self._report(name, fact_id, session_id, started, max(attempts[0], 1), err)
            raise
        if fact_id is None and isinstance(result, str):
            fact_id = result  # commit returns the fact's id
        self._report(name, fact_id, session_id, started, attempts[0], None, write=write)
        return result

    @staticmethod
    def _report(
        name: str,
        fact_id: str | None,
        session_id: str | None,
        started: float,
        attempts: int,
        error: BaseException | None,
        *,
        write: bool = True,
    ) -> None:
        """One log record per operation: never payloads, never connection URLs."""
        if error is None and not log.isEnabledFor(logging.INFO if write else logging.DEBUG):
            return  # the common case: nothing to format
        duration_ms = (time.perf_counter() - started) * 1000
        fields = {
            "memstate_op": name,
            "memstate_fact_id": fact_id,
            "memstate_session_id": session_id,
            "memstate_duration_ms": round(duration_ms, 3),
            "memstate_attempts": attempts,
        }
        if error is None:
            log.log(
                logging.INFO if write else logging.DEBUG,
                "%s ok fact_id=%s session_id=%s attempts=%d duration_ms=%.1f",
                name,
                fact_id,
                session_id,
                attempts,
                duration_ms,
                extra=fields,
            )
        else:
            # The caller's mistakes and refusals (not found, conflict, invalid input) are routine.
            level = (
                logging.WARNING
                if isinstance(error, StorageError) or not isinstance(error, MemoryStoreError)
                else logging.INFO
            )
            log.log(
                level,
                "%s failed fact_id=%s session_id=%s attempts=%d duration_ms=%.1f error=%s",
                name,
                fact_id,
                session_id,
                attempts,
                duration_ms,
                type(error).__name__,
                extra={**fields, "memstate_error": type(error).__name__},
            )

    def _run_owned(
        self,
        fn: Callable[[Repository], T],
        write: bool,
        name: str,
        attempts: list[int],
        one_statement: bool = False,
        alone: Callable[[Repository], T | None] | None = None,
    ) -> T:
        attempt = 0
        stale = 0
        while True:
            attempt += 1
            attempts[0] = attempt
            single = one_statement and not write
            readers = self.readers
            try:
                held = None if readers is None else readers.acquire()
                connection = self.engine.connect() if held is None else held
            except exc.DBAPIError as err:
                # Not reachable (restarting, down): nothing was sent, nothing to retry blindly.
                raise ConnectionLost(f"{name}: cannot connect to the database: {describe(err)}") from err
            committing = False
            repo = Repository(connection, self.models, self.dialect, self.namespace)
            try:
                if held is not None and readers is not None:
                    # This thread's held autocommit connection (`memstate_sql.readers`): no checkout. One
                    # SELECT runs by itself; a transaction opens with an explicit BEGIN (`begin_held`).
                    try:
                        if single:
                            result = self._call(held, fn, repo)
                            readers.finish(held)
                            return result
                        if alone is not None and write and self.dialect.one_statement_writes:
                            done = self._alone(held, readers, alone, repo, name)
                            if done is not None:
                                return done
                            if repo.autocommit:  # the lone attempt ran (and wrote nothing): a fresh one
                                repo = Repository(held, self.models, self.dialect, self.namespace)
                        with held.begin():
                            self.dialect.begin_held(held, write)
                            result = self._call(held, fn, repo)
                            committing = True
                    except BaseException as err:
                        readers.after_error(held, err)
                        raise
                    finally:
                        readers.release(held)
                    if repo.after_commit:
                        run_after_commit(repo.after_commit, name)
                    return result
                if one_statement and not write and self.dialect.autocommit_reads:
                    # One SELECT sees one snapshot by itself: no BEGIN/COMMIT round trips.
                    with connection as conn:
                        conn.execution_options(isolation_level="AUTOCOMMIT")
                        return self._call(conn, fn, repo)
                if alone is not None and write and self._alone_on_checkout(connection):
                    # A checked-out connection (the asyncio storage's, or with no held one to spare): as
                    # on a held one, the lone write in autocommit, which the driver switches to for free
                    # (a script brings its own transaction: no switch, `DialectSupport.scripted_writes`).
                    with connection as conn:
                        if not self.dialect.scripted_writes:
                            conn.execution_options(isolation_level="AUTOCOMMIT")
                        done = self._lone(conn, alone, repo, name)
                    if done is not None:
                        return done
                    connection = self.engine.connect()
                    repo = Repository(connection, self.models, self.dialect, self.namespace)
                with connection as conn, conn.begin():
                    if write:
                        self.dialect.begin_write(conn)
                    result = self._call(conn, fn, repo)
                    committing = True  # leaving the block sends COMMIT
                if repo.after_commit:
                    run_after_commit(repo.after_commit, name)
                return result
            except RetryUnitOfWork:
                kind = ErrorKind.RETRY
                error: BaseException | None = None
            except exc.DBAPIError as err:
                kind, error = self.dialect.classify(err), err
                committing = committing or (repo.autocommit and repo.logged_writes > 0)  # a lone write's outcome
                if kind is ErrorKind.DISCONNECT and not committing and repo.statements <= 1 and stale < 2:
                    # The pooled connection was dead before this operation used it (a server restart,
                    # an idle timeout): found at the first statement, so nothing of the operation was
                    # applied or told to a hook. SQLAlchemy has invalidated the pool's older
                    # connections; run the operation again on a fresh one (no pre-ping per checkout).
                    stale += 1
                    attempt -= 1
                    log.info(
                        "%s: the pooled connection was dead at first use; reconnecting: %s",
                        name,
                        describe(err),
                        extra={"memstate_op": name},
                    )
                    continue
                if kind not in (ErrorKind.RETRY, ErrorKind.UNIQUE):
                    raise self._translate(kind, err, name, committing=committing) from err
            if attempt >= self.max_attempts:
                if kind is ErrorKind.UNIQUE:
                    raise ConflictError(
                        f"{name}: a unique constraint kept failing after {attempt} attempts: {describe(error)}"
                    ) from error
                raise TransientStorageError(
                    f"{name}: gave up after {attempt} attempts on a retryable database error "
                    f"({kind.value}): {describe(error)}"
                ) from error
            log.info(
                "%s: retrying after a %s error (attempt %d of %d): %s",
                name,
                kind.value,
                attempt,
                self.max_attempts,
                describe(error),
                extra={"memstate_op": name, "memstate_attempts": attempt},
            )
            self.sleep(backoff(attempt))

    def _alone(
        self,
        held: Connection,
        readers: HeldReaders,
        alone: Callable[[Repository], T | None],
        repo: Repository,
        name: str,
    ) -> T | None:
        """`alone` on the held connection in autocommit, when the dialect lets it write alone there (else
        None, nothing sent): its result, or None when it wrote nothing and the operation must run as a
        transaction. Its write, if any, committed by itself."""
        if not self.dialect.can_write_alone(held):
            return None
        result = self._lone(held, alone, repo, name)
        readers.finish(held)
        return result

    def _alone_on_checkout(self, conn: Connection) -> bool:
        dialect = self.dialect
        free = dialect.autocommit_reads or dialect.scripted_writes  # no round trip to write alone
        return dialect.one_statement_writes and free and dialect.can_write_alone(conn)

    def _lone(self, conn: Connection, alone: Callable[[Repository], T | None], repo: Repository, name: str) -> T | None:
        """`alone` on `conn`, in autocommit: its result (None: it wrote nothing)."""
        repo.autocommit = True
        result = self._call(conn, alone, repo)
        if result is not None and repo.after_commit:
            run_after_commit(repo.after_commit, name)
        return result

    def _run_bound(self, fn: Callable[[Repository], T], write: bool, name: str) -> T:
        conn = self.host_connection()
        assert conn is not None
        repo = Repository(conn, self.models, self.dialect, self.namespace)
        try:
            if conn.in_transaction():
                if write:
                    # SQLite: a SAVEPOINT outside a real transaction would be its own transaction,
                    # committed on RELEASE; open the host's transaction for real first.
                    self.dialect.begin_write(conn)
                repo.after_commit = None  # the host commits, later: nothing can run after it here
                with conn.begin_nested():
                    return self._call(conn, fn, repo)
            with conn.begin():
                result = self._call(conn, fn, repo)
            if repo.after_commit:
                run_after_commit(repo.after_commit, name)
            return result
        except exc.DBAPIError as err:
            kind = self.dialect.classify(err)
            if kind is ErrorKind.UNIQUE:
                raise ConflictError(f"a unique constraint failed inside the caller's transaction: {err}") from err
            raise self._translate(kind, err, name) from err

    def _unprepared(self, err: exc.DBAPIError, name: str) -> MemoryStoreError:
        """The schema check failed: unreachable database (`ConnectionLost`) or another storage error."""
        try:
            with self.engine.connect():
                pass
        except exc.DBAPIError:
            return ConnectionLost(f"{name}: cannot connect to the database: {describe(err)}")
        return self._translate(self.dialect.classify(err), err, name)

    def _translate(
        self, kind: ErrorKind, err: exc.DBAPIError, name: str, *, committing: bool = False
    ) -> MemoryStoreError:
        if kind is ErrorKind.DISCONNECT and committing:
            return ConnectionLost(
                f"{name}: database connection lost during COMMIT: the operation was applied entirely or not "
                f"at all, and which is unknown; read the fact (or its history) before repeating it: {describe(err)}"
            )
        if kind is ErrorKind.DISCONNECT:
            return ConnectionLost(
                f"{name}: database connection lost; the operation's transaction did not commit: {describe(err)}"
            )
        hint = self.dialect.pooler_hint(err)
        return StorageError(f"{name}: database error: {describe(err)}" + (f" ({hint})" if hint else ""))


def run_after_commit(callbacks: list[Callable[[], None]], name: str) -> None:
    """Run what an operation scheduled for after its COMMIT. The operation has committed: a failing
    callback is logged and never turns it into a failure (an outbox delivery that fails here is left to
    the dispatcher, `memstate_sql.outbox`)."""
    for callback in callbacks:
        try:
            callback()
        except Exception:
            log.warning("%s: a post-commit step failed; the operation stays committed", name, exc_info=True)


def describe(error: BaseException | None) -> str:
    """The driver's message of a database error (first line; never the statement's parameters)."""
    if error is None:
        return "a row changed concurrently"
    orig = getattr(error, "orig", None) or error
    text = str(orig).strip().splitlines()
    return f"{type(orig).__name__}: {text[0] if text else ''}"
