"""Multi-primary topology: a private 3-node MariaDB Galera cluster (one per test session, tests/conftest.py).

Writers on every node, migrations and first-use auto-migration from every node at once, declared path
indexes from every node at once, and a node killed with SIGKILL and restarted (IST). Every test runs on
its own table prefix. docs/scaling.md describes what the store does on such a cluster.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import BaseModel

import memstate_sql as ms
from memstate_sql import migrations
from memstate_sql.errors import MemoryStoreError
from memstate_sql.migrations import downgrade
from tests.invariants import check_tables

pytestmark = pytest.mark.topology


class User(BaseModel):
    email: str
    n: int = 0


class RetryLog(logging.Handler):
    """Counts the unit of work's "retrying after" records per thread name."""

    def __init__(self) -> None:
        super().__init__()
        self.by_thread: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        if "retrying after" in record.getMessage():
            self.by_thread[record.threadName] += 1


@pytest.fixture
def retries() -> Iterator[RetryLog]:
    handler = RetryLog()
    logger = logging.getLogger("memstate_sql")
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


@pytest.fixture
def gprefix(galera_cluster: Any) -> Iterator[str]:
    prefix = f"g{uuid.uuid4().hex[:10]}"
    yield prefix
    with contextlib.suppress(Exception):  # a test that never migrated its prefix
        downgrade(galera_cluster.urls[0], "base", table_prefix=prefix)


def run_all(fns: list[Callable[[], Any]]) -> list[Any]:
    """Run the functions in threads started together; their results (or the exceptions they raised)."""
    results: list[Any] = [None] * len(fns)
    barrier = threading.Barrier(len(fns))

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = fns[i]()
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    return results


