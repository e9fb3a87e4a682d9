"""SQLAlchemy's greenlet bridge, under the names of the installed version.

The asyncio store runs the sync implementation inside ``greenlet_spawn`` and
awaits coroutines (async hooks, asyncio.sleep) from it with ``await_only``,
exactly as SQLAlchemy's own asyncio extension drives its sync ORM.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy.util import concurrency as _c

T = TypeVar("T")

await_only: Callable[[Awaitable[Any]], Any] = getattr(_c, "await_", None) or _c.await_only
greenlet_spawn: Callable[..., Awaitable[Any]] = _c.greenlet_spawn
in_greenlet: Callable[[], bool] = _c.in_greenlet
