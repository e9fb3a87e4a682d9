"""Held connections: one autocommit connection per thread, which a sync storage's operations run on.

Checking a connection out of the pool for every operation, switching it to autocommit (reads) and checking
it back in (the pool's reset included) costs more than a SELECT on SQLite and a good part of a write on a
local PostgreSQL. A thread keeps one connection instead, in autocommit (`memstate_sql.uow`): a
one-statement read is the SELECT alone, in its own implicit transaction, and sees every commit
acknowledged before it (no snapshot is held between operations, so nothing goes stale and no WAL
checkpoint is held back); a transaction is opened by an explicit BEGIN (`DialectSupport.begin_held`) and
ended by the driver's COMMIT or ROLLBACK.

Bounds and hygiene:

* Only under a `QueuePool` of a sync engine (never inside the asyncio bridge, where the coroutines of
  one thread would share a connection), and at most ``pool.size() - 1`` held connections per pool over
  every storage on it, so other threads always find one; a thread beyond that checks out per operation.
* One operation at a time on each (`HeldReaders.acquire` / `release`): another storage's operation
  called from inside it (a sibling's, by a hook) checks a connection out.
* A thread's connection goes back to the pool when the thread ends, when the storage is closed or
  garbage-collected, after any database error on it, and when the pool's recycle time or an
  invalidation (a disconnect seen on another connection) has passed it by.
* After `os.fork`, a child never touches (nor closes) a connection it inherited: the socket is the
  parent's. It keeps the object referenced and opens its own.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import AsyncAdaptedQueuePool, Pool, QueuePool

from memstate_sql._compat import in_greenlet

#: Connections a forked child inherited: referenced for ever so that nothing closes them from the child.
_INHERITED: list[Connection] = []


class _Slots:
    """How many connections are held out of one pool (shared by every storage on it)."""

    __slots__ = ("held", "limit", "lock")

    def __init__(self, limit: int) -> None:
        self.lock = threading.Lock()
        self.held = 0
        self.limit = limit

    def take(self) -> bool:
        with self.lock:
            if self.held >= self.limit:
                return False
            self.held += 1
            return True

    def give_back(self) -> None:
        with self.lock:
            self.held -= 1


_SLOTS: weakref.WeakKeyDictionary[Pool, _Slots] = weakref.WeakKeyDictionary()
_SLOTS_LOCK = threading.Lock()


def _release(conn: Connection, slots: _Slots, pid: int) -> None:
    """Return a held connection to its pool (a finalizer: it must not refer to its holder)."""
    if os.getpid() != pid:
        _INHERITED.append(conn)
        return
    try:
        conn.close()
    except Exception:
        pass
    finally:
        slots.give_back()


class _Held:
    """One thread's connection; returned to the pool when this object dies (its thread ended)."""

    __slots__ = ("__weakref__", "born", "busy", "conn", "finalizer", "pid", "pool")

    def __init__(self, conn: Connection, pool: Pool, slots: _Slots) -> None:
        self.conn = conn
        self.pool = pool
        #: An operation is running on it (until `HeldReaders.release`).
        self.busy = False
        self.born = time.time()
        self.pid = os.getpid()
        self.finalizer = weakref.finalize(self, _release, conn, slots, self.pid)
        self.finalizer.atexit = False  # at interpreter exit the pool goes away by itself


def _allowed(pool: Pool) -> bool:
    return isinstance(pool, QueuePool) and not isinstance(pool, AsyncAdaptedQueuePool) and pool.size() > 1


def _slots_for(pool: QueuePool) -> _Slots:
    with _SLOTS_LOCK:
        slots = _SLOTS.get(pool)
        if slots is None:
            slots = _SLOTS[pool] = _Slots(pool.size() - 1)
        return slots


class HeldReaders:
    """The held connections of one storage (and of its `for_namespace` siblings), one per thread."""

    def __init__(self, engine: Engine, prepare: Callable[[Connection], None] | None = None) -> None:
        self.engine = engine
        #: Called on each new connection before it is switched to autocommit (it notes what the
        #: driver's own BEGIN would have been: `DialectSupport.prepare_held`).
        self.prepare = prepare
        self.local = threading.local()
        self._all: weakref.WeakSet[_Held] = weakref.WeakSet()
        self._closed = False

    @classmethod
    def for_engine(cls, engine: Engine, prepare: Callable[[Connection], None] | None = None) -> HeldReaders | None:
        """Held readers for `engine`, or None where its pool does not allow them."""
        return cls(engine, prepare) if _allowed(engine.pool) else None

    def acquire(self) -> Connection | None:
        """This thread's held connection for one operation (opened on first use), until `release`; None:
        check one out instead (in the asyncio bridge, after `close`, when the pool has no slot to spare,
        or while another operation of this thread runs on it: a sibling storage's, called by a hook).
        Raises the driver's error when a new connection cannot be opened."""
        if self._closed or in_greenlet():
            return None
        pool = self.engine.pool
        held: _Held | None = getattr(self.local, "held", None)
        if held is not None:
            if held.busy:
                return None
            if held.pool is pool and held.pid == os.getpid() and not self._outdated(held):
                held.busy = True
                return held.conn
            self.drop()
        if not _allowed(pool):
            return None
        assert isinstance(pool, QueuePool)
        slots = _slots_for(pool)
        if not slots.take():
            return None
        try:
            conn = self.engine.connect()
        except BaseException:
            slots.give_back()
            raise
        try:
            if self.prepare is not None:
                self.prepare(conn)
            conn.execution_options(isolation_level="AUTOCOMMIT")
        except BaseException:
            conn.close()
            slots.give_back()
            raise
        held = _Held(conn, pool, slots)
        held.busy = True
        self.local.held = held
        self._all.add(held)
        return conn

    def _outdated(self, held: _Held) -> bool:
        """The pool would not hand this connection out any more: older than its recycle time, or than
        the pool's last invalidation (a disconnect seen on another connection)."""
        pool: Any = held.pool
        recycle: int = pool._recycle
        if recycle > -1 and time.time() - held.born > recycle:
            return True
        return bool(held.born < pool._invalidate_time)

    def finish(self, conn: Connection) -> None:
        """After a one-statement read: end SQLAlchemy's own (autobegun) transaction, which autocommit
        makes empty."""
        if conn.in_transaction():
            conn.commit()

    def after_error(self, conn: Connection, error: BaseException) -> None:
        """An operation on this thread's connection raised `error`: keep the connection only where the
        error was the operation's own (a conflict, invalid input) and nothing of a transaction is left
        open on it; after a database error, or an interruption, its state is unknown: give it back."""
        clean = isinstance(error, Exception) and not isinstance(error, DBAPIError)
        if not clean or conn.in_transaction() or conn.invalidated:
            self.drop()

    def release(self, conn: Connection) -> None:
        """The operation `acquire` handed `conn` to is over (given back to the pool if `close` came
        meanwhile)."""
        held: _Held | None = getattr(self.local, "held", None)
        if held is not None and held.conn is conn:
            held.busy = False
            if self._closed:
                self.drop()

    def drop(self) -> None:
        """Give this thread's connection back (after an error on it, or outdated)."""
        held: _Held | None = getattr(self.local, "held", None)
        if held is not None:
            self.local.held = None
            self._all.discard(held)
            held.finalizer()

    def close(self) -> None:
        """Give every thread's connection back (one in use: when its operation ends); later operations
        check connections out."""
        self._closed = True
        for held in list(self._all):
            if not held.busy:
                self._all.discard(held)
                held.finalizer()