def checksums(url: str, prefix: str) -> tuple[Any, ...]:
    """CHECKSUM TABLE of the store's tables on one node, read after the node applied the cluster's commits."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SET SESSION wsrep_sync_wait = 15")
            rows = conn.exec_driver_sql(f"CHECKSUM TABLE {prefix}_facts, {prefix}_tx").all()
            return tuple(row[1] for row in rows)
    finally:
        engine.dispose()


def test_writers_on_every_node(galera_cluster: Any, gprefix: str, retries: RetryLog) -> None:
    urls = galera_cluster.urls
    ms.migrate(urls[0], table_prefix=gprefix)
    stores = []
    for url in urls:
        store = ms.MemoryStore(ms.SQLStorage(url, table_prefix=gprefix, auto_migrate=False))
        store.register_schema("user", User, ms.Constraint(singleton_key="email"))
        stores.append(store)
    deadline = time.monotonic() + 12
    fresh = Counter[str]()
    errors: list[str] = []

    def notes(node: int, k: int) -> None:
        store, mine = stores[node], []
        while time.monotonic() < deadline:
            fid = store.commit(ms.Fact(type="note", payload={"node": node, "k": k}), session_id=f"n{node}{k}")
            fresh[threading.current_thread().name] += 1
            mine.append(fid)
            if len(mine) % 5 == 0:  # an update of an own fact now and then
                store.update(mine[-2], {"payload": {"node": node, "k": k, "updated": True}})

    def users(node: int) -> None:
        store, i = stores[node], 0
        while time.monotonic() < deadline:
            i += 1
            email = f"u{i % 7}@x"  # 7 contested singleton keys, written from every node
            store.commit(ms.Fact(type="user", payload={"email": email, "n": i}), session_id=f"u{node}")

    def guarded(fn: Callable[..., None], *args: Any) -> Callable[[], None]:
        def run() -> None:
            try:
                fn(*args)
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")

        return run

    workers = [threading.Thread(target=guarded(notes, n, k), name=f"notes-{n}-{k}") for n in range(3) for k in range(2)]
    workers += [threading.Thread(target=guarded(users, n), name=f"users-{n}") for n in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    assert not errors, errors[:5]
    commits = sum(fresh.values())
    note_retries = sum(n for name, n in retries.by_thread.items() if name.startswith("notes-"))
    assert commits > 100
    assert note_retries <= 0.02 * commits, f"{note_retries} retries for {commits} commits of fresh facts"
    for store in stores:
        store.storage.close()
    for url in urls:
        check_tables(url, gprefix)
    sums = [checksums(url, gprefix) for url in urls]
    assert sums[0] == sums[1] == sums[2], sums
    engine = sa.create_engine(urls[2], poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SET SESSION wsrep_sync_wait = 15")
            per_key = conn.execute(
                sa.text(f"SELECT singleton, COUNT(*) FROM {gprefix}_facts WHERE type = 'user' GROUP BY singleton")
            ).all()
    finally:
        engine.dispose()
    assert len(per_key) == 7 and all(n == 1 for _, n in per_key), per_key


def test_migrate_from_every_node_at_once(galera_cluster: Any) -> None:
    urls = galera_cluster.urls
    for _ in range(3):
        prefix = f"g{uuid.uuid4().hex[:10]}"
        try:
            results = run_all([lambda u=u, p=prefix: ms.migrate(u, table_prefix=p) for u in urls])  # type: ignore[misc]
            assert results == [migrations.head_revision()] * 3, results
            for url in urls:
                migrations.check(url, table_prefix=prefix)
        finally:
            downgrade(urls[0], "base", table_prefix=prefix)


def test_auto_migrating_stores_start_on_every_node(galera_cluster: Any, gprefix: str) -> None:
    def first_use(url: str) -> str:
        store = ms.MemoryStore(ms.SQLStorage(url, table_prefix=gprefix, read_your_writes=True))
        try:
            fid = store.commit(ms.Fact(type="note", payload={"at": url}), session_id="s")
            assert store.get(fid) is not None
            return fid
        finally:
            store.storage.close()

    results = run_all([lambda u=u: first_use(u) for u in galera_cluster.urls])  # type: ignore[misc]
    assert all(isinstance(r, str) for r in results), results
    reader = ms.MemoryStore(ms.SQLStorage(galera_cluster.urls[1], table_prefix=gprefix, read_your_writes=True))
    try:
        assert all(reader.get(fid) is not None for fid in results)
    finally:
        reader.storage.close()


def test_indexed_path_declared_on_every_node_at_once(galera_cluster: Any, gprefix: str) -> None:
    urls = galera_cluster.urls
    ms.migrate(urls[0], table_prefix=gprefix)

    def declare(url: str) -> int:
        storage = ms.SQLStorage(
            url,
            table_prefix=gprefix,
            auto_migrate=False,
            indexed_paths=[("payload.group", "number"), ("payload.tag", "string")],
        )
        store = ms.MemoryStore(storage)
        try:
            store.commit(ms.Fact(type="note", payload={"group": 3, "tag": url[-12:]}), session_id="s")
            return len(store.query("note", {"payload.group": 3}))
        finally:
            storage.close()

    results = run_all([lambda u=u: declare(u) for u in urls])  # type: ignore[misc]
    assert all(isinstance(r, int) and r >= 1 for r in results), results
    engine = sa.create_engine(urls[2], poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            names = {i["name"] for i in sa.inspect(conn).get_indexes(f"{gprefix}_facts")}
    finally:
        engine.dispose()
    assert sum("_facts_pn_" in n for n in names) == 2, names  # one index per declared path


def test_node_killed_and_restarted(galera_cluster: Any, gprefix: str) -> None:
    urls = galera_cluster.urls
    ms.migrate(urls[0], table_prefix=gprefix)
    victim = galera_cluster.nodes[2]
    acked: list[str] = []
    unknown: list[str] = []
    errors: list[str] = []
    stop = threading.Event()

    def writer(url: str, survivor: bool) -> None:
        # One session per writer: writers of one session on several nodes take turns on its position row
        # by certification (docs/log-order.md); this test is about a node dying, not about that contention.
        store = ms.MemoryStore(ms.SQLStorage(url, table_prefix=gprefix, auto_migrate=False))
        try:
            while not stop.is_set():
                fact = ms.Fact(type="note", payload={"at": url})
                try:
                    store.commit(fact, session_id=f"k-{url}")
                    acked.append(fact.id)
                except MemoryStoreError as exc:
                    if survivor:
                        errors.append(f"{type(exc).__name__}: {exc}")
                        return
                    unknown.append(fact.id)  # the killed node's client: outcome unknown, then it gives up
                    return
        finally:
            store.storage.close()

    threads = [threading.Thread(target=writer, args=(url, n < 2)) for n, url in enumerate(urls)]
    for t in threads:
        t.start()
    time.sleep(2)
    before = len(acked)
    victim.stop(crash=True)
    time.sleep(8)  # eviction of the dead node (~6 s), writers on the survivors keep going
    during = len(acked)
    log_before = (victim.root / "log").stat().st_size
    victim.start()  # rejoins by IST from a survivor's gcache
    time.sleep(1)
    stop.set()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert during > before, "the survivors stopped committing"
    assert galera_cluster.cluster_size(2) == 3
    for url in urls:
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql("SET SESSION wsrep_sync_wait = 15")
                ids = set(conn.execute(sa.text(f"SELECT id FROM {gprefix}_facts")).scalars())
        finally:
            engine.dispose()
        missing = set(acked) - ids
        assert not missing, f"{len(missing)} acknowledged commits missing on {url}"
        check_tables(url, gprefix)
    with open(victim.root / "log", "rb") as log:
        log.seek(log_before)
        rejoin = log.read().decode(errors="replace")
    # Caught up by IST (the write-sets it missed, from a survivor's gcache), not by a full copy: the rsync
    # script logs "rsync IST completed" then, "rsync SST completed" for a full state transfer.
    assert "rsync IST completed on joiner" in rejoin and "IST received" in rejoin, rejoin[-3000:]
    assert "rsync SST completed" not in rejoin, rejoin[-3000:]


def test_read_your_writes_on_another_node(galera_cluster: Any, gprefix: str) -> None:
    """A fact committed through node 1 is found at once through node 2 with read_your_writes (default
    storages may answer None there: wsrep_sync_wait = 0); update() of it finds it too."""
    urls = galera_cluster.urls
    ms.migrate(urls[0], table_prefix=gprefix)
    writer = ms.MemoryStore(ms.SQLStorage(urls[0], table_prefix=gprefix, auto_migrate=False))
    reader = ms.MemoryStore(ms.SQLStorage(urls[1], table_prefix=gprefix, auto_migrate=False, read_your_writes=True))
    try:
        engine = reader.storage.engine
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT @@SESSION.wsrep_sync_wait").scalar() == 3
        for i in range(150):
            fid = writer.commit(ms.Fact(type="note", payload={"i": i}), session_id="w")
            assert reader.get(fid) is not None, f"stale read after {i} commits"
            if i % 10 == 0:
                reader.update(fid, {"payload": {"i": i, "seen": True}})
    finally:
        writer.storage.close()
        reader.storage.close()


def _eventually(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    """`check()` once it is truthy (a node applies the other nodes' commits after a lag)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def test_rollback_undoes_the_sessions_last_operation_across_nodes(galera_cluster: Any, gprefix: str) -> None:
    """A session's later, acknowledged commit made on another node than its earlier one (where it may get
    the lower ``seq``), rolled back from the third node, which may not have applied either yet: the rollback
    undoes exactly the later commit (docs/log-order.md). 20 rounds, each in a session of its own, with a
    background writer on every node keeping the appliers busy."""
    urls = galera_cluster.urls
    ms.migrate(urls[0], table_prefix=gprefix)
    stores = [ms.MemoryStore(ms.SQLStorage(url, table_prefix=gprefix)) for url in urls]
    noise = [ms.MemoryStore(ms.SQLStorage(url, table_prefix=gprefix)) for url in urls]
    stop = threading.Event()

    def busy(store: ms.MemoryStore, node: int) -> None:
        k = 0
        while not stop.is_set():  # big write sets: the other nodes apply them late
            facts = [ms.Fact(type="noise", payload={"node": node, "k": k + i, "pad": "x" * 512}) for i in range(100)]
            store.commit_many(facts, session_id=f"noise{node}")
            k += 100

    threads = [threading.Thread(target=busy, args=(s, i), daemon=True) for i, s in enumerate(noise)]
    for t in threads:
        t.start()
    try:
        n = len(stores)
        for r in range(20):
            session = f"s{r}"
            earlier = stores[r % n].commit(ms.Fact(type="note", payload={"round": r, "n": 1}), session_id=session)
            later = stores[(r + 1) % n].commit(ms.Fact(type="note", payload={"round": r, "n": 2}), session_id=session)
            assert stores[(r + 2) % n].rollback(session, 1) == 1
            for store in stores:
                assert _eventually(lambda s=store, f=later: s.get(f) is None), f"round {r}: the later commit stayed"
                assert store.get(earlier) is not None, f"round {r}: the earlier commit was undone"
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        for store in stores + noise:
            store.storage.close()
    check_tables(urls[0], gprefix)
