"""CPU time (not wall time) per store commit, get and update on SQLite, for A/B comparisons on a busy machine.

    python -m benchmarks.cpu_per_op [label] [--async]

Wall-clock figures (`benchmarks.run`) swing several-fold when other processes load the machine; the
process's own CPU time per operation is far steadier, and it is what a change to the Python path
(statements, parameters, row mapping) moves. Run it alternately on two checkouts (``PYTHONPATH=...``).
``--async`` measures `AsyncMemoryStore` (aiosqlite) instead of `MemoryStore`: the figure is the CPU time of
the whole process, the event loop's thread and aiosqlite's worker thread together, so the cost of every hop
to the worker thread is in it.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import memstate_sql as ms

N = 1500
UPDATES = 500


def _sync(workdir: str) -> tuple[float, float, float]:
    storage = ms.SQLStorage(f"sqlite:///{workdir}/cpu.db", sqlite_synchronous="normal")
    store = ms.MemoryStore(storage)
    store.commit(ms.Fact(id="warm", type="t", payload={}))
    start = time.process_time()
    ids = [store.commit(ms.Fact(type="note", payload={"i": i, "text": "x" * 50})) for i in range(N)]
    commit = (time.process_time() - start) / N * 1e6
    start = time.process_time()
    for fid in ids:
        store.get(fid)
    get = (time.process_time() - start) / N * 1e6
    start = time.process_time()
    for fid in ids[:UPDATES]:
        store.update(fid, {"payload": {"j": 1}})
    update = (time.process_time() - start) / UPDATES * 1e6
    storage.close()
    return commit, get, update


async def _async(workdir: str) -> tuple[float, float, float]:
    from memstate_sql.aio import AsyncMemoryStore, AsyncSQLStorage

    storage = AsyncSQLStorage(f"sqlite:///{workdir}/cpu-async.db", sqlite_synchronous="normal")
    store = AsyncMemoryStore(storage)
    await store.commit(ms.Fact(id="warm", type="t", payload={}))

    async def per_op(items: list[Any], op: Callable[[Any], Awaitable[Any]]) -> tuple[float, list[Any]]:
        start = time.process_time()
        found = [await op(item) for item in items]
        return (time.process_time() - start) / len(items) * 1e6, found

    commit, ids = await per_op(
        list(range(N)), lambda i: store.commit(ms.Fact(type="note", payload={"i": i, "text": "x" * 50}))
    )
    get, _ = await per_op(ids, store.get)
    update, _ = await per_op(ids[:UPDATES], lambda fid: store.update(fid, {"payload": {"j": 1}}))
    await storage.close()
    return commit, get, update


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("label", nargs="?", default="run")
    parser.add_argument("--async", dest="use_async", action="store_true", help="measure AsyncMemoryStore")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as workdir:
        commit, get, update = asyncio.run(_async(workdir)) if args.use_async else _sync(workdir)
    kind = "async" if args.use_async else "sync"
    print(
        f"{args.label} ({kind}): commit {commit:.0f} µs CPU, get {get:.0f} µs CPU, update {update:.0f} µs CPU "
        f"({ms.__file__})"
    )


if __name__ == "__main__":
    main()
