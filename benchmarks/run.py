"""Side-by-side benchmark: memstate 0.5.1 vs memstate_sql, plus a raw-driver floor.

    python -m benchmarks.run [--quick] [--no-1m] [--only sqlite,postgresql,mariadb] [--no-async]
                             [--process-seconds 5]

Needs ``pip install -e ".[bench]"`` (memstate==0.5.1 is a benchmark-only dependency) and, for the server
databases, MEMSTATE_SQL_TEST_POSTGRES_URL / MEMSTATE_SQL_TEST_MYSQL_URL (the test URLs; tables are created under
a fresh ``bench...`` prefix and dropped afterwards). memstate 0.5.1 has no MySQL/MariaDB backend, so MariaDB is
measured for memstate_sql and the raw floor only.

One workload, same for everyone, single thread:

* commits: new facts committed one by one (store.commit: one fact row + one log entry);
* updates: store.update on existing facts; point reads: store.get (on PostgreSQL after an ANALYZE of every
  system's tables, as autovacuum would soon do: `steady_statistics`);
* rollbacks: store.rollback(session, 1) of commits made in that session;
* filtered query: ``query("note", {"payload.group": g})`` returning 50 rows, on a data set of 20k facts and of
  1M facts (bulk-loaded with multi-row inserts, not 1M commits). memstate_sql declares ``payload.group`` as an
  indexed number path; memstate cannot declare one;
* raw floor: the commit workload as a plain DB-API loop, one fact row + one log row per transaction;
* async stores (``--no-async`` skips them): commits, updates, point reads and rollbacks through memstate_sql's
  ``AsyncMemoryStore`` (aiosqlite, psycopg 3 async, aiomysql) against memstate 0.5.1's ``AsyncMemoryStore``
  (``AsyncSQLiteStorage``, ``AsyncPostgresStorage``), one coroutine at a time; on SQLite both at memstate's
  durability (WAL + ``synchronous=NORMAL``); each row also says what share of our sync store's rate (same
  durability) the async store reaches;
* 8 writer processes (PostgreSQL, MariaDB; ``--process-seconds 0`` skips them): each process commits facts in
  its own session for ``--process-seconds`` seconds after a common start; aggregate commits/s of the 8 against
  one process doing the same alone.

Figures are operations per second (medians in ms for queries); ratios are memstate_sql / memstate.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import multiprocessing
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa

import memstate_sql as ms
from benchmarks import memory
from memstate_sql.indexes import IndexedPath
from memstate_sql.records import singleton_slot

PG_URL = os.environ.get("MEMSTATE_SQL_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
MY_URL = os.environ.get("MEMSTATE_SQL_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
GROUP = 50  # facts per payload.group value: every filtered query returns 50 rows
TS = datetime(2026, 1, 1, tzinfo=timezone.utc)


@dataclass
class Sizes:
    writes: int
    reads: int
    rollbacks: int
    queries: int
    small: int
    large: int
    batch: int


QUICK = Sizes(writes=200, reads=500, rollbacks=100, queries=20, small=20_000, large=0, batch=10_000)
FULL = Sizes(writes=1000, reads=3000, rollbacks=300, queries=50, small=20_000, large=1_000_000, batch=20_000)
BATCH = 1000  # facts per commit_many call


def rate(n: int, fn: Callable[[int], Any]) -> float:
    start = time.perf_counter()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - start)


def median_ms(n: int, fn: Callable[[int], Any]) -> float:
    times = []
    for i in range(n):
        start = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def payload(i: int) -> dict[str, Any]:
    return {"group": i // GROUP, "score": i % 997, "name": f"user-{i}", "tags": ["a", "b"], "active": i % 2 == 0}


def fact_doc(i: int, prefix: str = "b") -> dict[str, Any]:
    return {
        "id": f"{prefix}{i:08d}",
        "type": "note",
        "payload": payload(i),
        "source": "bench",
        "session_id": None,
        "ts": TS.isoformat().replace("+00:00", "Z"),
    }


# ---------------------------------------------------------------------------- systems


@dataclass
class System:
    """One store under test: a memstate or memstate_sql MemoryStore plus its bulk loader."""

    name: str
    db: str
    store: Any
    fact_cls: Any
    bulk: Callable[[int, int], None]
    close: Callable[[], None]
    results: dict[str, float] = field(default_factory=dict)
    round_trips: dict[str, int] = field(default_factory=dict)
    #: The memstate system this one is compared with, and (async rows) our sync system of the same durability.
    pair: str = "memstate"
    sync: str | None = None
    #: memstate_sql's sync stores: the URL and table prefix, for the streaming-memory row (`benchmarks.memory`).
    url: str = ""
    prefix: str = ""
    #: Brings the planner statistics of the run's tables up to date (`steady_statistics`).
    stats: Callable[[], None] = lambda: None


def memstate_sqlite(workdir: str) -> System:
    import memstate

    path = os.path.join(workdir, "memstate.db")
    storage = memstate.SQLiteStorage(path)

    def bulk(start: int, stop: int) -> None:
        conn = sqlite3.connect(path)
        with conn:
            conn.executemany(
                "INSERT INTO facts(id, type, data) VALUES (?, ?, ?)",
                ((d["id"], d["type"], json.dumps(d)) for d in map(fact_doc, range(start, stop))),
            )
        conn.close()

    return System("memstate", "sqlite", memstate.MemoryStore(storage), memstate.Fact, bulk, storage.close)


def memstate_postgres(prefix: str) -> System:
    import memstate
    from memstate.backends.postgres import PostgresStorage

    storage = PostgresStorage(PG_URL, table_prefix=prefix)
    table = storage._facts_table

    def bulk(start: int, stop: int) -> None:
        with storage._engine.begin() as conn:
            for lo in range(start, stop, 10_000):
                conn.execute(
                    sa.insert(table),
                    [{"id": d["id"], "doc": d} for d in map(fact_doc, range(lo, min(stop, lo + 10_000)))],
                )
            conn.exec_driver_sql(f"ANALYZE {table.name}")

    def close() -> None:
        storage.close()

    return System("memstate", "postgresql", memstate.MemoryStore(storage), memstate.Fact, bulk, close)


def memstate_sql(db: str, url: str, prefix: str, synchronous: str | None = None) -> System:
    """memstate_sql's store. Its bulk-loaded facts have distinct timestamps (one microsecond apart), as facts
    committed over time have: `iter_query` pages by (ts, id) and the ts index has no id, so a page inside a
    run of equal timestamps sorts the whole run (benchmarks/README.md, "After the 2026-12-04 merges")."""
    name = "memstate_sql"
    options: dict[str, Any] = {}
    if synchronous is not None:
        # SQLStorage(sqlite_synchronous="normal"): memstate's own SQLite setting (WAL + synchronous=NORMAL:
        # atomic and consistent, but the last commits can be lost on power failure). The default is "full".
        options["sqlite_synchronous"] = synchronous
        name = f"memstate_sql[{synchronous.lower()}]"
    storage = ms.SQLStorage(url, table_prefix=prefix, indexed_paths=[IndexedPath("payload.group", "number")], **options)
    store = ms.MemoryStore(storage)
    store.count()  # prepares the schema

    def bulk(start: int, stop: int) -> None:
        def work(repo: Any) -> None:
            for lo in range(start, stop, 10_000):
                rows = []
                for i in range(lo, min(stop, lo + 10_000)):
                    d = fact_doc(i)
                    rows.append({
                        **d, "ts": TS + timedelta(microseconds=i), "version": 1,
                        "immutable": False, "singleton": None,
                        "singleton_slot": singleton_slot(d["id"], None),
                    })  # fmt: skip
                repo.conn.execute(sa.insert(repo.facts), rows)
            name = repo.facts.name
            analyze = {"postgresql": f"ANALYZE {name}", "sqlite": "ANALYZE"}.get(db, f"ANALYZE TABLE {name}")
            repo.conn.exec_driver_sql(analyze)

        storage.transaction(work, name="bulk")

    return System(name, db, store, ms.Fact, bulk, storage.close, url=url, prefix=prefix)


# ---------------------------------------------------------------------------- async stores

#: An async store under test: (store, Fact class, coroutine function closing it).
AsyncMade = tuple[Any, Any, Callable[[], Awaitable[None]]]


async def memstate_async(db: str, workdir: str, prefix: str) -> AsyncMade:
    import memstate

    if db == "sqlite":
        from memstate.backends.sqlite import AsyncSQLiteStorage

        lite = AsyncSQLiteStorage(os.path.join(workdir, "memstate-async.db"))  # WAL + synchronous=NORMAL
        await lite.connect()
        return memstate.AsyncMemoryStore(lite), memstate.Fact, lite.close
    from memstate.backends.postgres import AsyncPostgresStorage

    pg = AsyncPostgresStorage(PG_URL, table_prefix=prefix)
    await pg.create_tables()
    return memstate.AsyncMemoryStore(pg), memstate.Fact, pg.close


async def memstate_sql_async(url: str, prefix: str, synchronous: str | None) -> AsyncMade:
    from memstate_sql.aio import AsyncMemoryStore, AsyncSQLStorage

    options = {"sqlite_synchronous": synchronous} if synchronous else {}
    storage = AsyncSQLStorage(url, table_prefix=prefix, **options)
    store = AsyncMemoryStore(storage)
    await store.count()  # prepares the schema
    return store, ms.Fact, storage.close


async def _arate(n: int, fn: Callable[[int], Awaitable[Any]]) -> float:
    start = time.perf_counter()
    for i in range(n):
        await fn(i)
    return n / (time.perf_counter() - start)


async def _async_workload(
    make: Callable[[], Awaitable[AsyncMade]], sizes: Sizes, r: dict[str, float], stats: Callable[[], None]
) -> None:
    store, Fact, close = await make()
    try:
        ids: list[str] = []

        async def commit(i: int) -> None:
            ids.append(await store.commit(Fact(id=f"a{i:08d}", type="note", payload=payload(i)), session_id="as"))

        r["commits/s"] = await _arate(sizes.writes, commit)
        stats()
        r["updates/s"] = await _arate(sizes.writes, lambda i: store.update(ids[i], {"payload": {"score": -i}}))
        r["point reads/s"] = await _arate(sizes.reads, lambda i: store.get(ids[i % len(ids)]))
        for i in range(sizes.rollbacks):
            await store.commit(Fact(id=f"arb{i:08d}", type="note", payload=payload(i)), session_id="arb")
        r["rollbacks/s"] = await _arate(sizes.rollbacks, lambda i: store.rollback("arb", 1))
    finally:
        await close()


def async_systems(db: str, url: str, workdir: str, prefix: str, sizes: Sizes, sync: str | None) -> list[System]:
    """memstate's async store (none for MariaDB) and ours, each measured in its own event loop."""
    synchronous = "normal" if db == "sqlite" else None  # memstate's SQLite durability
    if db == "sqlite":
        url = f"sqlite:///{workdir}/msql-async.db"
    made: list[tuple[str, Callable[[], Awaitable[AsyncMade]]]] = []
    if db != "mysql":
        made.append(("memstate[async]", lambda: memstate_async(db, workdir, prefix + "ma")))
    made.append(("memstate_sql[async]", lambda: memstate_sql_async(url, prefix + "a", synchronous)))
    systems = []
    for name, make in made:
        system = System(name, db, None, None, lambda _a, _b: None, lambda: None, pair="memstate[async]", sync=sync)
        asyncio.run(_async_workload(make, sizes, system.results, lambda: steady_statistics(db, prefix)))
        systems.append(system)
    return systems


