"""Background sweepers: delete expired facts every `interval` seconds until stopped.

`Sweeper` is a daemon thread for sync services, `AsyncSweeper` an asyncio task for
asyncio ones. Either sweeps one namespace of a store (`MemoryStore.sweep`, hooks
told) or of a storage (`SQLStorage.sweep`). Several processes may run one for the
same namespace: each round takes a database lock without waiting (PostgreSQL: a
transaction-level advisory lock; MySQL/MariaDB: ``GET_LOCK``; SQLite's writers are
serialised by the file), so one sweeper works while the others skip that round.
Expired facts are invisible to every reader whether or not a sweeper runs: sweeping
only reclaims their rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import TYPE_CHECKING

from memstate_sql.errors import MemoryStoreError, ValidationFailed

if TYPE_CHECKING:
    from memstate_sql.aio import AsyncMemoryStore, AsyncSQLStorage
    from memstate_sql.storage import SQLStorage
    from memstate_sql.store import MemoryStore

log = logging.getLogger("memstate_sql")


class _Rounds:
    """What the thread and the task sweepers share: their settings, checked once, and their counters."""

    def __init__(self, interval: float, batch_size: int) -> None:
        if isinstance(interval, bool) or not isinstance(interval, int | float) or not interval > 0:
            raise ValidationFailed("interval must be a positive number of seconds")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValidationFailed("batch_size must be a positive integer")
        self.interval = float(interval)
        self.batch_size = batch_size
        self.swept = 0
        self.rounds = 0

    def _counted(self, swept: int) -> int:
        self.swept += swept
        self.rounds += 1
        return swept


class Sweeper(_Rounds):
    """A daemon thread that sweeps `target` every `interval` seconds; `stop()` ends it (also as a
    context manager). `swept` counts the facts it deleted; a failed round is logged and retried at the
    next one."""

    def __init__(self, target: MemoryStore | SQLStorage, *, interval: float = 60.0, batch_size: int = 1000) -> None:
        super().__init__(interval, batch_size)
        self.target = target
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Sweeper:
        if self._thread is not None:
            raise MemoryStoreError("this sweeper is already running")
        self._thread = threading.Thread(target=self._run, name="memstate-sql-sweeper", daemon=True)
        self._thread.start()
        return self

    def run_once(self) -> int:
        """One round: sweep what has expired (unless another process's sweeper holds the lock)."""
        return self._counted(self.target.sweep(None, batch_size=self.batch_size, exclusive=True))

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:  # a database outage: try again next round
                log.warning("background sweep failed; retrying in %.0fs", self.interval, exc_info=True)
            self._stop.wait(self.interval)

    def stop(self, timeout: float | None = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> Sweeper:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class AsyncSweeper(_Rounds):
    """The asyncio form of `Sweeper`: a task on the running loop; `await stop()` ends it."""

    def __init__(
        self, target: AsyncMemoryStore | AsyncSQLStorage, *, interval: float = 60.0, batch_size: int = 1000
    ) -> None:
        super().__init__(interval, batch_size)
        self.target = target
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    def start(self) -> AsyncSweeper:
        if self._task is not None:
            raise MemoryStoreError("this sweeper is already running")
        self._task = asyncio.get_running_loop().create_task(self._run(), name="memstate-sql-sweeper")
        return self

    async def run_once(self) -> int:
        """One round (see `Sweeper.run_once`)."""
        return self._counted(await self.target.sweep(None, batch_size=self.batch_size, exclusive=True))

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.run_once()
            except Exception:
                log.warning("background sweep failed; retrying in %.0fs", self.interval, exc_info=True)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.interval)

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def __aenter__(self) -> AsyncSweeper:
        return self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
