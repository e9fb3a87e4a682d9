"""Per-operation cost breakdown: where one store operation's time goes, Python or the database.

    python -m benchmarks.breakdown                      # SQLite (normal and full), PostgreSQL, MariaDB
    python -m benchmarks.breakdown --only sqlite-normal,postgresql --ops get,commit

For each operation (`get`, `commit`, `update`, `rollback` of one step, `query` of 50 rows on a declared path
over 2,000 facts) it reports, per operation:

* ``total``: wall time without a profiler (best of 5 rounds: the machine is shared);
* ``database``: ``total`` times the share of a cProfile run spent inside the driver's calls (statement
  execution, fetching, COMMIT/ROLLBACK: driver functions entered from outside the driver; network waits,
  fsync and SQLite's own work are in there). The profiler inflates Python code more than those waits, so the
  share is an upper bound of the database's part;
* ``python``: the rest (``total - database``): memstate_sql, SQLAlchemy, pydantic, the pool;
* ``statements``: statements sent per operation (counted with a ``before_cursor_execute`` listener in a
  separate pass: with a listener on the engine the hot statements take SQLAlchemy's full execution path).

URLs: MEMSTATE_SQL_TEST_POSTGRES_URL / MEMSTATE_SQL_TEST_MYSQL_URL (tables under a fresh ``bk...`` prefix,
dropped at the end); SQLite files in a temporary directory.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

import memstate_sql as ms
from memstate_sql.indexes import IndexedPath

PG_URL = os.environ.get("MEMSTATE_SQL_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
MY_URL = os.environ.get("MEMSTATE_SQL_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
OPS = ("get", "commit", "update", "rollback", "query")
#: Functions of these modules (and the sqlite3 C methods) are "the database".
DRIVER_PARTS = ("/psycopg/", "/psycopg_binary/", "/pymysql/", "/sqlite3/", "/aiosqlite/", "/asyncpg/")
SQLITE_METHODS = ("of 'sqlite3.", "sqlite3.Connection", "sqlite3.Cursor")


def _payload(i: int) -> dict[str, Any]:
    return {"group": i // 50, "score": i % 997, "name": f"user-{i}", "tags": ["a", "b"], "active": i % 2 == 0}


def _is_driver(func: tuple[str, int, str]) -> bool:
    filename, _, name = func
    if filename == "~":
        return any(part in name for part in SQLITE_METHODS)
    return any(part in filename for part in DRIVER_PARTS)


def database_seconds(stats: pstats.Stats) -> float:
    """Cumulative time of driver functions, counted where they are entered from outside the driver."""
    total = 0.0
    for func, (_, _, _, _, callers) in stats.stats.items():  # type: ignore[attr-defined]
        if not _is_driver(func):
            continue
        for caller, (_, _, _, cumulative) in callers.items():
            if not _is_driver(caller):
                total += cumulative
    return total


class Subject:
    def __init__(self, name: str, url: str, **options: Any) -> None:
        self.name = name
        self.prefix = "bk" + uuid.uuid4().hex[:8]
        self.storage = ms.SQLStorage(
            url, table_prefix=self.prefix, indexed_paths=[IndexedPath("payload.group", "number")], **options
        )
        self.store = ms.MemoryStore(self.storage)
        self.store.count()
        self.ids = [
            self.store.commit(ms.Fact(id=f"p{i:06d}", type="note", payload=_payload(i)), session_id="seed")
            for i in range(2000)
        ]
        self.n = 0

    def op(self, name: str) -> Callable[[], Any]:
        store = self.store

        def get() -> Any:
            self.n += 1
            return store.get(self.ids[self.n % len(self.ids)])

        def commit() -> Any:
            self.n += 1
            return store.commit(ms.Fact(id=f"c{self.n:08d}", type="note", payload=_payload(-1)), session_id="c")

        def update() -> Any:
            self.n += 1
            return store.update(self.ids[self.n % len(self.ids)], {"payload": {"score": -self.n}})

        def query() -> Any:
            self.n += 1
            found = store.query("note", {"payload.group": self.n % 40})
            assert len(found) == 50
            return found

        return {"get": get, "commit": commit, "update": update, "query": query}[name]

    def rollback_rounds(self, rounds: int) -> Callable[[], Any]:
        for i in range(rounds):
            self.store.commit(ms.Fact(id=f"r{self.n}-{i}", type="note", payload=_payload(-1)), session_id="rb")
        self.n += 1
        return lambda: self.store.rollback("rb", 1)

    def close(self) -> None:
        with self.storage.engine.begin() as conn:
            for table in (f"{self.prefix}_tx", f"{self.prefix}_facts", f"{self.prefix}_version"):
                conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table}")
        self.storage.close()


def measure(subject: Subject, op: str, n: int) -> dict[str, float]:
    def fn_for(count: int) -> Callable[[], Any]:
        return subject.rollback_rounds(count) if op == "rollback" else subject.op(op)

    fn = fn_for(n * 7)
    for _ in range(n // 5):
        fn()  # warm
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - start) / n)
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    for _ in range(n):
        fn()
    profiler.disable()
    profiled = time.perf_counter() - start
    share = min(1.0, database_seconds(pstats.Stats(profiler)) / profiled)
    sent: list[str] = []

    def count(*args: Any) -> None:
        sent.append(args[2])

    sa.event.listen(subject.storage.engine, "before_cursor_execute", count)
    try:
        fn()
    finally:
        sa.event.remove(subject.storage.engine, "before_cursor_execute", count)
    return {"total": best * 1e6, "database": best * share * 1e6, "statements": len(sent)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="sqlite-normal,sqlite-full,postgresql,mariadb")
    parser.add_argument("--ops", default=",".join(OPS))
    parser.add_argument("-n", type=int, default=200, help="operations per round")
    args = parser.parse_args(argv)
    workdir = tempfile.mkdtemp(prefix="memstate-bk-")
    targets = {
        "sqlite-normal": (f"sqlite:///{workdir}/normal.db", {"sqlite_synchronous": "normal"}),
        "sqlite-full": (f"sqlite:///{workdir}/full.db", {"sqlite_synchronous": "full"}),
        "postgresql": (PG_URL, {}),
        "mariadb": (MY_URL, {}),
    }
    print(f"{'database':<14} {'op':<9} {'total us':>9} {'python us':>10} {'database us':>12} {'stmts':>6}")
    for name in args.only.split(","):
        url, options = targets[name]
        subject = Subject(name, url, **options)
        try:
            for op in args.ops.split(","):
                r = measure(subject, op, args.n)
                python = r["total"] - r["database"]
                print(
                    f"{name:<14} {op:<9} {r['total']:>9.0f} {python:>10.0f} {r['database']:>12.0f}"
                    f" {r['statements']:>6.0f}",
                    flush=True,
                )
        finally:
            subject.close()


if __name__ == "__main__":
    main()