def steady_statistics(db: str, prefix: str) -> None:
    """PostgreSQL: ANALYZE the run's tables (every system's: their names start with `prefix`) after a commit
    phase, before the updates and reads. A table PostgreSQL has never analyzed is planned as a tiny one
    (``reltuples = -1``): a point lookup by (namespace, id) then ties with every index that starts with
    the namespace and may scan one of those over the whole namespace (4,000 facts: 2-6 ms instead of 0.02 ms
    per `get` or `update`, EXPLAIN ANALYZE). Autovacuum analyzes a growing table within a minute or so, so
    the steady state of a store in use is the analyzed one; memstate's one-index tables are analyzed too."""
    if db != "postgresql":
        return
    engine = sa.create_engine(PG_URL, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT")
            names = conn.execute(
                sa.text("SELECT tablename FROM pg_tables WHERE schemaname = current_schema() AND tablename LIKE :p"),
                {"p": prefix + "%"},
            ).scalars()
            for name in list(names):
                conn.exec_driver_sql(f'ANALYZE "{name}"')
    finally:
        engine.dispose()


# ---------------------------------------------------------------------------- writer processes


def _writer(url: str, prefix: str, seconds: float, k: int, barrier: Any, counts: Any) -> None:
    storage = ms.SQLStorage(url, table_prefix=prefix)
    store = ms.MemoryStore(storage)
    try:
        store.commit(ms.Fact(type="note", payload=payload(0)), session_id=f"p{k}")  # warm: connection, schema
        barrier.wait()
        n, end = 0, time.perf_counter() + seconds
        while time.perf_counter() < end:
            store.commit(ms.Fact(type="note", payload=payload(n)), session_id=f"p{k}")
            n += 1
        counts.put(n)
    finally:
        storage.close()


def writers(url: str, prefix: str, processes: int, seconds: float) -> float:
    """Aggregate commits/s of `processes` processes committing at once (each in its own session) for
    `seconds` after a common start."""
    ctx = multiprocessing.get_context("spawn")
    barrier, counts = ctx.Barrier(processes), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(url, prefix, seconds, k, barrier, counts)) for k in range(processes)]
    for proc in procs:
        proc.start()
    try:
        total = sum(counts.get(timeout=seconds + 300) for _ in procs)
    finally:
        for proc in procs:
            proc.join(timeout=60)
    return float(total) / seconds


