"""Delivering the outbox to external indexes, and reconciling an index with the facts.

`Dispatcher` delivers what `memstate_sql.outbox` recorded: `deliver()` once (what the
``memstate-sql outbox deliver`` command runs), or `start()` as a daemon thread that delivers every
`interval` seconds. `AsyncDispatcher` is its asyncio form (async index clients are awaited). Several
dispatchers, in any number of processes, may run at once: each fact is delivered by one of them at a
time (its rows are leased), failed deliveries are retried with exponential backoff, and a dispatcher
killed mid-delivery leaves leased rows that become claimable again when the lease runs out.

`reconcile(target, index)` compares an index with the facts and repairs both directions: facts missing
from the index, stale entries (another version) and ghosts (entries of no fact).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from memstate_sql import outbox
from memstate_sql._compat import greenlet_spawn
from memstate_sql.errors import MemoryStoreError, ValidationFailed
from memstate_sql.facts import Fact
from memstate_sql.hooks import invoke
from memstate_sql.records import FactState
from memstate_sql.repository import Repository
from memstate_sql.storage import SQLStorage
from memstate_sql.timeutil import utcnow

if TYPE_CHECKING:
    from memstate_sql.aio import AsyncMemoryStore, AsyncSQLStorage
    from memstate_sql.store import MemoryStore

log = logging.getLogger("memstate_sql")


def _storage_of(target: Any) -> SQLStorage:
    """The sync storage of a store or storage, sync or asyncio."""
    for attr in ("sync_storage", "storage"):
        inner = getattr(target, attr, None)
        if inner is not None and not isinstance(target, SQLStorage):
            return _storage_of(inner)
    if isinstance(target, SQLStorage):
        return target
    raise ValidationFailed(f"expected a store or a storage of memstate_sql, got {type(target).__name__}")


def _indexes(indexes: Any) -> list[Any]:
    found = [indexes] if hasattr(indexes, "index_name") else list(indexes)
    if not found:
        raise ValidationFailed("a dispatcher needs at least one index (a hook of memstate_sql.integrations)")
    for index in found:
        for name in ("index_name", "put", "remove", "wants"):
            if not hasattr(index, name):
                raise ValidationFailed(f"{index!r} is not an external index (no {name})")
    return found


@dataclass
class DeliveryReport:
    delivered: int = 0
    failed: int = 0
    rounds: int = 0
    per_index: dict[str, int] = field(default_factory=dict)

    def doc(self) -> dict[str, Any]:
        return {
            "delivered": self.delivered,
            "failed": self.failed,
            "rounds": self.rounds,
            "per_index": dict(self.per_index),
        }


class Dispatcher:
    """Delivers the outbox of one storage namespace to `indexes` (hooks of `memstate_sql.integrations`,
    or any object with ``index_name``, ``wants``, ``put``, ``remove``).

    `target`: a `MemoryStore` or `SQLStorage` (its namespace is the one delivered). `batch_size`: rows
    claimed per transaction. `lease`: seconds a claim stays this dispatcher's (longer than a delivery
    may take). `interval`: seconds between rounds of the background thread."""

    def __init__(
        self,
        target: MemoryStore | SQLStorage,
        indexes: Any,
        *,
        batch_size: int = 100,
        lease: float = outbox.DEFAULT_LEASE,
        interval: float = 1.0,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValidationFailed("batch_size must be a positive integer")
        for name, value in (("lease", lease), ("interval", interval)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ValidationFailed(f"{name} must be a positive number of seconds")
        self.storage = _storage_of(target)
        self.indexes = _indexes(indexes)
        self.batch_size = batch_size
        self.lease = float(lease)
        self.interval = float(interval)
        self.owner = str(uuid.uuid4())
        self.total = DeliveryReport()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self, fn: Callable[[Repository], Any], write: bool) -> Any:
        return self.storage.transaction(fn, write=write, name="outbox")

    def deliver_round(self) -> DeliveryReport:
        """One claim per index: deliver up to `batch_size` due rows' facts."""
        report = DeliveryReport(rounds=1)
        for index in self.indexes:
            name = index.index_name
            claims = self._run(
                functools.partial(outbox.claim, target=name, owner=self.owner, limit=self.batch_size, lease=self.lease),
                True,
            )
            delivered, failed = outbox.deliver_claims(self._run, index, name, claims)
            report.delivered += delivered
            report.failed += failed
            report.per_index[name] = report.per_index.get(name, 0) + delivered
        return report

    def deliver(self, max_rounds: int | None = None) -> DeliveryReport:
        """Deliver until nothing is due (or `max_rounds` rounds ran); failed rows wait for their backoff."""
        report = DeliveryReport()
        while max_rounds is None or report.rounds < max_rounds:
            step = self.deliver_round()
            report.rounds += 1
            report.delivered += step.delivered
            report.failed += step.failed
            for name, n in step.per_index.items():
                report.per_index[name] = report.per_index.get(name, 0) + n
            if step.delivered == 0 and step.failed == 0:
                break
            if step.delivered == 0:
                break  # only failures: the rest waits for its backoff
        self._count(report)
        return report

    def _count(self, report: DeliveryReport) -> None:
        self.total.delivered += report.delivered
        self.total.failed += report.failed
        self.total.rounds += report.rounds

    def status(self) -> list[dict[str, Any]]:
        return outbox_status(self.storage)

    # -- background thread

    def start(self) -> Dispatcher:
        if self._thread is not None:
            raise MemoryStoreError("this dispatcher is already running")
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="memstate-sql-outbox", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.deliver()
            except Exception:  # the database is down: try again next round
                log.warning("outbox delivery round failed; retrying in %.1fs", self.interval, exc_info=True)
            self._stop.wait(self.interval)

    def stop(self, timeout: float | None = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> Dispatcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class AsyncDispatcher:
    """The asyncio form of `Dispatcher` (for `AsyncMemoryStore` / `AsyncSQLStorage` and async index
    clients such as `AsyncQdrantSyncHook`): the same delivery, run in SQLAlchemy's greenlet bridge."""

    def __init__(
        self,
        target: AsyncMemoryStore | AsyncSQLStorage,
        indexes: Any,
        *,
        batch_size: int = 100,
        lease: float = outbox.DEFAULT_LEASE,
        interval: float = 1.0,
    ) -> None:
        self.sync = Dispatcher(_storage_of(target), indexes, batch_size=batch_size, lease=lease, interval=interval)
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    @property
    def total(self) -> DeliveryReport:
        return self.sync.total

    async def deliver(self, max_rounds: int | None = None) -> DeliveryReport:
        report: DeliveryReport = await greenlet_spawn(self.sync.deliver, max_rounds)
        return report

    async def status(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = await greenlet_spawn(self.sync.status)
        return found

    def start(self) -> AsyncDispatcher:
        if self._task is not None:
            raise MemoryStoreError("this dispatcher is already running")
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="memstate-sql-outbox")
        return self

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.deliver()
            except Exception:
                log.warning("outbox delivery round failed; retrying in %.1fs", self.sync.interval, exc_info=True)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.sync.interval)

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def __aenter__(self) -> AsyncDispatcher:
        return self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def outbox_status(target: Any) -> list[dict[str, Any]]:
    """Per index: rows pending, due now, leased, failing, the oldest row's time and the last error."""
    storage = _storage_of(target)
    found: list[outbox.TargetStatus] = storage.transaction(outbox.status, write=False, name="outbox_status")
    return [s.doc() for s in found]


