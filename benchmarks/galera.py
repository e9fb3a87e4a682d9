"""Galera (multi-primary) benchmark: certification retries per commit, and the cost of read-your-writes.

    python -m benchmarks.galera [--seconds 15] [--writers 2] [--base-port 16550] [--urls URL1,URL2,URL3]

Without ``--urls`` it starts a private 3-node MariaDB Galera cluster (tests/servers.py: loopback ports from
``--base-port``, stopped by PID at the end). Each part runs on a fresh table prefix, migrated once on node 1:

* fresh: ``--writers`` threads per node commit new facts of ONE non-singleton type (each commit: a fact row
  and a log entry) for ``--seconds``; counted: commits, and the unit of work's retries (its "retrying after"
  log records) — a retry is a certification conflict (1213) or a lost unique-key race.
* singleton: the same on a type with ``Constraint(singleton_key="k")`` and distinct values per commit.
* reads: on node 2, ``store.get(id)`` of a fact committed on node 1 just before, ``--reads`` times, with the
  default storage and with ``read_your_writes=True`` (``wsrep_sync_wait``); reported: median and p95 latency of
  the get alone, and how often the default storage returned None (a stale read).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import threading
import time
import uuid
from typing import Any

from pydantic import BaseModel

from memstate_sql import Constraint, Fact, MemoryStore, SQLStorage, migrate
from memstate_sql.migrations import downgrade


class _User(BaseModel):
    k: str


class RetryCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.retries = 0  # emit() runs under the handler's own lock

    def emit(self, record: logging.LogRecord) -> None:
        if "retrying after" in record.getMessage():
            self.retries += 1


def writers(urls: list[str], prefix: str, seconds: float, per_node: int, *, singleton: bool) -> dict[str, Any]:
    counter = RetryCounter()
    logger = logging.getLogger("memstate_sql")
    logger.addHandler(counter)
    previous = logger.level
    logger.setLevel(logging.INFO)
    commits = [0] * (len(urls) * per_node)
    errors: list[str] = []
    stores = []
    for url in urls:
        storage = SQLStorage(url, table_prefix=prefix, auto_migrate=False)
        store = MemoryStore(storage)
        if singleton:
            store.register_schema("user", _User, Constraint(singleton_key="k"))
        stores.append(store)
    deadline = time.monotonic() + seconds

    def work(slot: int, store: MemoryStore) -> None:
        try:
            while time.monotonic() < deadline:
                payload = {"k": uuid.uuid4().hex} if singleton else {"n": slot}
                store.commit(Fact(type="user" if singleton else "note", payload=payload), session_id=f"s{slot}")
                commits[slot] += 1
        except Exception as exc:  # reported
            errors.append(f"{type(exc).__name__}: {exc}")

    threads = [
        threading.Thread(target=work, args=(n * per_node + k, stores[n]))
        for n in range(len(urls))
        for k in range(per_node)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    logger.removeHandler(counter)
    logger.setLevel(previous)
    for store in stores:
        store.storage.close()
    total = sum(commits)
    return {
        "commits": total,
        "retries": counter.retries,
        "retries_per_commit": round(counter.retries / total, 4) if total else None,
        "commits_per_s": round(total / seconds, 1),
        "errors": errors[:5],
    }


def reads(urls: list[str], prefix: str, count: int) -> dict[str, Any]:
    writer = MemoryStore(SQLStorage(urls[0], table_prefix=prefix, auto_migrate=False))
    result: dict[str, Any] = {}
    for label, options in (("default", {}), ("read_your_writes", {"read_your_writes": True})):
        reader = MemoryStore(SQLStorage(urls[1], table_prefix=prefix, auto_migrate=False, **options))
        reader.get("warm-up")
        times, stale = [], 0
        for _ in range(count):
            fid = writer.commit(Fact(type="note", payload={"x": 1}), session_id="r")
            started = time.perf_counter()
            found = reader.get(fid)
            times.append(time.perf_counter() - started)
            stale += found is None
        plain = []
        for _ in range(count):  # reads with no write just before (the steady cost of the wait)
            started = time.perf_counter()
            reader.get(fid)
            plain.append(time.perf_counter() - started)
        reader.storage.close()
        times.sort()
        plain.sort()
        result[label] = {
            "get_after_remote_commit_median_ms": round(statistics.median(times) * 1000, 3),
            "get_after_remote_commit_p95_ms": round(times[int(len(times) * 0.95)] * 1000, 3),
            "get_idle_median_ms": round(statistics.median(plain) * 1000, 3),
            "stale_reads": stale,
            "reads": count,
        }
    writer.storage.close()
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--writers", type=int, default=2, help="writer threads per node")
    parser.add_argument("--reads", type=int, default=300)
    parser.add_argument("--base-port", type=int, default=16550)
    parser.add_argument("--urls", default=os.environ.get("MEMSTATE_SQL_BENCH_GALERA_URLS", ""))
    parser.add_argument("--parts", default="fresh,singleton,reads")
    args = parser.parse_args(argv)
    cluster = None
    urls = [u for u in args.urls.split(",") if u]
    if not urls:
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        from tests.servers import GaleraCluster

        cluster = GaleraCluster(base_port=args.base_port)
        started = time.monotonic()
        cluster.start()
        print(f"cluster of 3 started in {time.monotonic() - started:.1f}s: {cluster.version}", flush=True)
        urls = cluster.urls
    try:
        for part in args.parts.split(","):
            prefix = f"bg{uuid.uuid4().hex[:8]}"
            migrate(urls[0], table_prefix=prefix)
            try:
                if part == "reads":
                    figures = reads(urls, prefix, args.reads)
                else:
                    figures = writers(urls, prefix, args.seconds, args.writers, singleton=part == "singleton")
                print(f"{part}: {figures}", flush=True)
            finally:
                downgrade(urls[0], "base", table_prefix=prefix)
    finally:
        if cluster is not None:
            cluster.destroy()


if __name__ == "__main__":
    main()
