"""Rates and CPU per operation of one store on one database, for A/B comparisons of two checkouts.

    python -m benchmarks.ops_loop URL [COUNT] [--async]

Runs COUNT (default 1,500) commits of new facts in a session, updates of them, point reads, and commits
of caller-given new ids, one at a time, on a fresh table prefix (dropped at the end); prints operations
per second and CPU microseconds per operation (``getrusage``: this process's user + system time, so the
server's share is not in it). With ``--async``: also commits and updates through `AsyncMemoryStore`.

To compare a change with its base, run the base from a worktree with ``PYTHONPATH=<worktree>`` and this
checkout without, alternately, several times (benchmarks/README.md, "After the 2026-12-08 merge").
"""

from __future__ import annotations

import asyncio
import resource
import sys
import time
import uuid
from collections.abc import Callable

import memstate_sql as ms
from benchmarks.run import drop_prefix


def _timed(label: str, count: int, op: Callable[[int], object]) -> None:
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    for i in range(count):
        op(i)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    print(f"{label:<12} {count / wall:8.0f}/s   cpu {cpu / count * 1e6:6.0f} us/op")


async def _async_ops(url: str, prefix: str, count: int) -> None:
    storage = ms.AsyncSQLStorage(url, table_prefix=prefix)
    store = ms.AsyncMemoryStore(storage)
    try:
        await store.count()
        ids = []
        started = time.perf_counter()
        for i in range(count):
            ids.append(await store.commit(ms.Fact(type="note", payload={"n": i}), session_id="a"))
        print(f"{'async commit':<12} {count / (time.perf_counter() - started):8.0f}/s")
        started = time.perf_counter()
        for i, fid in enumerate(ids):
            await store.update(fid, {"payload": {"n": -i}})
        print(f"{'async update':<12} {count / (time.perf_counter() - started):8.0f}/s")
    finally:
        await storage.close()


def main(argv: list[str]) -> None:
    args = [a for a in argv if not a.startswith("--")]
    if not args:
        raise SystemExit(__doc__)
    url, count = args[0], int(args[1]) if len(args) > 1 else 1500
    prefix = "bench" + uuid.uuid4().hex[:8]  # a fresh table prefix: first operations build its tables
    storage = ms.SQLStorage(url, table_prefix=prefix)
    try:
        store = ms.MemoryStore(storage)
        store.count()
        ids: list[str] = []
        _timed(
            "commit", count, lambda i: ids.append(store.commit(ms.Fact(type="note", payload={"n": i}), session_id="s"))
        )
        _timed("update", count, lambda i: store.update(ids[i], {"payload": {"n": -i}}))
        _timed("get", count, lambda i: store.get(ids[i]))
        given = [f"given-{i}" for i in range(count)]
        _timed(
            "commit id", count, lambda i: store.commit(ms.Fact(id=given[i], type="note", payload={}), session_id="g")
        )
        if "--async" in argv:
            asyncio.run(_async_ops(url, prefix, count))
    finally:
        storage.close()
        drop_prefix(url, prefix)


if __name__ == "__main__":
    main(sys.argv[1:])