# ---------------------------------------------------------------------------- reconcile


@dataclass
class ReconcileReport:
    index: str
    checked: int = 0
    missing: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    ghosts: list[str] = field(default_factory=list)
    repaired: bool = False

    def doc(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "checked": self.checked,
            "missing": len(self.missing),
            "stale": len(self.stale),
            "ghosts": len(self.ghosts),
            "repaired": self.repaired,
        }


def _facts_page(repo: Repository, *, after: str | None, batch: int) -> list[FactState]:
    return repo.facts_page(after, batch)


def _all_facts(storage: SQLStorage, batch: int = 500) -> Iterable[FactState]:
    after: str | None = None
    while True:
        page: list[FactState] = storage.transaction(
            functools.partial(_facts_page, after=after, batch=batch), write=False, name="reconcile"
        )
        yield from page
        if len(page) < batch:
            return
        after = page[-1].id


def reconcile(target: Any, index: Any, *, dry_run: bool = False) -> ReconcileReport:
    """Compare `index` with the facts of `target`'s namespace and repair it: put the facts it misses or
    holds at another version, remove the entries of facts that do not exist (or that it should not hold).
    `dry_run`: only report. Safe while the store is written to: a fact changed meanwhile is delivered again
    by its outbox row."""
    storage = _storage_of(target)
    (index,) = _indexes([index])
    held: dict[str, int | None] = dict(invoke(index.entries))
    report = ReconcileReport(index=index.index_name)
    wanted: dict[str, FactState] = {}
    now = utcnow()
    for state in _all_facts(storage):
        if state.expires_at is not None and state.expires_at <= now:
            continue  # expired: no reader sees it, so neither should the index
        report.checked += 1
        fact = Fact.model_validate(state.doc())
        if index.wants(fact):
            wanted[state.id] = state
            if state.id not in held:
                report.missing.append(state.id)
            elif held[state.id] != state.version:
                report.stale.append(state.id)
    report.ghosts = sorted(fid for fid in held if fid not in wanted)
    if dry_run:
        return report
    for fid in [*report.missing, *report.stale]:
        outbox.deliver_state(index, fid, wanted[fid])
    if report.ghosts:
        invoke(index.remove, report.ghosts)
    report.repaired = True
    return report


def reconcile_many(target: Any, indexes: Sequence[Any], *, dry_run: bool = False) -> list[ReconcileReport]:
    return [reconcile(target, index, dry_run=dry_run) for index in _indexes(indexes)]


async def areconcile(target: Any, index: Any, *, dry_run: bool = False) -> ReconcileReport:
    """`reconcile` for `AsyncMemoryStore` / `AsyncSQLStorage` and async index clients (`AsyncQdrantSyncHook`)."""
    report: ReconcileReport = await greenlet_spawn(functools.partial(reconcile, target, index, dry_run=dry_run))
    return report