def parallel_writers(db: str, url: str, prefix: str, seconds: float, processes: int = 8) -> tuple[float, float]:
    """(one process's commits/s, `processes` processes' aggregate commits/s) on one fresh table prefix."""
    storage = ms.SQLStorage(url, table_prefix=prefix)
    try:
        ms.MemoryStore(storage).count()  # the schema, once, before the writers start
    finally:
        storage.close()
    return writers(url, prefix, 1, seconds), writers(url, prefix, processes, seconds)


# ---------------------------------------------------------------------------- raw floor


@contextmanager
def raw_connection(db: str, url: str, synchronous: str = "FULL") -> Iterator[tuple[Any, str]]:
    """A DB-API connection and its paramstyle placeholder."""
    if db == "sqlite":
        conn = sqlite3.connect(url, isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        yield conn, "?"
        conn.close()
        return
    parsed = sa.make_url(url)
    if db == "postgresql":
        import psycopg

        pconn = psycopg.connect(
            host=parsed.host, port=parsed.port or 5432, user=parsed.username, password=parsed.password or None,
            dbname=parsed.database,
        )  # fmt: skip
        yield pconn, "%s"
        pconn.close()
        return
    import pymysql

    mconn = pymysql.connect(
        host=parsed.host, port=parsed.port or 3306, user=parsed.username, password=parsed.password or "",
        database=parsed.database, autocommit=False,
    )  # fmt: skip
    yield mconn, "%s"
    mconn.close()


def raw_floor(db: str, url: str, n: int, prefix: str, synchronous: str = "FULL") -> float:
    facts, log = f"{prefix}_rawf", f"{prefix}_rawt"
    with raw_connection(db, url, synchronous) as (conn, ph):
        cur = conn.cursor()
        text_type = "TEXT" if db != "mysql" else "LONGTEXT"
        key_type = "VARCHAR(191)"
        seq = {"sqlite": "INTEGER PRIMARY KEY", "postgresql": "BIGSERIAL PRIMARY KEY"}.get(
            db, "BIGINT AUTO_INCREMENT PRIMARY KEY"
        )
        cur.execute(f"CREATE TABLE {facts} (id {key_type} PRIMARY KEY, type {key_type}, payload {text_type})")
        cur.execute(f"CREATE TABLE {log} (seq {seq}, fact_id {key_type}, entry {text_type})")
        if db != "sqlite":
            conn.commit()

        def one(i: int) -> None:
            d = fact_doc(i, "r")
            if db == "sqlite":
                cur.execute("BEGIN IMMEDIATE")
            cur.execute(f"INSERT INTO {facts} (id, type, payload) VALUES ({ph}, {ph}, {ph})",
                        (d["id"], d["type"], json.dumps(d["payload"])))  # fmt: skip
            cur.execute(f"INSERT INTO {log} (fact_id, entry) VALUES ({ph}, {ph})", (d["id"], json.dumps(d)))
            if db == "sqlite":
                cur.execute("COMMIT")
            else:
                conn.commit()

        try:
            return rate(n, one)
        finally:
            cur.execute(f"DROP TABLE {facts}")
            cur.execute(f"DROP TABLE {log}")
            if db != "sqlite":
                conn.commit()


# ---------------------------------------------------------------------------- round trips, cold start


@contextmanager
def messages(engine: Any) -> Iterator[list[str]]:
    """The messages sent to the database while the block runs, by their first word: statements, plus
    COMMIT/ROLLBACK (``END``) where the driver sends one (an idle psycopg connection's reset is local)
    and psycopg's implicit BEGIN. On MySQL (pymysql), every command the driver sends, counted in the
    driver: a statement listener would route the store's statements through SQLAlchemy's execution layer
    (`dialects.base.traced`), whose autobegun transaction on a held autocommit connection then ends in a
    COMMIT that the untraced path never sends."""
    dialect = engine.dialect.name
    sent: list[str] = []
    if dialect == "mysql":
        with _driver_commands(sent):
            yield sent
        return

    def statement(conn: Any, cursor: Any, sql: str, *args: Any) -> None:
        dbapi = conn.connection.dbapi_connection
        if dialect == "postgresql" and not dbapi.autocommit and dbapi.info.transaction_status == 0:
            sent.append("BEGIN")  # psycopg opens the transaction with a BEGIN of its own
        sent.append(sql.split(None, 1)[0])

    def ended(conn: Any) -> None:
        dbapi = conn.connection.dbapi_connection
        if dialect == "postgresql" and dbapi.info.transaction_status == 0:
            return  # nothing to end: psycopg sends nothing
        if dialect == "sqlite":
            return  # in-process: no round trip
        sent.append("END")

    sa.event.listen(engine, "before_cursor_execute", statement)
    sa.event.listen(engine, "commit", ended)
    sa.event.listen(engine, "rollback", ended)
    try:
        yield sent
    finally:
        sa.event.remove(engine, "before_cursor_execute", statement)
        sa.event.remove(engine, "commit", ended)
        sa.event.remove(engine, "rollback", ended)


@contextmanager
def _driver_commands(sent: list[str]) -> Iterator[None]:
    """Every command pymysql sends while the block runs (one round trip each), by its first word (a
    multi-statement text is one command)."""
    import pymysql.connections

    driver = pymysql.connections.Connection
    original = driver._execute_command

    def counted(self: Any, command: int, sql: Any) -> Any:
        text = sql.decode(errors="replace") if isinstance(sql, bytes) else str(sql)
        sent.append(text.split(None, 1)[0] if text.strip() else str(command))
        return original(self, command, sql)

    driver._execute_command = counted  # type: ignore[method-assign]
    try:
        yield
    finally:
        driver._execute_command = original  # type: ignore[method-assign]


def round_trips(store: Any, fact_id: str) -> dict[str, int]:
    """Messages to the database per operation (`messages`)."""
    counts: dict[str, int] = {}
    with messages(store.storage.engine) as sent:
        for name, op in [
            ("commit", lambda: store.commit(ms.Fact(type="note", payload={"rt": 1}), session_id="rt")),
            ("update", lambda: store.update(fact_id, {"payload": {"rt": 2}})),
            ("get", lambda: store.get(fact_id)),
            ("query", lambda: store.query("note", {"payload.group": 0}, limit=5)),
        ]:
            op()  # warm
            sent.clear()
            op()
            counts[name] = len(sent)
    return counts


def cold_start(workdir: str, runs: int = 5) -> dict[str, float]:
    """Median wall time of `import memstate` / `import memstate_sql` in a fresh interpreter, and of
    memstate_sql's first operation (a get) on an up-to-date SQLite file."""
    url = f"sqlite:///{workdir}/cold.db"
    store = ms.MemoryStore(ms.SQLStorage(url))
    store.commit(ms.Fact(id="c", type="note", payload={}))
    store.storage.close()
    timer = "import time, sys; t = time.perf_counter(); {0}; print(time.perf_counter() - t)"
    first = (
        "import memstate_sql as ms, time; t = time.perf_counter(); "
        f"ms.MemoryStore(ms.SQLStorage({url!r})).get('c'); print(time.perf_counter() - t)"
    )
    cases = {
        "import memstate": timer.format("import memstate"),
        "import memstate_sql": timer.format("import memstate_sql"),
    }
    cases["first op"] = first
    found: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(runs):
        for name, code in cases.items():  # interleaved: the machine's load hits both alike
            out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
            found[name].append(float(out.stdout.strip()) * 1000)
    return {name: statistics.median(times) for name, times in found.items()}


# ---------------------------------------------------------------------------- workload


def run_workload(system: System, sizes: Sizes, log: Callable[[str], None]) -> None:
    store, Fact = system.store, system.fact_cls
    r = system.results
    ids: list[str] = []

    def written(i: int) -> dict[str, Any]:
        return {**payload(i), "group": -1}  # outside the groups the filtered queries ask for

    def commit(i: int) -> None:
        ids.append(store.commit(Fact(id=f"w{i:08d}", type="note", payload=written(i)), session_id="ws"))

    r["commits/s"] = rate(sizes.writes, commit)
    system.stats()
    r["updates/s"] = rate(sizes.writes, lambda i: store.update(ids[i], {"payload": {"score": -i}}))
    r["point reads/s"] = rate(sizes.reads, lambda i: store.get(ids[i % len(ids)]))
    for i in range(sizes.rollbacks):
        store.commit(Fact(id=f"rb{i:08d}", type="note", payload=written(i)), session_id="rb")
    r["rollbacks/s"] = rate(sizes.rollbacks, lambda i: store.rollback("rb", 1))
    if system.name.startswith("memstate_sql"):
        batch = [Fact(id=f"m{i:08d}", type="note", payload=written(i)) for i in range(sizes.batch)]
        start = time.perf_counter()
        for lo in range(0, len(batch), BATCH):
            store.commit_many(batch[lo : lo + BATCH], session_id="mb")
        r["batch facts/s"] = len(batch) / (time.perf_counter() - start)
        system.round_trips = round_trips(store, ids[0])
    log(f"  {system.name}/{system.db}: writes done")

    rng = random.Random(7)

    def filtered(loaded: int) -> Callable[[int], Any]:
        groups = [rng.randrange(loaded // GROUP) for _ in range(sizes.queries)]

        def q(i: int) -> None:
            found = store.query("note", {"payload.group": groups[i]})
            assert len(found) == GROUP, (system.name, system.db, len(found))

        return q

    t0 = time.perf_counter()
    system.bulk(0, sizes.small)
    log(f"  {system.name}/{system.db}: loaded {sizes.small} facts in {time.perf_counter() - t0:.1f}s")
    r["query ms @20k"] = median_ms(sizes.queries, filtered(sizes.small))
    undeclared_query(system, sizes)
    if sizes.large:
        t0 = time.perf_counter()
        for lo in range(sizes.small, sizes.large, 100_000):
            system.bulk(lo, min(sizes.large, lo + 100_000))
        log(f"  {system.name}/{system.db}: loaded {sizes.large} facts in {time.perf_counter() - t0:.1f}s")
        slow = system.name == "memstate"  # full scans: a few queries are enough for a median
        r["query ms @1M"] = median_ms(min(sizes.queries, 7) if slow else sizes.queries, filtered(sizes.large))
        if system.url:
            r["iter_query MB @1M"] = memory.measure(system.url, system.prefix)["growth MB"]
            log(f"  {system.name}/{system.db}: streamed {sizes.large} facts, {r['iter_query MB @1M']:.1f} MB")


def undeclared_query(system: System, sizes: Sizes) -> None:
    """``query("note", {"payload.score": s})`` on the 20k facts: an equality on a path nobody declared
    (about 20 rows; memstate_sql's PostgreSQL store serves it from the payload's GIN index)."""
    rng = random.Random(11)
    scores = [rng.randrange(997) for _ in range(sizes.queries)]

    def q(i: int) -> None:
        assert system.store.query("note", {"payload.score": scores[i]}), (system.name, system.db)

    system.results["query undecl ms"] = median_ms(sizes.queries, q)


# ---------------------------------------------------------------------------- report

TARGETS = {
    ("sqlite", "commits/s"): 1.0, ("sqlite", "updates/s"): 1.0, ("sqlite", "rollbacks/s"): 1.0,
    ("postgresql", "commits/s"): 3.0, ("postgresql", "updates/s"): 3.0, ("postgresql", "rollbacks/s"): 3.0,
    ("sqlite", "point reads/s"): 1.0, ("postgresql", "point reads/s"): 1.5,
}  # fmt: skip
#: Absolute targets of the issue (facts per second of commit_many).
BATCH_TARGETS = {"sqlite": 20_000, "postgresql": 10_000}


#: Async rows: ratio against memstate's AsyncMemoryStore, and share of our own sync store.
ASYNC_TARGETS = {"sqlite": 1.0, "postgresql": 1.0}
ASYNC_OF_SYNC = 0.6
#: 8 writer processes: aggregate commits/s against one process.
PARALLEL_TARGETS = {"postgresql": 3.0}


def report(
    systems: list[System],
    floors: dict[str, float],
    cold: dict[str, float] | None = None,
    parallel: dict[str, tuple[float, float, float]] | None = None,
) -> str:
    metrics = ["commits/s", "updates/s", "point reads/s", "rollbacks/s", "batch facts/s", "query ms @20k"]
    metrics.append("query undecl ms")  # 20k facts, payload.score undeclared
    metrics.append("query ms @1M")
    metrics.append("iter_query MB @1M")  # peak RSS growth streaming the 1M facts (benchmarks.memory)
    lines = [
        f"{'database':<18} {'metric':<15} {'memstate':>10} {'memstate_sql':>13} {'ratio':>8}  note",
        "-" * 96,
    ]
    for ours in (s for s in systems if s.name.startswith("memstate_sql")):
        db = ours.db
        theirs = next((s for s in systems if s.db == db and s.name == ours.pair), None)
        sync = next((s for s in systems if s.db == db and s.name == ours.sync), None) if ours.sync else None
        variant = ours.name[len("memstate_sql") :]
        label = ("mariadb" if db == "mysql" else db) + variant
        for metric in metrics:
            if metric not in ours.results:
                continue
            mine = ours.results[metric]
            other = theirs.results.get(metric) if theirs else None
            if other is None:
                ratio, shown = "", "-"
            elif metric.startswith("query"):
                ratio, shown = f"{other / mine:.1f}x", f"{other:.2f}"  # faster = memstate time / ours
            else:
                ratio, shown = f"{mine / other:.2f}x", f"{other:.0f}"
            note = ""
            target = ASYNC_TARGETS.get(db) if ours.sync else TARGETS.get((db, metric))
            if target and other:
                note = f"target >= {target}x"
            if sync is not None and metric in sync.results:
                share = f"{mine / sync.results[metric]:.0%} of {sync.name} (>= {ASYNC_OF_SYNC:.0%})"
                note = f"{note}; {share}" if note else share
            if metric == "query ms @20k" and other:
                note = "target >= 30x"
            if metric == "query undecl ms" and other:
                note = "20k facts, undeclared payload.score (target >= 5x)"
            if metric == "batch facts/s":
                batch_target = BATCH_TARGETS.get(db)
                note = f"commit_many, {BATCH} facts per call" + (f" (target >= {batch_target})" if batch_target else "")
            if metric == "iter_query MB @1M":
                note = "peak RSS growth of a fresh process streaming 1M facts (target <= 100 MB)"
            if metric == "query ms @1M":
                note = f"1M/20k = {mine / ours.results['query ms @20k']:.2f} (target <= 2)"
            value = f"{mine:.2f}" if metric.startswith("query") else f"{mine:.0f}"
            if metric == "iter_query MB @1M":
                value = f"{mine:.1f}"
            lines.append(f"{label:<18} {metric:<15} {shown:>10} {value:>13} {ratio:>8}  {note}")
        floor = floors.get(db + variant)
        if floor:
            pct = ", ".join(
                f"{m.split('/')[0]} {ours.results[m] / floor:.0%}" for m in ("commits/s", "updates/s", "rollbacks/s")
            )
            lines.append(
                f"{label:<18} {'raw floor tx/s':<15} {'':>10} {floor:>13.0f} {'':>8}  vs floor: {pct} (>= 50%)"
            )
        if ours.round_trips:
            trips = ", ".join(f"{op} {n}" for op, n in ours.round_trips.items())
            lines.append(f"{label:<18} {'round trips':<15} {'':>10} {'':>13} {'':>8}  {trips}")
        lines.append("")
    if parallel:
        lines.append(f"{'writer processes':<18} {'':<15} {'1 process':>10} {'8 processes':>13} {'ratio':>8}")
    for db, (one, many, seconds) in (parallel or {}).items():
        label = "mariadb" if db == "mysql" else db
        target = PARALLEL_TARGETS.get(db)
        lines.append(
            f"{label + '[8 proc]':<18} {'commits/s':<15} {one:>10.0f} {many:>13.0f} {many / one:>7.2f}x  "
            f"8 processes at once / 1 process, {seconds:g} s each" + (f" (target >= {target}x)" if target else "")
        )
    if parallel:
        lines.append("")
    if cold:
        base = cold["import memstate"]
        lines.append(
            f"{'cold start':<18} {'import ms':<15} {base:>10.0f} {cold['import memstate_sql']:>13.0f} "
            f"{cold['import memstate_sql'] / base:>7.2f}x  memstate_sql / memstate time (target <= 1.5x)"
        )
        lines.append(
            f"{'cold start':<18} {'first op ms':<15} {'':>10} {cold['first op']:>13.1f} {'':>8}  "
            "SQLStorage + get on an up-to-date SQLite file, fresh process (target <= 30 ms)"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small counts, 20k facts only (about a minute)")
    parser.add_argument("--no-1m", action="store_true", help="skip the 1M-fact data set")
    parser.add_argument("--only", default="sqlite,postgresql,mariadb", help="comma-separated databases")
    parser.add_argument("--json", help="also write the raw figures to this file")
    parser.add_argument(
        "--no-normal", action="store_true", help="skip the SQLite variant with memstate's synchronous=NORMAL"
    )
    parser.add_argument("--no-cold", action="store_true", help="skip the cold-start measurements")
    parser.add_argument("--no-async", action="store_true", help="skip the async stores (AsyncMemoryStore)")
    parser.add_argument(
        "--process-seconds",
        type=float,
        default=5.0,
        help="seconds each writer process commits in the 8-process rows (PostgreSQL, MariaDB); 0 skips them",
    )
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.no_1m:
        sizes = Sizes(**{**sizes.__dict__, "large": 0})
    wanted = {"mariadb": "mysql"}
    dbs = [wanted.get(d.strip(), d.strip()) for d in args.only.split(",") if d.strip()]
    prefix = "bench" + uuid.uuid4().hex[:8]
    workdir = tempfile.mkdtemp(prefix="memstate-bench-")
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    systems: list[System] = []
    floors: dict[str, float] = {}
    parallel: dict[str, tuple[float, float, float]] = {}
    try:
        for db in dbs:
            log(f"== {db}")
            if db == "sqlite":
                candidates = [
                    lambda: memstate_sqlite(workdir),
                    lambda: memstate_sql("sqlite", f"sqlite:///{workdir}/msql.db", prefix),
                ]
                floor_url = os.path.join(workdir, "raw.db")
            elif db == "postgresql":
                candidates = [
                    lambda: memstate_postgres(prefix + "m"),
                    lambda: memstate_sql("postgresql", PG_URL, prefix),
                ]
                floor_url = PG_URL
            else:
                candidates = [lambda: memstate_sql("mysql", MY_URL, prefix)]
                floor_url = MY_URL
            floors[db] = raw_floor(db, floor_url, sizes.writes, prefix)
            log(f"  raw floor: {floors[db]:.0f} tx/s")
            for make in candidates:
                system = make()
                system.stats = functools.partial(steady_statistics, db, prefix)
                systems.append(system)
                try:
                    run_workload(system, sizes, log)
                finally:
                    system.close()
            if db == "sqlite" and not args.no_normal:
                floors["sqlite[normal]"] = raw_floor(
                    db, os.path.join(workdir, "raw2.db"), sizes.writes, prefix, "NORMAL"
                )
                system = memstate_sql("sqlite", f"sqlite:///{workdir}/msql-normal.db", prefix, "normal")
                systems.append(system)
                try:
                    run_workload(system, Sizes(**{**sizes.__dict__, "large": 0}), log)
                finally:
                    system.close()
            if not args.no_async:
                sync = "memstate_sql[normal]" if db == "sqlite" and not args.no_normal else "memstate_sql"
                if db == "sqlite" and args.no_normal:
                    sync = None  # no sync store at the async rows' durability (normal) in this run
                systems.extend(async_systems(db, floor_url, workdir, prefix, sizes, sync))
                log(f"  async stores/{db}: done")
            if db != "sqlite" and args.process_seconds > 0:
                one, many = parallel_writers(db, floor_url, prefix + "p", args.process_seconds)
                parallel[db] = (one, many, args.process_seconds)
                log(f"  writer processes/{db}: 1 process {one:.0f}/s, 8 processes {many:.0f}/s")
            print(report(systems, floors, parallel=parallel), flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        for url in (PG_URL, MY_URL):
            if any((s.db == "postgresql") == (url == PG_URL) and s.db != "sqlite" for s in systems):
                drop_prefix(url, prefix)
    cold = None if args.no_cold else cold_start(tempfile.mkdtemp(prefix="memstate-cold-"))
    print()
    print(report(systems, floors, cold, parallel))
    if args.json:
        with open(args.json, "w") as fh:
            figures = {f"{s.name}/{s.db}": s.results | {"round trips": s.round_trips} for s in systems}
            writers_ = {db: {"one process": one, "8 processes": many} for db, (one, many, _) in parallel.items()}
            json.dump(figures | {"floors": floors, "cold start ms": cold, "writer processes": writers_}, fh, indent=2)


def drop_prefix(url: str, prefix: str) -> None:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            for table in sa.inspect(conn).get_table_names():
                if table.startswith(prefix):
                    conn.exec_driver_sql(f"DROP TABLE {conn.dialect.identifier_preparer.quote(table)}")
    finally:
        engine.dispose()


if __name__ == "__main__":
    main()
